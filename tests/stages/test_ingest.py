"""Tests for the ingest stage (stages/ingest.py): params in, data/raw, manifest and metrics out."""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from dvc_project import ROOT, clean_env, copy_project, git_repo, run

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
    metrics = json.loads(paths.summary("ingest").read_text(encoding="utf-8"))
    assert metrics == {
        "layout": "class_folders",
        "files": sum(counts.values()),
        "classes": counts,
        "given_splits": {},
        "groups": 0,
        "dropped_rows": {},
        "skipped_files": {},
        "filtered_files": {},
        "warnings": {},
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


def test_main_with_an_archive_over_max_extract_bytes_exits_2_before_extracting(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a 10 KB zip that expands to 10 MB, and data.max_extract_bytes of 1 MB
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("covid/a.png", bytes(5_000_000))
        bundle.writestr("normal/b.png", bytes(5_000_000))
    small_params_dict["data"].update(source=str(archive), max_extract_bytes=1_000_000)
    write_params(tmp_path, small_params_dict)

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then it exits 2 with one line naming the param and the figures, and extracts nothing
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == (
        f"error: data.max_extract_bytes = 1000000: {archive} would expand to 10,000,000 bytes "
        "in 2 members; raise data.max_extract_bytes if you trust this archive and the disk "
        "holds it twice (data/raw and the DVC cache)\n"
    )
    assert not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / "metrics").exists()


def test_main_writes_the_rows_it_dropped_and_counts_them(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a metadata table without a file column: one row with a blank label, one whose
    # image is missing
    source = tmp_path / "scans"
    source.mkdir()
    for patient in ("p1", "p2", "p3"):
        (source / f"{patient}.png").write_bytes(b"png")
    (source / "metadata.csv").write_text(
        "patientid,finding\np1,COVID-19\np2,No Finding\np3,\np4,Normal\n", encoding="utf-8"
    )
    small_params_dict["data"]["source"] = str(source)
    small_params_dict["data"]["csv"].update(
        file="metadata.csv", file_template="{patientid}.*", label_column="finding"
    )
    write_params(tmp_path, small_params_dict)

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then the usable rows are ingested, the others listed with the reason and counted
    paths = ProjectPaths(tmp_path)
    captured = capsys.readouterr()
    assert status == 0
    assert "2 table rows dropped (blank_label 1, no_file_match 1)" in captured.out
    assert captured.err.count("warning: ") == 2
    rejected = pd.read_csv(paths.ingest_rejected)
    assert rejected.to_dict("records") == [
        {"path": "metadata.csv:4", "reason": "blank_label: no label (file p3.png)"},
        {"path": "metadata.csv:5", "reason": "no_file_match: no file matches p4.*"},
    ]
    metrics = json.loads(paths.summary("ingest").read_text(encoding="utf-8"))
    assert metrics["classes"] == {"covid": 1, "normal": 1}
    assert metrics["dropped_rows"] == {"blank_label": 1, "no_file_match": 1}
    assert metrics["warnings"] == {"blank_label": 1, "no_file_match": 1}


@pytest.mark.slow
def test_mapping_params_typed_on_the_dvc_exp_run_line(tmp_path: Path) -> None:
    # Given the project in a fresh git repo, with a table labelled 0 / 1 / Positive / blank
    repo = tmp_path / "repo"
    copy_project(repo, yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")))
    source = repo / "scans"
    source.mkdir()
    for patient in ("p1", "p2", "p3", "p4"):
        (source / f"{patient}_1.png").write_bytes(b"png")
    (source / "metadata.csv").write_text(
        "patientid,finding\np1,0\np2,1\np3,\np4,Positive\n", encoding="utf-8"
    )
    env = clean_env()
    git_repo(repo, env)

    # When `dvc exp run` sets mappings, the blank label, a template and a regex with -S, as the
    # README documents, and runs ingest
    settings = [
        "data.source=scans",
        "data.csv.file=metadata.csv",
        "data.csv.label_column=finding",
        "data.csv.file_template='{patientid}_*.png'",
        r"data.group_pattern='^(p\d+)_'",
        "++data.label_map={_blank_: normal, Positive: COVID-19}",
        "++data.label_map.0=normal",
        "++data.label_map.1=covid",
        "data.synthetic.counts={covid: 5}",
    ]
    command = [sys.executable, "-m", "dvc", "exp", "run"]
    run([*command, *(arg for setting in settings for arg in ("-S", setting)), "ingest"], repo, env)

    # Then params.yaml holds the mappings (text keys, merged into the existing ones)
    data = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))["data"]
    assert data["label_map"] == {
        "_blank_": "normal",
        "Positive": "COVID-19",
        "0": "normal",
        "1": "covid",
    }
    assert data["synthetic"]["counts"]["covid"] == 5
    assert set(data["synthetic"]["counts"]) == {"covid", "normal", "viral_pneumonia"}
    assert data["csv"]["file_template"] == "{patientid}_*.png"
    assert data["group_pattern"] == r"^(p\d+)_"
    # and ingest used them: every row labelled, the blank one too, each patient its group
    manifest = pd.read_parquet(repo / "data" / "interim" / "manifest.parquet")
    assert manifest[["path", "label", "group"]].values.tolist() == [
        ["p1_1.png", "normal", "p1"],
        ["p2_1.png", "covid", "p2"],
        ["p3_1.png", "normal", "p3"],
        ["p4_1.png", "covid", "p4"],
    ]
