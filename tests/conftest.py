"""Shared fixtures: the repository's own params, a params writer and a tiny phantom dataset."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr.ingestion.phantoms import write_phantom_dataset

# Small enough that a whole dataset is written in well under a second.
PHANTOM_COUNTS = {"covid": 8, "normal": 10, "viral_pneumonia": 6}
PHANTOM_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository checkout these tests belong to."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def _repo_params(project_root: Path) -> dict[str, Any]:
    return yaml.safe_load((project_root / "params.yaml").read_text(encoding="utf-8"))


@pytest.fixture
def valid_params_dict(_repo_params: dict[str, Any]) -> dict[str, Any]:
    """The repository's params.yaml as a plain mapping, a fresh copy for every test."""
    return copy.deepcopy(_repo_params)


@pytest.fixture
def small_params_dict(valid_params_dict: dict[str, Any]) -> dict[str, Any]:
    """The repository's params with a tiny synthetic dataset, so a stage runs in a second."""
    valid_params_dict["data"]["source"] = "synthetic"
    valid_params_dict["data"]["synthetic"]["counts"] = dict(PHANTOM_COUNTS)
    valid_params_dict["data"]["synthetic"]["image_size"] = PHANTOM_IMAGE_SIZE
    return valid_params_dict


@pytest.fixture
def write_params() -> Callable[[Path, dict[str, Any]], Path]:
    """Write a params mapping as <root>/params.yaml and return its path."""

    def write(root: Path, params: dict[str, Any]) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        path = root / "params.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def phantom_raw_dir(tmp_path: Path) -> Path:
    """<tmp_path>/data/raw holding a tiny, imbalanced phantom dataset (one folder per class)."""
    raw_dir = tmp_path / "data" / "raw"
    write_phantom_dataset(raw_dir, PHANTOM_COUNTS, PHANTOM_IMAGE_SIZE, 0.5, seed=3)
    return raw_dir


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One real MLflow SQLite store per test module, set as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield {"MLFLOW_TRACKING_URI": uri}


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh real MLflow SQLite store for one test, set as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
