"""The committed dvc.lock matches the code and params: a fresh clone re-runs nothing needlessly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Stage code lives here; data deps (data/...) are checked by DVC itself against the cache.
CODE_FOLDERS = ("stages/", "cxr/")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def _lock_stages() -> dict[str, Any]:
    return _load("dvc.lock")["stages"]


def _dotted(params: dict[str, Any], key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("stage", sorted(_load("dvc.yaml")["stages"]))
def test_every_code_dep_in_dvc_lock_has_the_committed_files_md5(stage: str) -> None:
    # Given the stage's code deps as dvc.lock recorded them
    recorded = {
        dep["path"]: dep["md5"]
        for dep in _lock_stages()[stage]["deps"]
        if dep["path"].startswith(CODE_FOLDERS)
    }

    # When the files in the repository are hashed the way DVC 3 does (md5 of the bytes)
    current = {
        path: hashlib.md5((ROOT / path).read_bytes()).hexdigest()  # noqa: S324  DVC's hash
        for path in recorded
        if (ROOT / path).is_file()
    }

    # Then nothing changed since the lock was written (else: run `dvc repro` and commit dvc.lock)
    stale = sorted(path for path in recorded if current.get(path) != recorded[path])
    assert not stale, f"dvc.lock is stale for stage {stage!r}: {stale}; run dvc repro"


@pytest.mark.parametrize("stage", sorted(_load("dvc.yaml")["stages"]))
def test_dvc_lock_lists_exactly_the_deps_of_dvc_yaml(stage: str) -> None:
    declared = set(_load("dvc.yaml")["stages"][stage].get("deps", []))
    locked = {dep["path"] for dep in _lock_stages()[stage]["deps"]}
    assert locked == declared, f"dvc.lock and dvc.yaml disagree on {stage!r}'s deps; run dvc repro"


@pytest.mark.parametrize("stage", sorted(_load("dvc.yaml")["stages"]))
def test_dvc_lock_params_equal_params_yaml(stage: str) -> None:
    # Given the params values dvc.lock recorded for the stage
    recorded = _lock_stages()[stage].get("params", {}).get("params.yaml", {})
    params = _load("params.yaml")

    # Then params.yaml still holds the same values
    changed = sorted(key for key, value in recorded.items() if _dotted(params, key) != value)
    assert not changed, f"params.yaml changed {changed} since dvc.lock ({stage!r}); run dvc repro"
