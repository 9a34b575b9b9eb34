"""Leakage-safe train / val / test: copies, groups and near-duplicates stay together.

A *unit* is a connected set of images that must not be separated: byte-identical files
(sha256), one group (e.g. a patient id) and, when split.near_duplicate_distance > 0, images
whose perceptual hashes are that close. Units, never single images, are assigned to splits.

What looks wrong but is not fatal goes to a DataWarnings, one line each: a class missing or
thin in a split, undersampling that drops most of a class, a unit too large to place freely,
copies across the given splits kept as asked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
from imblearn.under_sampling import RandomUnderSampler
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedKFold, train_test_split

from cxr.core.errors import PipelineError
from cxr.core.params import SplitParams
from cxr.core.paths import SPLITS
from cxr.core.tables import label_counts
from cxr.core.warnings import DataWarnings

# Later splits are the held-out ones: a copy in a later split than its unit's earliest leaks.
SPLIT_RANK = {name: rank for rank, name in enumerate(SPLITS)}

# Rows of the pairwise hash comparison done at once (memory: rows x images x 8 bytes).
HASH_BLOCK_ROWS = 512

# Below 10 images of a class in a split, one image moves that class's recall by 10 points or
# more: too few to compare models on, or to learn the class from.
MIN_CLASS_IMAGES = 10

# A unit goes whole into one split: one holding over 5% of the images can on its own push a
# 15% val or test split a third off its size and tilt its classes.
LARGE_UNIT_SHARE = 0.05

# Dropping more than half of a class throws away more images than it keeps to balance the
# classes; class weights balance the loss and keep every image.
UNDERSAMPLE_DROP_SHARE = 0.5


def check_copy_labels(images: pd.DataFrame) -> None:
    """Identical files must carry one label; otherwise fail naming the paths."""
    labels_per_content = images.groupby("sha256")["label"].nunique()
    conflicting = labels_per_content[labels_per_content > 1]
    if len(conflicting):
        example = images[images["sha256"] == conflicting.index[0]]["path"].tolist()
        raise PipelineError(
            f"{len(conflicting)} identical file(s) carry different labels, e.g. {example}; "
            "remove the wrong copy from the source"
        )


def near_duplicate_pairs(phashes: Sequence[str], distance: int) -> np.ndarray:
    """Index pairs (i < j) of 64-bit hex hashes at most `distance` bits apart, as (K, 2)."""
    values = np.array([int(value, 16) for value in phashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(values), HASH_BLOCK_ROWS):
        block = values[start : start + HASH_BLOCK_ROWS]
        bits = np.bitwise_count(block[:, np.newaxis] ^ values[np.newaxis, :])
        rows, columns = np.nonzero(bits <= distance)
        rows = rows + start
        keep = columns > rows
        pairs.append(np.column_stack([rows[keep], columns[keep]]))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def connected_units(size: int, keys: Sequence[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """Component id per item: items sharing a key code (>= 0) in any `keys`, or paired, join."""
    rows, columns = [pairs[:, 0]], [pairs[:, 1]]
    offset = size
    for codes in keys:
        # Each distinct key value becomes one extra node that all its items link to.
        present = codes >= 0
        rows.append(np.flatnonzero(present))
        columns.append(codes[present] + offset)
        offset += int(codes.max(initial=-1)) + 1
    row, column = np.concatenate(rows), np.concatenate(columns)
    graph = coo_matrix((np.ones(len(row), dtype=np.int8), (row, column)), shape=(offset, offset))
    _, component = connected_components(graph, directed=False)
    # Renumbered by first appearance, so unit ids follow the table's order.
    return pd.factorize(component[:size])[0]


def unit_reasons(members: pd.DataFrame) -> list[str]:
    """Why the images of one unit (columns sha256, group, exact_unit) are joined, for a warning."""
    reasons = []
    copies = len(members) - members["sha256"].nunique()
    if copies:
        reasons.append(f"{copies} identical copies")
    groups = members.loc[members["group"] != "", "group"].unique()
    if len(groups):
        reasons.append(f"{len(groups)} group(s), e.g. {groups[0]!r} (data.csv.group_column)")
    if members["exact_unit"].nunique() > 1:
        reasons.append("near-duplicates (split.near_duplicate_distance)")
    return reasons


def warn_large_units(members: pd.DataFrame, distance: int, warnings: DataWarnings) -> None:
    """Warn about each unit over LARGE_UNIT_SHARE of the images, saying what joined it.

    `members` has one row per image: unit, exact_unit (its unit from copies and groups only),
    sha256 and group. A unit that large only through near-duplicates is a
    `large_near_duplicate_unit` (lowering the distance fixes it); any other is a `large_unit`.
    """
    total = len(members)
    sizes = members["unit"].value_counts().sort_index().sort_values(ascending=False, kind="stable")
    # In a table of under 20 images a lone image is over 5%, but nothing joined it.
    for unit, size in sizes[sizes > max(LARGE_UNIT_SHARE * total, 1)].items():
        unit_rows = members[members["unit"] == unit]
        share = f"{size} of {total} images ({size / total:.0%})"
        if unit_rows["exact_unit"].value_counts().max() <= LARGE_UNIT_SHARE * total:
            warnings.warn(
                "large_near_duplicate_unit",
                f"split.near_duplicate_distance = {distance} joined {share} into one unit; "
                "lower it",
            )
        else:
            warnings.warn(
                "large_unit",
                f"one unit holds {share}, joined by {', '.join(unit_reasons(unit_rows))}; "
                "it goes whole into one split",
            )


def leakage_units(
    images: pd.DataFrame, near_duplicate_distance: int, warnings: DataWarnings
) -> tuple[np.ndarray, dict[str, int]]:
    """Unit id per image (copies, groups, near-duplicates joined) and how many were found."""
    content = pd.factorize(images["sha256"])[0]
    group = images["group"].fillna("").astype(str)
    group_codes = pd.factorize(group.where(group != ""))[0]  # -1 where there is no group
    without_hashes = connected_units(len(images), [content, group_codes], np.zeros((0, 2), int))
    pairs = np.zeros((0, 2), dtype=np.int64)
    if near_duplicate_distance > 0:
        pairs = near_duplicate_pairs(images["phash"].tolist(), near_duplicate_distance)
        pairs = pairs[content[pairs[:, 0]] != content[pairs[:, 1]]]
    units = connected_units(len(images), [content, group_codes], pairs)
    members = pd.DataFrame(
        {"unit": units, "exact_unit": without_hashes, "sha256": images["sha256"].to_numpy()}
    ).assign(group=group.to_numpy())
    warn_large_units(members, near_duplicate_distance, warnings)
    found = {
        "identical_copies": int(len(images) - images["sha256"].nunique()),
        "identical_sets": int((images["sha256"].value_counts() > 1).sum()),
        "groups": int(group[group != ""].nunique()),
        "near_duplicate_pairs": len(pairs),
        "near_duplicates_joined": int(without_hashes.max(initial=-1) - units.max(initial=-1)),
        "units": int(units.max(initial=-1) + 1),
        "largest_unit": int(np.bincount(units).max(initial=0)),
    }
    return units, found


def unit_labels(images: pd.DataFrame) -> pd.Series:
    """The most frequent label of each unit (ties: first by name), for stratification."""
    counts = images.groupby(["unit", "label"]).size().reset_index(name="images")
    counts = counts.sort_values(["unit", "images", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("unit").set_index("unit")["label"]


def split_units(
    units: pd.Series, fraction: float, seed: int, what: str
) -> tuple[pd.Index, pd.Index]:
    """Stratified (by unit label) split of unit ids into (rest, held-out share `fraction`)."""
    try:
        rest, held_out = train_test_split(
            units.index.to_numpy(), test_size=fraction, stratify=units.to_numpy(), random_state=seed
        )
    except ValueError as error:
        counts = units.value_counts().sort_index().to_dict()
        raise PipelineError(
            f"{what} cannot be stratified over the distinct images (copies, groups and "
            f"near-duplicates counted once) per class {counts}: {error}"
        ) from None
    return pd.Index(rest), pd.Index(held_out)


def fold_units(units: pd.Series, folds: int, fold: int, seed: int) -> tuple[pd.Index, pd.Index]:
    """Unit ids dealt into `folds` stratified folds (seeded): (the other folds, fold `fold`).

    The same seed deals the same folds whatever `fold` is, so folds 0 .. K-1 test every unit
    exactly once.
    """
    counts = units.value_counts().sort_index()
    if counts.min() < folds:
        raise PipelineError(
            f"split.folds = {folds} cannot be stratified over the distinct images (copies, "
            f"groups and near-duplicates counted once) per class {counts.to_dict()}: every "
            "class needs a unit in each fold; lower split.folds"
        )
    dealer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    ids = units.index.to_numpy()
    rest, held_out = list(dealer.split(ids, units.to_numpy()))[fold]
    return pd.Index(ids[rest]), pd.Index(ids[held_out])


def cross_validation_design(images: pd.DataFrame, split: SplitParams, seed: int) -> str | None:
    """A short hash of a K-fold design: its folds test every image once; None when folds = 0.

    The image pool (path, label, content and the unit each image is dealt with), the seed and
    every split param but split.fold: the K runs of one design share it, while their data
    fingerprints differ by which fold is test. `images` holds every image with its unit.
    """
    if not split.folds:
        return None
    digest = hashlib.sha256()
    settings = split.model_dump(mode="json", exclude={"fold"})
    digest.update(json.dumps({"seed": seed, "split": settings}, sort_keys=True).encode())
    # A unit named by its first path: the same grouping gives the same names, whatever ids.
    unit = images.groupby("unit")["path"].transform("min")
    rows = images.assign(unit=unit)[["path", "label", "sha256", "unit"]].sort_values("path")
    for row in rows.itertuples(index=False):
        digest.update(("\t".join(map(str, row)) + "\n").encode())
    return digest.hexdigest()[:16]


def fresh_split(images: pd.DataFrame, split: SplitParams, seed: int) -> pd.Series:
    """Split name per image: stratified over units, ignoring any split the source gave.

    Test is one fold of split.folds when set, else a split.test_fraction share; val is carved
    from the rest so that it holds a split.val_fraction share of all units.
    """
    labels = unit_labels(images)
    if split.folds:
        rest, test = fold_units(labels, split.folds, split.fold, seed)
        what = "split.val_fraction / split.folds"
    else:
        what = "split.val_fraction / split.test_fraction"
        rest, test = split_units(labels, split.test_fraction, seed, what)
    val_share = split.val_fraction / (1.0 - split.test_share)
    train, val = split_units(labels.loc[rest], val_share, seed, what)
    split_of_unit = {
        **dict.fromkeys(train, "train"),
        **dict.fromkeys(val, "val"),
        **dict.fromkeys(test, "test"),
    }
    return images["unit"].map(split_of_unit)


def check_given_splits(images: pd.DataFrame) -> None:
    """Every image has a given split named train, val or test."""
    given = images["given_split"]
    unknown = sorted(set(given) - set(SPLITS) - {""})
    if unknown:
        raise PipelineError(
            f"manifest given_split {unknown[0]!r} is not one of {', '.join(SPLITS)}; "
            "re-run ingest or set split.resplit: true"
        )
    missing = images[given == ""]
    if len(missing):
        raise PipelineError(
            f"{len(missing)} of {len(images)} image(s) have no given split while the others do, "
            f"e.g. {missing['path'].iloc[0]!r}; put every file under a split folder or set "
            "split.resplit: true"
        )


def given_split(
    images: pd.DataFrame,
    split: SplitParams,
    seed: int,
    found: dict[str, int],
    warnings: DataWarnings,
) -> pd.Series:
    """Split name per image (None = dropped): the source's test kept, val carved from its train.

    Units that straddle the given splits (copies across train and test) follow
    split.duplicates; their counts are added to `found`.
    """
    check_given_splits(images)
    rank = images["given_split"].map(SPLIT_RANK)
    earliest = rank.groupby(images["unit"]).transform("min")
    leaking = rank > earliest
    straddling = images.loc[leaking, "unit"].unique()
    found["cross_split_units"] = len(straddling)
    found["cross_split_images"] = int(leaking.sum())
    found["dropped"] = 0
    assigned = images["given_split"].astype(object)
    if len(straddling):
        copy = images[leaking].iloc[0]
        source = images[(images["unit"] == copy["unit"]) & ~leaking]["path"].iloc[0]
        summary = (
            f"{found['cross_split_images']} image(s) in a given {'/'.join(SPLITS[1:])} split "
            f"are copies (same file, group or near-duplicate) of images in an earlier given "
            f"split ({len(straddling)} unit(s)), e.g. {copy['path']!r} ~ {source!r}"
        )
        if split.duplicates == "fail":
            raise PipelineError(
                f"{summary}; split.duplicates = fail (use drop-from-test to drop those copies)"
            )
        if split.duplicates == "keep":
            warnings.warn(
                "cross_split_copies_kept", f"{summary}; kept as given (split.duplicates = keep)"
            )
        else:
            assigned[leaking] = None
            found["dropped"] = found["cross_split_images"]
    if "val" not in set(images["given_split"]):
        train_rows = images[assigned == "train"]
        _, val = split_units(
            unit_labels(train_rows), split.val_fraction, seed, "split.val_fraction"
        )
        assigned[(assigned == "train") & images["unit"].isin(val)] = "val"
    return assigned


def undersample(train: pd.DataFrame, seed: int, warnings: DataWarnings) -> pd.DataFrame:
    """Randomly drop train images of larger classes down to the smallest one (imbalanced-learn)."""
    sampler = RandomUnderSampler(random_state=seed)
    positions = np.arange(len(train)).reshape(-1, 1)
    kept, _ = sampler.fit_resample(positions, train["label"].to_numpy())
    balanced = train.iloc[np.sort(kept.ravel())].reset_index(drop=True)
    after = balanced["label"].value_counts()
    for label, before in train["label"].value_counts().sort_index().items():
        dropped = int(before - after.get(label, 0))
        if dropped > UNDERSAMPLE_DROP_SHARE * before:
            warnings.warn(
                "undersampling_drops_most",
                f"split.undersample drops {dropped} of {before} {label} images in train "
                f"({dropped / before:.0%}); consider train.class_weight: balanced instead",
            )
    return balanced


def split_hints(split: SplitParams, source_splits: set[str], dropped: int) -> dict[str, str]:
    """Per split, the param to change when a class is missing or thin there."""
    carved = [f"split.{name}_fraction" for name in ("val", "test") if name not in source_splits]
    hints = {"train": f"lower {' or '.join(carved)}"}
    hints.update({name: f"raise split.{name}_fraction" for name in ("val", "test")})
    if split.folds:
        hints["test"] = "lower split.folds"
        hints["train"] = "lower split.val_fraction"
    # Copies are dropped from the later splits (val, test), never from the given train.
    lost = f", less copies of earlier splits (split.duplicates dropped {dropped} in all)"
    for name in source_splits:
        shrunk = lost if dropped and name != "train" else ""
        hints[name] = f"{name} is as the source gives it{shrunk}; split.resplit: true splits afresh"
    if split.undersample:
        hints["train"] = "split.undersample: false keeps all of train"
    return hints


def warn_thin_classes(
    tables: dict[str, pd.DataFrame],
    class_images: pd.Series,
    hints: dict[str, str],
    warnings: DataWarnings,
) -> None:
    """Warn about each class missing from a split, or with under MIN_CLASS_IMAGES there."""
    for name, table in tables.items():
        counts = table["label"].value_counts()
        for label, total in class_images.sort_index().items():
            count = int(counts.get(label, 0))
            if count == 0:
                warnings.warn(
                    "class_missing_from_split",
                    f"class {label} has no image in {name} ({total} in all); {hints[name]}",
                )
            elif count < MIN_CLASS_IMAGES:
                warnings.warn(
                    "small_class_in_split",
                    f"class {label} has {count} image(s) in {name}, under {MIN_CLASS_IMAGES} "
                    f"({total} in all); {hints[name]}",
                )


def split_with_report(
    images: pd.DataFrame, split: SplitParams, seed: int, warnings: DataWarnings
) -> tuple[dict[str, pd.DataFrame], dict[str, int], str | None]:
    """The split tables (with a `unit` column), the duplicates found and the design; warns.

    The design is cross_validation_design's: None unless split.folds is set.
    """
    check_copy_labels(images)
    units, found = leakage_units(images, split.near_duplicate_distance, warnings)
    images = images.assign(unit=units)
    has_given = "given_split" in images.columns and (images["given_split"] != "").any()
    if has_given and not split.resplit and split.folds:
        raise PipelineError(
            f"split.folds = {split.folds}: this source gives its own test split, which folds "
            "would replace; set split.resplit: true to deal all images into folds, or "
            "split.folds: 0"
        )
    if has_given and not split.resplit:
        assigned = given_split(images, split, seed, found, warnings)
        # Without a given val, val is carved from the given train; test is always the source's.
        source_splits = set(SPLITS) if "val" in set(images["given_split"]) else {"test"}
    else:
        assigned = fresh_split(images, split, seed)
        found.update(cross_split_units=0, cross_split_images=0, dropped=0)
        source_splits = set()
    tables = {
        name: images[assigned == name].sort_values("path").reset_index(drop=True) for name in SPLITS
    }
    if split.undersample:
        tables["train"] = undersample(tables["train"], seed, warnings)
    hints = split_hints(split, source_splits, found["dropped"])
    warn_thin_classes(tables, images["label"].value_counts(), hints, warnings)
    return tables, found, cross_validation_design(images, split, seed)


def split_images(
    images: pd.DataFrame, split: SplitParams, seed: int, warnings: DataWarnings | None = None
) -> dict[str, pd.DataFrame]:
    """Return the train, val and test tables (warnings on stderr unless `warnings` is given)."""
    if warnings is None:
        warnings = DataWarnings()
    return split_with_report(images, split, seed, warnings)[0]


def split_counts(tables: dict[str, pd.DataFrame]) -> dict[str, dict[str, int]]:
    """Images per class per split, for `dvc metrics show`."""
    return {
        name: {
            "images": len(table),
            **label_counts(table["label"]),
        }
        for name, table in tables.items()
    }
