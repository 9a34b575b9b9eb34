"""Stage split: stratified train / val / test, identical files together, train undersampled."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from imblearn.under_sampling import RandomUnderSampler
from sklearn.model_selection import train_test_split

from stages.config import SplitParams, load_params
from stages.errors import PipelineError, report_errors
from stages.outputs import staged_dir, write_json, write_table
from stages.paths import SPLITS, ProjectPaths, paths_from_argv
from stages.tables import read_table


def content_groups(images: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct file content (sha256) with its label; copies must agree on the label."""
    labels_per_content = images.groupby("sha256")["label"].nunique()
    conflicting = labels_per_content[labels_per_content > 1]
    if len(conflicting):
        example = images[images["sha256"] == conflicting.index[0]]["path"].tolist()
        raise PipelineError(
            f"{len(conflicting)} identical file(s) carry different labels, e.g. {example}; "
            "remove the wrong copy from the source"
        )
    return images.groupby("sha256", as_index=False)["label"].first()


def assign_splits(images: pd.DataFrame, split: SplitParams, seed: int) -> pd.Series:
    """Split name per image: stratified by label over distinct contents, so copies share a split."""
    groups = content_groups(images)
    try:
        rest, test = train_test_split(
            groups, test_size=split.test_fraction, stratify=groups["label"], random_state=seed
        )
        val_share = split.val_fraction / (1.0 - split.test_fraction)
        train, val = train_test_split(
            rest, test_size=val_share, stratify=rest["label"], random_state=seed
        )
    except ValueError as error:
        counts = groups["label"].value_counts().to_dict()
        raise PipelineError(
            f"split.val_fraction / split.test_fraction cannot be stratified over distinct images "
            f"per class {counts}: {error}"
        ) from None
    split_of_content = {
        **dict.fromkeys(train["sha256"], "train"),
        **dict.fromkeys(val["sha256"], "val"),
        **dict.fromkeys(test["sha256"], "test"),
    }
    return images["sha256"].map(split_of_content)


def undersample(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Randomly drop train images of larger classes down to the smallest one (imbalanced-learn)."""
    sampler = RandomUnderSampler(random_state=seed)
    positions = np.arange(len(train)).reshape(-1, 1)
    kept, _ = sampler.fit_resample(positions, train["label"].to_numpy())
    return train.iloc[np.sort(kept.ravel())].reset_index(drop=True)


def split_images(images: pd.DataFrame, split: SplitParams, seed: int) -> dict[str, pd.DataFrame]:
    """Return the train, val and test tables."""
    assigned = assign_splits(images, split, seed)
    tables = {
        name: images[assigned == name].sort_values("path").reset_index(drop=True) for name in SPLITS
    }
    if split.undersample:
        tables["train"] = undersample(tables["train"], seed)
    return tables


def split_counts(tables: dict[str, pd.DataFrame]) -> dict[str, object]:
    """Images per class per split, for `dvc metrics show`."""
    return {
        name: {
            "images": len(table),
            **{str(k): int(v) for k, v in table["label"].value_counts().sort_index().items()},
        }
        for name, table in tables.items()
    }


def run_split(split: SplitParams, seed: int, paths: ProjectPaths) -> dict[str, pd.DataFrame]:
    """Write the three split tables and their counts."""
    tables = split_images(read_table(paths.images_table), split, seed)
    with staged_dir(paths.split_dir) as staging:
        for name, table in tables.items():
            write_table(staging / paths.split_table(name).name, table)
    write_json(paths.metrics("split"), split_counts(tables))
    return tables


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the split stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    tables = run_split(params.split, params.seed, paths)
    sizes = ", ".join(f"{name} {len(table)}" for name, table in tables.items())
    print(f"split: {sizes} -> {paths.split_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
