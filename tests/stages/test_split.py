"""Tests for stages/split.py (tables, metrics, warnings) and the split tables' helpers."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from split_fixtures import BALANCED_COUNTS, COUNTS, images_table, split_params

from cxr.core.errors import PipelineError
from cxr.core.outputs import read_json, write_table
from cxr.core.paths import SPLITS, ProjectPaths
from cxr.core.tables import class_names, data_fingerprint, read_fold_design, read_splits
from cxr.core.warnings import DataWarnings
from cxr.splitting.splits import split_images
from stages.split import main, run_split


def test_run_split_writes_the_tables_counts_and_warnings(tmp_path: Path) -> None:
    # Given a checkout with an images table of imbalanced, partly small classes
    paths = ProjectPaths(tmp_path)
    write_table(paths.images_table, images_table(COUNTS))

    # When the split runs with undersampling
    stream = io.StringIO()
    tables = run_split(split_params(undersample=True), 42, paths, DataWarnings(stream))

    # Then the three split tables and the split metrics are written
    assert sorted(path.name for path in paths.split_dir.iterdir()) == [
        "cv_design.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    # with no cross-validation design: one split
    assert read_fold_design(paths) is None
    written = read_splits(paths)
    for name in SPLITS:
        pd.testing.assert_frame_equal(written[name], tables[name])
    metrics = read_json(paths.summary("split"))
    assert set(metrics) == {*SPLITS, "duplicates", "warnings"}
    assert metrics["duplicates"] == {
        "identical_copies": 0,
        "identical_sets": 0,
        "groups": 0,
        "near_duplicate_pairs": 0,
        "near_duplicates_joined": 0,
        "units": len(images_table(COUNTS)),
        "largest_unit": 1,
        "cross_split_units": 0,
        "cross_split_images": 0,
        "dropped": 0,
    }
    for name in SPLITS:
        assert metrics[name]["images"] == len(tables[name])
        assert sum(metrics[name][label] for label in COUNTS) == len(tables[name])
    assert (
        metrics["train"]["covid"]
        == metrics["train"]["normal"]
        == metrics["train"]["viral_pneumonia"]
    )
    # and each warning printed is counted by kind
    assert metrics["warnings"] == {"small_class_in_split": 4, "undersampling_drops_most": 1}
    assert len(stream.getvalue().splitlines()) == 5


def test_run_split_of_a_clean_table_counts_no_warnings(tmp_path: Path) -> None:
    # Given a checkout with enough images of every class and nothing joined
    paths = ProjectPaths(tmp_path)
    write_table(paths.images_table, images_table(BALANCED_COUNTS))

    # When the split runs
    stream = io.StringIO()
    run_split(split_params(), 0, paths, DataWarnings(stream))

    # Then nothing is printed and the metrics say no warnings
    assert stream.getvalue() == ""
    metrics = read_json(paths.summary("split"))
    assert metrics["warnings"] == {}
    assert metrics["duplicates"]["largest_unit"] == 1


def test_run_split_of_a_fold_names_its_design_and_fold(tmp_path: Path) -> None:
    # Given a checkout with an images table
    paths = ProjectPaths(tmp_path)
    write_table(paths.images_table, images_table(BALANCED_COUNTS))

    # When folds 1 and 2 of a 3-fold design are split in turn
    designs = []
    for fold in (1, 2):
        run_split(split_params(folds=3, fold=fold), 0, paths, DataWarnings(io.StringIO()))
        designs.append(read_fold_design(paths))

    # Then each names its own fold of the one design
    first, second = designs
    assert first is not None and second is not None
    assert (first.folds, first.fold, second.fold) == (3, 1, 2)
    assert first.design == second.design
    assert read_json(paths.fold_design) == {"cv_design": second.design, "folds": 3, "fold": 2}


def test_run_split_without_images_table_says_to_run_dvc_repro(tmp_path: Path) -> None:
    # Given a checkout where the build has not run
    paths = ProjectPaths(tmp_path)

    # When the split runs
    with pytest.raises(PipelineError, match="dvc repro"):
        run_split(split_params(), 0, paths, DataWarnings(io.StringIO()))

    # Then no split tables are written
    assert not paths.split_dir.exists()


def test_main_splits_from_params(
    tmp_path: Path,
    valid_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a checkout with params.yaml and an images table
    write_params(tmp_path, valid_params_dict)
    write_table(ProjectPaths(tmp_path).images_table, images_table(BALANCED_COUNTS))

    # When the stage runs with --root
    status = main(["--root", str(tmp_path)])

    # Then it succeeds and reports the split sizes, with no warning
    assert status == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("split: train ")
    assert "warning" not in printed.out + printed.err
    assert ProjectPaths(tmp_path).split_table("test").is_file()


def test_main_prints_each_warning_and_counts_them(
    tmp_path: Path,
    valid_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given params.yaml with undersampling, and four times as many normal as covid images
    valid_params_dict["split"].update(undersample=True, val_fraction=0.15, test_fraction=0.15)
    write_params(tmp_path, valid_params_dict)
    write_table(ProjectPaths(tmp_path).images_table, images_table({"covid": 80, "normal": 320}))

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then stderr has the undersampling line, the summary counts it, and so do the metrics
    assert status == 0
    printed = capsys.readouterr()
    assert printed.err.startswith("warning: split.undersample drops ")
    assert len(printed.err.splitlines()) == 1
    assert printed.out.rstrip().endswith("(1 warning(s))")
    metrics = read_json(ProjectPaths(tmp_path).summary("split"))
    assert metrics["warnings"] == {"undersampling_drops_most": 1}


def test_data_fingerprint_is_stable_and_tracks_moves() -> None:
    # Given split tables and their fingerprint
    tables = split_images(images_table(COUNTS), split_params(), seed=1)
    fingerprint = data_fingerprint(tables)

    # When rows are reordered, or one row moves from val to train
    shuffled = {name: table.sample(frac=1.0, random_state=5) for name, table in tables.items()}
    moved = dict(tables)
    moved["train"] = pd.concat([tables["train"], tables["val"].iloc[[0]]], ignore_index=True)
    moved["val"] = tables["val"].iloc[1:]

    # Then order does not matter but the move changes the fingerprint
    assert len(fingerprint) == 16
    assert data_fingerprint(shuffled) == fingerprint
    assert (
        data_fingerprint(split_images(images_table(COUNTS), split_params(), seed=1)) == fingerprint
    )
    assert data_fingerprint(moved) != fingerprint


def test_data_fingerprint_tracks_a_relabelled_image() -> None:
    # Given split tables
    tables = split_images(images_table(COUNTS), split_params(), seed=1)

    # When one test image changes label
    relabelled = dict(tables)
    relabelled["test"] = tables["test"].copy()
    relabelled["test"].loc[0, "label"] = "other"

    # Then the fingerprint changes
    assert data_fingerprint(relabelled) != data_fingerprint(tables)


def test_class_names_are_sorted_over_all_splits() -> None:
    # Given splits where one class appears only in test
    tables = {
        "train": pd.DataFrame({"label": ["normal", "covid", "normal"]}),
        "val": pd.DataFrame({"label": ["covid"]}),
        "test": pd.DataFrame({"label": ["viral_pneumonia", "covid"]}),
    }

    # When the class names are asked for
    names = class_names(tables)

    # Then they are every label once, sorted
    assert names == ["covid", "normal", "viral_pneumonia"]
