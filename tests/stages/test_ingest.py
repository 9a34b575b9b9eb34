"""Tests for the ingest stage (stages/ingest.py): params in, data/raw, manifest and metrics out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cxr.core.params import load_params
from cxr.core.paths import ProjectPaths
from stages.ingest import main


def test_main_ingests_and_writes_metrics(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a checkout with a valid params.yaml
    write_params(tmp_path, small_params_dict)
    counts = load_params(tmp_path / "params.yaml").data.synthetic.counts

    # When the stage runs with --root
    status = main(["--root", str(tmp_path)])

    # Then it succeeds, writes data/raw, the manifest and metrics, and reports counts per class
    paths = ProjectPaths(tmp_path)
    assert status == 0
    assert {path.name for path in paths.raw_dir.iterdir()} == set(counts)
    out = capsys.readouterr().out
    assert f"{sum(counts.values())} files in {len(counts)} classes (class_folders layout)" in out
    for label, count in counts.items():
        assert f"  {label}: {count}" in out
    metrics = json.loads(paths.metrics("ingest").read_text(encoding="utf-8"))
    assert metrics == {
        "layout": "class_folders",
        "files": sum(counts.values()),
        "classes": counts,
        "given_splits": {},
    }


def test_main_with_a_bad_key_exits_2_before_writing(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a params.yaml with a misspelled key
    small_params_dict["data"]["sorce"] = "synthetic"
    write_params(tmp_path, small_params_dict)

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then it exits 2 with one line on stderr naming the key, and writes nothing
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("error: ")
    assert captured.err.count("\n") == 1
    assert "data.sorce: unknown key" in captured.err
    assert captured.out == ""
    assert not (tmp_path / "data").exists()


def test_main_with_an_unusable_source_exits_2(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a params.yaml whose source folder does not exist
    small_params_dict["data"]["source"] = "does/not/exist"
    write_params(tmp_path, small_params_dict)

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then it exits 2 with one line naming data.source, and data/raw is not created
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("error: data.source = ")
    assert captured.err.count("\n") == 1
    assert not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / "metrics").exists()
