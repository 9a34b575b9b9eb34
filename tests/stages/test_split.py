"""Tests for splitting (cxr/data/splitting.py), stages/split.py and the split tables."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cxr.core.errors import PipelineError
from cxr.core.outputs import read_json, write_table
from cxr.core.params import SplitParams
from cxr.core.paths import SPLITS, ProjectPaths
from cxr.core.tables import IMAGE_COLUMNS, class_names, data_fingerprint, read_splits
from cxr.data.splitting import split_images, split_with_report
from stages.split import main, run_split

COUNTS = {"covid": 60, "normal": 90, "viral_pneumonia": 30}


def _images(counts: dict[str, int], copies: int = 0) -> pd.DataFrame:
    """An images table as the build writes it; the first `copies` images per class get a copy."""
    rows: list[dict[str, object]] = []
    for label, count in counts.items():
        for index in range(count):
            content = hashlib.sha256(f"{label}-{index}".encode()).hexdigest()
            names = [f"{label}_{index:04d}.png"]
            if index < copies:
                names.append(f"{label}_{index:04d}_copy.png")
            for name in names:
                rows.append(
                    {
                        "path": f"{label}/{name}",
                        "label": label,
                        "given_split": "",
                        "group": "",
                        "source": "",
                        "width": 32,
                        "height": 32,
                        "mode": "L",
                        "format": "PNG",
                        "bytes": 100 + index,
                        "sha256": content,
                        # Distinct hashes far apart: 64 bits of the content's sha256.
                        "phash": content[:16],
                        "cache_index": len(rows),
                    }
                )
    return pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))


def _params(
    val: float = 0.15,
    test: float = 0.15,
    undersample: bool = False,
    resplit: bool = False,
    duplicates: str = "drop-from-test",
    near: int = 0,
) -> SplitParams:
    return SplitParams(
        val_fraction=val,
        test_fraction=test,
        undersample=undersample,
        resplit=resplit,
        duplicates=duplicates,  # type: ignore[arg-type]
        near_duplicate_distance=near,
    )


def _split_of_path(tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {path: name for name, table in tables.items() for path in table["path"]}


def test_fractions_are_respected_and_stratified() -> None:
    # Given an imbalanced images table
    images = _images(COUNTS)

    # When it is split 70 / 15 / 15
    tables = split_images(images, _params(0.15, 0.15), seed=42)

    # Then each split has about its share, and about that share of every class
    total = len(images)
    assert abs(len(tables["val"]) / total - 0.15) < 0.02
    assert abs(len(tables["test"]) / total - 0.15) < 0.02
    for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        per_class = tables[name]["label"].value_counts()
        for label, count in COUNTS.items():
            assert abs(per_class[label] - share * count) <= 1.5, (name, label)


def test_splits_are_disjoint_and_cover_every_row() -> None:
    # Given an images table
    images = _images(COUNTS)

    # When it is split without undersampling
    tables = split_images(images, _params(0.2, 0.1), seed=0)

    # Then every row is in exactly one split, unchanged, and tables are sorted by path
    paths = [path for table in tables.values() for path in table["path"]]
    assert len(paths) == len(set(paths)) == len(images)
    combined = pd.concat(tables.values()).sort_values("path").reset_index(drop=True)
    expected = images.sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(combined.drop(columns="unit"), expected)
    for table in tables.values():
        assert table["path"].is_monotonic_increasing
        assert list(table.columns) == [*IMAGE_COLUMNS, "unit"]


def test_identical_files_land_in_the_same_split() -> None:
    # Given a table where many images have a byte-identical copy under another name
    images = _images(COUNTS, copies=20)

    # When it is split with several seeds
    for seed in range(5):
        tables = split_images(images, _params(), seed=seed)

        # Then each content appears in one split only, copies included
        split_of_path = _split_of_path(tables)
        splits_per_content = images.assign(split=images["path"].map(split_of_path)).groupby(
            "sha256"
        )["split"]
        assert splits_per_content.nunique().max() == 1
        assert len(split_of_path) == len(images)


def test_same_seed_same_split_other_seed_other_split() -> None:
    # Given one images table
    images = _images(COUNTS)

    # When it is split twice with one seed and once with another
    first = split_images(images, _params(), seed=7)
    second = split_images(images, _params(), seed=7)
    other = split_images(images, _params(), seed=8)

    # Then the same seed repeats the split exactly and another seed changes it
    for name in SPLITS:
        pd.testing.assert_frame_equal(first[name], second[name])
    assert _split_of_path(first) != _split_of_path(other)


def test_undersampling_balances_train_only() -> None:
    # Given an imbalanced images table
    images = _images(COUNTS)

    # When it is split with and without undersampling
    plain = split_images(images, _params(undersample=False), seed=3)
    balanced = split_images(images, _params(undersample=True), seed=3)

    # Then train has as many images per class as the smallest class had, drawn from plain train
    train_counts = balanced["train"]["label"].value_counts()
    assert train_counts.nunique() == 1
    assert train_counts.iloc[0] == plain["train"]["label"].value_counts().min()
    assert set(balanced["train"]["path"]) <= set(plain["train"]["path"])
    assert balanced["train"]["path"].is_monotonic_increasing
    # and val / test are exactly the ones without undersampling
    for name in ("val", "test"):
        pd.testing.assert_frame_equal(balanced[name], plain[name])


def test_conflicting_labels_for_one_content_fail() -> None:
    # Given one file content filed under two different classes
    images = _images(COUNTS)
    wrong = images.iloc[[0]].assign(path="normal/misfiled.png", label="normal")
    images = pd.concat([images, wrong], ignore_index=True)

    # When it is split
    with pytest.raises(PipelineError) as error:
        split_images(images, _params(), seed=0)

    # Then one line says identical files carry different labels and names the paths
    message = str(error.value)
    assert "\n" not in message
    assert "different labels" in message
    assert "normal/misfiled.png" in message
    assert images.iloc[0]["path"] in message


@pytest.mark.parametrize(
    "counts",
    [
        {"covid": 40, "normal": 1},  # one image of a class cannot be stratified
        {"covid": 2, "normal": 2, "viral_pneumonia": 2},  # test split smaller than the classes
    ],
)
def test_too_few_images_per_class_fail_naming_the_fractions(counts: dict[str, int]) -> None:
    # Given too few distinct images per class for a stratified three-way split
    images = _images(counts)

    # When it is split
    with pytest.raises(PipelineError) as error:
        split_images(images, _params(), seed=0)

    # Then one line names the fractions and the images per class
    message = str(error.value)
    assert "\n" not in message
    assert "split.val_fraction" in message
    assert "split.test_fraction" in message
    assert all(f"{label!r}: {count}" in message for label, count in counts.items())


def test_run_split_writes_the_tables_and_counts(tmp_path: Path) -> None:
    # Given a checkout with an images table
    paths = ProjectPaths(tmp_path)
    write_table(paths.images_table, _images(COUNTS))

    # When the split runs with undersampling
    tables = run_split(_params(undersample=True), 42, paths)

    # Then the three split tables and the split metrics are written
    assert sorted(path.name for path in paths.split_dir.iterdir()) == [
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    written = read_splits(paths)
    for name in SPLITS:
        pd.testing.assert_frame_equal(written[name], tables[name])
    metrics = read_json(paths.metrics("split"))
    assert set(metrics) == {*SPLITS, "duplicates"}
    assert metrics["duplicates"] == {
        "identical_copies": 0,
        "identical_sets": 0,
        "groups": 0,
        "near_duplicate_pairs": 0,
        "near_duplicates_joined": 0,
        "units": len(_images(COUNTS)),
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


def test_run_split_without_images_table_says_to_run_dvc_repro(tmp_path: Path) -> None:
    # Given a checkout where the build has not run
    paths = ProjectPaths(tmp_path)

    # When the split runs
    with pytest.raises(PipelineError, match="dvc repro"):
        run_split(_params(), 0, paths)

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
    write_table(ProjectPaths(tmp_path).images_table, _images(COUNTS))

    # When the stage runs with --root
    status = main(["--root", str(tmp_path)])

    # Then it succeeds and reports the split sizes
    assert status == 0
    assert "split: train " in capsys.readouterr().out
    assert ProjectPaths(tmp_path).split_table("test").is_file()


def test_data_fingerprint_is_stable_and_tracks_moves() -> None:
    # Given split tables and their fingerprint
    tables = split_images(_images(COUNTS), _params(), seed=1)
    fingerprint = data_fingerprint(tables)

    # When rows are reordered, or one row moves from val to train
    shuffled = {name: table.sample(frac=1.0, random_state=5) for name, table in tables.items()}
    moved = dict(tables)
    moved["train"] = pd.concat([tables["train"], tables["val"].iloc[[0]]], ignore_index=True)
    moved["val"] = tables["val"].iloc[1:]

    # Then order does not matter but the move changes the fingerprint
    assert len(fingerprint) == 16
    assert data_fingerprint(shuffled) == fingerprint
    assert data_fingerprint(split_images(_images(COUNTS), _params(), seed=1)) == fingerprint
    assert data_fingerprint(moved) != fingerprint


def test_data_fingerprint_tracks_a_relabelled_image() -> None:
    # Given split tables
    tables = split_images(_images(COUNTS), _params(), seed=1)

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


def _assert_nothing_straddles(tables: dict[str, pd.DataFrame]) -> None:
    """No file content, group or leakage unit appears in more than one split."""
    rows = pd.concat([table.assign(split=name) for name, table in tables.items()])
    assert rows.groupby("sha256")["split"].nunique().max() == 1
    assert rows.groupby("unit")["split"].nunique().max() == 1
    grouped = rows[rows["group"] != ""]
    if len(grouped):
        assert grouped.groupby("group")["split"].nunique().max() == 1


def _given(
    train: dict[str, int], test: dict[str, int], val: dict[str, int] | None = None
) -> pd.DataFrame:
    """An images table from a source with train / test (/ val) folders."""
    parts = []
    for name, counts in (("train", train), ("test", test), ("val", val)):
        if not counts:
            continue
        table = _images(counts)
        table["path"] = name + "/" + table["path"]
        table["sha256"] = [hashlib.sha256(path.encode()).hexdigest() for path in table["path"]]
        table["phash"] = table["sha256"].str[:16]
        parts.append(table.assign(given_split=name))
    images = pd.concat(parts, ignore_index=True)
    return images.assign(cache_index=range(len(images)))


def _with_cross_copies(images: pd.DataFrame) -> pd.DataFrame:
    """Three test images made byte copies of train images, and one patient in both splits."""
    images = images.copy()
    train = images.index[images["given_split"] == "train"]
    test = images.index[images["given_split"] == "test"]
    for source, copy in zip(train[:3], test[:3], strict=True):
        images.loc[copy, ["sha256", "phash", "label"]] = images.loc[
            source, ["sha256", "phash", "label"]
        ].to_numpy()
    images.loc[[train[10], test[10]], "group"] = "patient-7"
    return images


GIVEN_TRAIN = {"covid": 50, "normal": 70, "viral_pneumonia": 30}
GIVEN_TEST = {"covid": 10, "normal": 20, "viral_pneumonia": 10}


def test_one_group_stays_in_one_split() -> None:
    # Given patients with three different images each
    images = _images(COUNTS)
    images["group"] = images["label"] + "-patient-" + (images.index // 3).astype(str)

    # When it is split with several seeds
    for seed in range(4):
        tables, found = split_with_report(images, _params(), seed=seed)

        # Then no patient straddles splits, and the split is still about the asked share
        _assert_nothing_straddles(tables)
        assert found["groups"] == images["group"].nunique()
        assert found["units"] == images["group"].nunique()
        assert abs(len(tables["test"]) / len(images) - 0.15) < 0.04


def test_near_duplicates_stay_together_only_when_enabled() -> None:
    # Given 20 images per class with a re-encoded copy: other bytes, hash 1 bit away
    images = _images(COUNTS)
    copies = images.groupby("label").head(20).copy()
    copies["path"] = copies["path"].str.replace(".png", "_small.jpg")
    copies["sha256"] = copies["sha256"].str[::-1]
    copies["phash"] = [f"{int(value, 16) ^ 1:016x}" for value in copies["phash"]]
    images = pd.concat([images, copies], ignore_index=True)

    # When it is split with the perceptual hash off and on
    split_off = [split_with_report(images, _params(), seed=seed) for seed in range(3)]
    tables, found = split_with_report(images, _params(near=2), seed=0)

    # Then off, some pair is separated; on, every pair shares a split and is counted
    def separated(split_tables: dict[str, pd.DataFrame]) -> int:
        split_of = {p: name for name, table in split_tables.items() for p in table["path"]}
        return sum(
            split_of[original] != split_of[copy]
            for original, copy in zip(
                copies["path"].str.replace("_small.jpg", ".png"), copies["path"], strict=True
            )
        )

    assert sum(separated(result[0]) for result in split_off) > 0
    assert split_off[0][1]["near_duplicate_pairs"] == 0
    assert separated(tables) == 0
    assert found["near_duplicate_pairs"] == found["near_duplicates_joined"] == len(copies)
    _assert_nothing_straddles(tables)


def test_given_test_split_is_kept_and_val_carved_from_given_train() -> None:
    # Given a source with train and test folders
    images = _given(GIVEN_TRAIN, GIVEN_TEST)

    # When it is split
    tables, found = split_with_report(images, _params(val=0.2), seed=1)

    # Then test is exactly the given test, and val a stratified fifth of the given train
    given_test = images[images["given_split"] == "test"]["path"]
    assert sorted(tables["test"]["path"]) == sorted(given_test)
    assert set(tables["val"]["given_split"]) == set(tables["train"]["given_split"]) == {"train"}
    assert len(tables["val"]) == round(0.2 * sum(GIVEN_TRAIN.values()))
    for label, count in GIVEN_TRAIN.items():
        assert abs((tables["val"]["label"] == label).sum() - 0.2 * count) <= 1
    assert found["cross_split_images"] == found["dropped"] == 0


def test_given_val_split_is_kept() -> None:
    # Given a source with train, val and test folders
    images = _given(GIVEN_TRAIN, GIVEN_TEST, val={"covid": 5, "normal": 5, "viral_pneumonia": 5})

    # When it is split
    tables = split_images(images, _params(), seed=0)

    # Then every image stays in the split it was given
    for name in SPLITS:
        assert set(tables[name]["given_split"]) == {name}
    assert sum(len(table) for table in tables.values()) == len(images)


def test_resplit_ignores_the_given_splits() -> None:
    # Given a source with train and test folders, and split.resplit
    images = _given(GIVEN_TRAIN, GIVEN_TEST)

    # When it is split
    tables = split_images(images, _params(resplit=True), seed=0)

    # Then the test split mixes given train and test images
    assert set(tables["test"]["given_split"]) == {"train", "test"}


def test_copies_across_given_splits_are_dropped_from_test_by_default() -> None:
    # Given three byte copies and one patient across the given train and test
    images = _with_cross_copies(_given(GIVEN_TRAIN, GIVEN_TEST))
    given_test = images[images["given_split"] == "test"]

    # When it is split with split.duplicates = drop-from-test
    tables, found = split_with_report(images, _params(), seed=0)

    # Then the four test copies are gone, counted, and nothing straddles the splits
    assert found["cross_split_units"] == found["cross_split_images"] == found["dropped"] == 4
    assert len(tables["test"]) == len(given_test) - 4
    assert sum(len(table) for table in tables.values()) == len(images) - 4
    _assert_nothing_straddles(tables)


def test_copies_across_given_splits_kept_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given copies across the given train and test, and split.duplicates = keep
    images = _with_cross_copies(_given(GIVEN_TRAIN, GIVEN_TEST))

    # When it is split
    tables, found = split_with_report(images, _params(duplicates="keep"), seed=0)

    # Then stderr warns with the count, and the test split is the given one, copies included
    warning = capsys.readouterr().err
    assert warning.startswith("warning: 4 image(s)")
    assert "split.duplicates = keep" in warning
    assert len(tables["test"]) == sum(GIVEN_TEST.values())
    assert found["cross_split_images"] == 4
    assert found["dropped"] == 0


def test_copies_across_given_splits_fail_when_asked() -> None:
    # Given copies across the given train and test, and split.duplicates = fail
    images = _with_cross_copies(_given(GIVEN_TRAIN, GIVEN_TEST))

    # When it is split
    with pytest.raises(PipelineError) as error:
        split_images(images, _params(duplicates="fail"), seed=0)

    # Then one line gives the count and an example pair
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("4 image(s) in a given val/test split are copies")
    assert "test/covid/covid_0000.png" in message and "train/covid/covid_0000.png" in message
    assert "split.duplicates = fail" in message


def test_some_images_without_a_given_split_fail() -> None:
    # Given a table where only some images have a given split
    images = _given(GIVEN_TRAIN, GIVEN_TEST)
    images.loc[5, "given_split"] = ""

    # When it is split
    with pytest.raises(PipelineError, match=r"1 of 190 image\(s\) have no given split"):
        split_images(images, _params(), seed=0)
