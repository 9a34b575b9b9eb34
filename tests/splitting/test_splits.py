"""Tests for leakage-safe splitting and its warnings (cxr/splitting/splits.py)."""

from __future__ import annotations

import hashlib
import io

import pandas as pd
import pytest
from split_fixtures import BALANCED_COUNTS, COUNTS, images_table, split_params

from cxr.core.errors import PipelineError
from cxr.core.params import SplitParams
from cxr.core.paths import SPLITS
from cxr.core.tables import IMAGE_COLUMNS
from cxr.core.warnings import DataWarnings
from cxr.splitting.splits import split_images, split_with_report


def _split_warned(
    images: pd.DataFrame, params: SplitParams, seed: int = 0
) -> tuple[dict[str, pd.DataFrame], dict[str, int], list[str], dict[str, int]]:
    """Split, returning the tables, duplicates found, printed warning lines and their counts."""
    stream = io.StringIO()
    warnings = DataWarnings(stream)
    tables, found, _ = split_with_report(images, params, seed, warnings)
    return tables, found, stream.getvalue().splitlines(), warnings.to_metrics()


def _split_of_path(tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {path: name for name, table in tables.items() for path in table["path"]}


def test_fractions_are_respected_and_stratified() -> None:
    # Given an imbalanced images table
    images = images_table(COUNTS)

    # When it is split 70 / 15 / 15
    tables = split_images(images, split_params(0.15, 0.15), seed=42)

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
    images = images_table(COUNTS)

    # When it is split without undersampling
    tables = split_images(images, split_params(0.2, 0.1), seed=0)

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
    images = images_table(COUNTS, copies=20)

    # When it is split with several seeds
    for seed in range(5):
        tables = split_images(images, split_params(), seed=seed)

        # Then each content appears in one split only, copies included
        split_of_path = _split_of_path(tables)
        splits_per_content = images.assign(split=images["path"].map(split_of_path)).groupby(
            "sha256"
        )["split"]
        assert splits_per_content.nunique().max() == 1
        assert len(split_of_path) == len(images)


def test_same_seed_same_split_other_seed_other_split() -> None:
    # Given one images table
    images = images_table(COUNTS)

    # When it is split twice with one seed and once with another
    first = split_images(images, split_params(), seed=7)
    second = split_images(images, split_params(), seed=7)
    other = split_images(images, split_params(), seed=8)

    # Then the same seed repeats the split exactly and another seed changes it
    for name in SPLITS:
        pd.testing.assert_frame_equal(first[name], second[name])
    assert _split_of_path(first) != _split_of_path(other)


def test_undersampling_balances_train_only() -> None:
    # Given an imbalanced images table
    images = images_table(COUNTS)

    # When it is split with and without undersampling
    plain = split_images(images, split_params(undersample=False), seed=3)
    balanced = split_images(images, split_params(undersample=True), seed=3)

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
    images = images_table(COUNTS)
    wrong = images.iloc[[0]].assign(path="normal/misfiled.png", label="normal")
    images = pd.concat([images, wrong], ignore_index=True)

    # When it is split
    with pytest.raises(PipelineError) as error:
        split_images(images, split_params(), seed=0)

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
    images = images_table(counts)

    # When it is split
    with pytest.raises(PipelineError) as error:
        split_images(images, split_params(), seed=0)

    # Then one line names the fractions and the images per class
    message = str(error.value)
    assert "\n" not in message
    assert "split.val_fraction" in message
    assert "split.test_fraction" in message
    assert all(f"{label!r}: {count}" in message for label, count in counts.items())


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
        table = images_table(counts)
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
    images = images_table(COUNTS)
    images["group"] = images["label"] + "-patient-" + (images.index // 3).astype(str)

    # When it is split with several seeds
    for seed in range(4):
        tables, found, _, _ = _split_warned(images, split_params(), seed=seed)

        # Then no patient straddles splits, and the split is still about the asked share
        _assert_nothing_straddles(tables)
        assert found["groups"] == images["group"].nunique()
        assert found["units"] == images["group"].nunique()
        assert abs(len(tables["test"]) / len(images) - 0.15) < 0.04


def test_near_duplicates_stay_together_only_when_enabled() -> None:
    # Given 20 images per class with a re-encoded copy: other bytes, hash 1 bit away
    images = images_table(COUNTS)
    copies = images.groupby("label").head(20).copy()
    copies["path"] = copies["path"].str.replace(".png", "_small.jpg")
    copies["sha256"] = copies["sha256"].str[::-1]
    copies["phash"] = [f"{int(value, 16) ^ 1:016x}" for value in copies["phash"]]
    images = pd.concat([images, copies], ignore_index=True)

    # When it is split with the perceptual hash off and on
    split_off = [_split_warned(images, split_params(), seed=seed) for seed in range(3)]
    tables, found, _, _ = _split_warned(images, split_params(near=2))

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
    tables, found, _, _ = _split_warned(images, split_params(val=0.2), seed=1)

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
    tables = split_images(images, split_params(), seed=0)

    # Then every image stays in the split it was given
    for name in SPLITS:
        assert set(tables[name]["given_split"]) == {name}
    assert sum(len(table) for table in tables.values()) == len(images)


def test_resplit_ignores_the_given_splits() -> None:
    # Given a source with train and test folders, and split.resplit
    images = _given(GIVEN_TRAIN, GIVEN_TEST)

    # When it is split
    tables = split_images(images, split_params(resplit=True), seed=0)

    # Then the test split mixes given train and test images
    assert set(tables["test"]["given_split"]) == {"train", "test"}


def test_copies_across_given_splits_are_dropped_from_test_by_default() -> None:
    # Given three byte copies and one patient across the given train and test
    images = _with_cross_copies(_given(GIVEN_TRAIN, GIVEN_TEST))
    given_test = images[images["given_split"] == "test"]

    # When it is split with split.duplicates = drop-from-test
    tables, found, _, _ = _split_warned(images, split_params())

    # Then the four test copies are gone, counted, and nothing straddles the splits
    assert found["cross_split_units"] == found["cross_split_images"] == found["dropped"] == 4
    assert len(tables["test"]) == len(given_test) - 4
    assert sum(len(table) for table in tables.values()) == len(images) - 4
    _assert_nothing_straddles(tables)


def test_copies_across_given_splits_kept_warn_once() -> None:
    # Given copies across the given train and test, and split.duplicates = keep
    images = _with_cross_copies(_given(BALANCED_COUNTS, GIVEN_TEST))

    # When it is split
    tables, found, lines, counts = _split_warned(images, split_params(duplicates="keep"))

    # Then one line warns with the count and an example, and test is the given one, copies in
    assert lines == [
        "warning: 4 image(s) in a given val/test split are copies (same file, group or "
        "near-duplicate) of images in an earlier given split (4 unit(s)), e.g. "
        "'test/covid/covid_0000.png' ~ 'train/covid/covid_0000.png'; kept as given "
        "(split.duplicates = keep)"
    ]
    assert counts == {"cross_split_copies_kept": 1}
    assert len(tables["test"]) == sum(GIVEN_TEST.values())
    assert found["cross_split_images"] == 4
    assert found["dropped"] == 0


def test_copies_across_given_splits_fail_when_asked() -> None:
    # Given copies across the given train and test, and split.duplicates = fail
    images = _with_cross_copies(_given(GIVEN_TRAIN, GIVEN_TEST))

    # When it is split
    with pytest.raises(PipelineError) as error:
        split_images(images, split_params(duplicates="fail"), seed=0)

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
        split_images(images, split_params(), seed=0)


def test_a_clean_split_warns_of_nothing() -> None:
    # Given enough images of every class, no copies, groups or near-duplicates
    images = images_table(BALANCED_COUNTS)

    # When it is split 70 / 15 / 15
    _, found, lines, counts = _split_warned(images, split_params())

    # Then nothing is printed or counted, and every unit is one image
    assert lines == []
    assert counts == {}
    assert found["largest_unit"] == 1


def test_groups_count_distinct_non_empty_groups() -> None:
    # Given two patients (two and three images), blank and missing groups
    images = images_table(BALANCED_COUNTS)
    images["group"] = images["group"].astype(object)
    images.loc[:5, "group"] = ["p1", "p1", "p2", "p2", "p2", ""]
    images.loc[6, "group"] = None

    # When it is split
    _, found, _, _ = _split_warned(images, split_params())

    # Then two groups are counted, the largest unit is the three-image patient
    assert found["groups"] == 2
    assert found["largest_unit"] == 3
    assert found["units"] == len(images) - 3


def test_a_class_missing_from_a_split_warns() -> None:
    # Given a source whose test folder has no viral_pneumonia
    images = _given(BALANCED_COUNTS, {"covid": 10, "normal": 20})

    # When it is split
    tables, _, lines, counts = _split_warned(images, split_params())

    # Then one line names the class, the split, its total and what to change
    assert "viral_pneumonia" not in set(tables["test"]["label"])
    assert lines == [
        "warning: class viral_pneumonia has no image in test (100 in all); test is as the "
        "source gives it; split.resplit: true splits afresh"
    ]
    assert counts == {"class_missing_from_split": 1}


def test_a_class_under_ten_images_in_a_split_warns() -> None:
    # Given 40 viral_pneumonia images among 240: about 6 each in val and test
    images = images_table({"covid": 100, "normal": 100, "viral_pneumonia": 40})

    # When it is split 70 / 15 / 15
    tables, _, lines, counts = _split_warned(images, split_params())

    # Then val and test each warn with the class's count there and the fraction to raise
    in_val, in_test = (
        (tables[name]["label"] == "viral_pneumonia").sum() for name in ("val", "test")
    )
    assert 0 < in_val < 10 and 0 < in_test < 10
    assert lines == [
        f"warning: class viral_pneumonia has {in_val} image(s) in val, under 10 (40 in all); "
        "raise split.val_fraction",
        f"warning: class viral_pneumonia has {in_test} image(s) in test, under 10 (40 in all); "
        "raise split.test_fraction",
    ]
    assert counts == {"small_class_in_split": 2}


def test_undersampling_that_drops_most_of_a_class_warns() -> None:
    # Given three times as many normal as covid images
    images = images_table({"covid": 80, "normal": 240})
    plain_train = split_images(images, split_params(), 0, DataWarnings(io.StringIO()))["train"]
    before = (plain_train["label"] == "normal").sum()
    after = (plain_train["label"] == "covid").sum()

    # When train is undersampled
    _, _, lines, counts = _split_warned(images, split_params(undersample=True))

    # Then one line says how many normal images are dropped and suggests class weights
    dropped = before - after
    assert dropped > before / 2
    assert lines == [
        f"warning: split.undersample drops {dropped} of {before} normal images in train "
        f"({dropped / before:.0%}); consider train.class_weight: balanced instead"
    ]
    assert counts == {"undersampling_drops_most": 1}


def test_a_large_near_duplicate_unit_warns() -> None:
    # Given 20 covid images chained by perceptual hashes one bit apart (20 of 300, 7%)
    images = images_table(BALANCED_COUNTS)
    chain = images.index[images["label"] == "covid"][:20]
    first = int(images.loc[chain[0], "phash"], 16)
    images.loc[chain, "phash"] = [f"{first ^ ((1 << step) - 1):016x}" for step in range(20)]

    # When it is split with near-duplicates one bit apart kept together
    _, found, lines, counts = _split_warned(images, split_params(near=1))

    # Then one line names the distance, the unit's size and share, and says to lower it
    assert found["largest_unit"] == 20
    assert lines == [
        "warning: split.near_duplicate_distance = 1 joined 20 of 300 images (7%) into one "
        "unit; lower it"
    ]
    assert counts == {"large_near_duplicate_unit": 1}


def test_a_large_group_warns_as_a_large_unit() -> None:
    # Given one patient with 20 of the 300 images (7%)
    images = images_table(BALANCED_COUNTS)
    images.loc[images.index[images["label"] == "normal"][:20], "group"] = "patient-7"

    # When it is split
    _, found, lines, counts = _split_warned(images, split_params())

    # Then one line gives the unit's size and share and says a group joined it
    assert found["largest_unit"] == 20
    assert lines == [
        "warning: one unit holds 20 of 300 images (7%), joined by 1 group(s), e.g. 'patient-7' "
        "(data.csv.group_column); it goes whole into one split"
    ]
    assert counts == {"large_unit": 1}


def test_a_large_unit_names_every_reason_that_joined_it() -> None:
    # Given a 20-image patient, two byte copies of one of its images (outside the group)
    # and a re-encoded image one hash bit from another: 23 of 303 images in one unit
    images = images_table(BALANCED_COUNTS)
    patient = images.index[images["label"] == "normal"][:20]
    images.loc[patient, "group"] = "patient-7"
    copies = images.loc[[patient[0], patient[0]]].assign(group="", path=["a.png", "b.png"])
    near = images.loc[[patient[1]]].assign(group="", path="c.jpg", sha256="0" * 64)
    near["phash"] = [f"{int(value, 16) ^ 1:016x}" for value in near["phash"]]
    images = pd.concat([images, copies, near], ignore_index=True)

    # When it is split with near-duplicates one bit apart kept together
    _, found, lines, counts = _split_warned(images, split_params(near=1))

    # Then it is a large unit (large without the hashes too), with each reason named
    assert found["largest_unit"] == 23
    assert lines == [
        "warning: one unit holds 23 of 303 images (8%), joined by 2 identical copies, "
        "1 group(s), e.g. 'patient-7' (data.csv.group_column), near-duplicates "
        "(split.near_duplicate_distance); it goes whole into one split"
    ]
    assert counts == {"large_unit": 1}


def test_a_class_missing_after_dropping_copies_says_they_were_dropped() -> None:
    # Given a given test whose 3 covid images are all byte copies of train images
    test = {"covid": 3, "normal": 20, "viral_pneumonia": 20}
    images = _with_cross_copies(_given(BALANCED_COUNTS, test))

    # When it is split with split.duplicates = drop-from-test
    tables, found, lines, counts = _split_warned(images, split_params())

    # Then the missing class's line says test lost its copies of earlier splits
    assert found["dropped"] == 4
    assert "covid" not in set(tables["test"]["label"])
    assert lines == [
        "warning: class covid has no image in test (103 in all); test is as the source gives "
        "it, less copies of earlier splits (split.duplicates dropped 4 in all); split.resplit: "
        "true splits afresh"
    ]
    assert counts == {"class_missing_from_split": 1}


def test_folds_test_every_image_once_and_keep_groups_whole() -> None:
    # Given patients with three images each
    images = images_table(COUNTS)
    images["group"] = images["label"] + "-patient-" + (images.index // 3).astype(str)

    # When it is split five times, with split.folds = 5 and each fold as test
    folds = [
        split_images(images, split_params(val=0.15, folds=5, fold=fold), seed=3)
        for fold in range(5)
    ]

    # Then the five test folds are disjoint, cover every image, hold a fifth each per class,
    for tables in folds:
        _assert_nothing_straddles(tables)
        assert abs(len(tables["test"]) / len(images) - 0.2) < 0.03
        assert abs(len(tables["val"]) / len(images) - 0.15) < 0.03
        for label, count in COUNTS.items():
            assert abs((tables["test"]["label"] == label).sum() - count / 5) <= 3, label
    tested = [path for tables in folds for path in tables["test"]["path"]]
    assert sorted(tested) == sorted(images["path"])
    # and no patient is tested in one fold and trained on in the same fold
    for tables in folds:
        assert not set(tables["test"]["group"]) & set(tables["train"]["group"])


def test_the_same_seed_deals_the_same_folds() -> None:
    # Given an images table
    images = images_table(COUNTS)

    # When fold 2 of 4 is drawn twice with one seed and once with another
    first, again, other = (
        split_images(images, split_params(folds=4, fold=2), seed=seed) for seed in (5, 5, 6)
    )

    # Then the same seed gives the same test fold, another seed another
    assert list(first["test"]["path"]) == list(again["test"]["path"])
    assert list(first["test"]["path"]) != list(other["test"]["path"])


def test_the_folds_of_one_design_share_its_fingerprint_and_only_they_do() -> None:
    # Given patients with three images each
    images = images_table(COUNTS)
    images["group"] = images["label"] + "-patient-" + (images.index // 3).astype(str)

    def design(params: SplitParams, seed: int = 3, table: pd.DataFrame = images) -> str | None:
        return split_with_report(table, params, seed, DataWarnings(io.StringIO()))[2]

    # When the five folds of one 5-fold design are split
    five = {design(split_params(folds=5, fold=fold)) for fold in range(5)}
    # Then they share one design, a 16-digit fingerprint
    assert len(five) == 1 and len(next(iter(five)) or "") == 16
    # and another seed, K, grouping, image pool or split param is another design
    others = {
        design(split_params(folds=5), seed=4),
        design(split_params(folds=4)),
        design(split_params(folds=5), table=images.assign(group="")),
        design(split_params(folds=5), table=images.iloc[1:]),
        design(split_params(val=0.1, folds=5)),
    }
    assert len(others) == 5 and not others & five
    # and a single split (folds = 0) has none
    assert design(split_params()) is None


def test_folds_over_a_given_test_split_fail_naming_resplit() -> None:
    # Given a source with its own train and test folders
    images = _given(GIVEN_TRAIN, GIVEN_TEST)

    # When it is dealt into folds without split.resplit
    with pytest.raises(PipelineError, match=r"split\.folds = 5: .*split\.resplit: true"):
        split_images(images, split_params(folds=5), seed=0)

    # Then with resplit the folds cover given train and test alike
    tables = split_images(images, split_params(resplit=True, folds=5), seed=0)
    assert set(tables["test"]["given_split"]) == {"train", "test"}


def test_more_folds_than_images_of_a_class_fail_naming_the_counts() -> None:
    # Given a class of three images
    images = images_table({"covid": 3, "normal": 40})

    # When it is dealt into five folds
    with pytest.raises(PipelineError, match=r"split\.folds = 5 cannot be stratified .*'covid': 3"):
        split_images(images, split_params(folds=5), seed=0)


@pytest.mark.parametrize(
    ("folds", "fold", "message"),
    [
        (1, 0, "folds = 1: use 0"),
        (5, 5, r"fold = 5: must be 0 \.\. 4"),
        (0, 2, "fold = 2: must be 0 while folds = 0"),
        (2, 0, r"val_fraction \+ 1 / folds = 1.15"),
    ],
)
def test_bad_fold_params_fail_naming_the_key(folds: int, fold: int, message: str) -> None:
    # When split params name an impossible fold, the validation names it
    with pytest.raises(ValueError, match=message):
        split_params(val=0.65 if folds == 2 else 0.15, folds=folds, fold=fold)
