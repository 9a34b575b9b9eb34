"""The image tables shared by split, train, evaluate and compare."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.paths import SPLITS, ProjectPaths

# Written by ingest: path relative to data/raw (posix), canonical label, the split the source
# assigned ("train", "val", "test" or "" when none), group (e.g. patient id, "" when none) and
# source (sub-collection or origin the file came from, "" when the data has one origin).
MANIFEST_COLUMNS = ("path", "label", "given_split", "group", "source")

# Written by ingest after those, read from each DICOM file's header ('' for any other file):
# patient and study are pseudonyms (cxr.core.pseudonyms), never the IDs themselves; view
# position (PA, AP, LL), body part, manufacturer, sex, age (DICOM AS, 90 years and over as
# 090Y+), photometric interpretation, bits stored and the transfer syntax's name.
DICOM_COLUMNS = (
    "patient",
    "study",
    "modality",
    "view_position",
    "body_part",
    "manufacturer",
    "sex",
    "age",
    "photometric",
    "bits_stored",
    "transfer_syntax",
)

# Written by build: the manifest and DICOM columns plus what decoding the file found (size
# after EXIF orientation, Pillow mode, format detected from the content), its byte count and
# sha256, a 64-bit perceptual hash (16 hex digits) and the row of data/interim/pixels.npy it
# occupies.
IMAGE_COLUMNS = (
    *MANIFEST_COLUMNS,
    *DICOM_COLUMNS,
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    "sha256",
    "phash",
    "cache_index",
)

# Written by build: raw files it could not use, with the reason.
REJECTED_COLUMNS = ("path", "reason")


def read_table(path: Path) -> pd.DataFrame:
    """Read a table an earlier stage wrote, with a clear error when that stage has not run."""
    if not path.exists():
        raise PipelineError(
            f"{path}: missing; run `dvc repro` so the stage that writes it runs first"
        )
    return pd.read_parquet(path)


def read_manifest(path: Path) -> pd.DataFrame:
    """The ingest manifest, checked for its columns (DICOM ones blank where absent); path order."""
    manifest = read_table(path)
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise PipelineError(
            f"{path}: missing column(s) {', '.join(missing)}; a manifest has "
            f"{', '.join(MANIFEST_COLUMNS)} (re-run the ingest stage)"
        )
    if manifest["path"].duplicated().any():
        duplicate = manifest.loc[manifest["path"].duplicated(), "path"].iloc[0]
        raise PipelineError(f"{path}: path {duplicate!r} is listed twice; re-run the ingest stage")
    # A manifest of an older ingest (or a test's) has no DICOM columns: they are then blank.
    manifest = manifest.reindex(columns=[*MANIFEST_COLUMNS, *DICOM_COLUMNS], fill_value="")
    manifest = manifest.fillna("").astype(str)
    return manifest.sort_values("path", ignore_index=True)


def read_splits(paths: ProjectPaths) -> dict[str, pd.DataFrame]:
    """The train, val and test tables."""
    return {split: read_table(paths.split_table(split)) for split in SPLITS}


def class_names(splits: dict[str, pd.DataFrame]) -> list[str]:
    """Sorted class names over all splits: the index order of the model's outputs."""
    return sorted(set().union(*(set(table["label"]) for table in splits.values())))


def label_indices(labels: pd.Series, names: Sequence[str]) -> np.ndarray:
    """Each label's class index: its position in `names`, the model's output order."""
    return labels.map({name: index for index, name in enumerate(names)}).to_numpy(dtype=np.int64)


def data_fingerprint(splits: dict[str, pd.DataFrame]) -> str:
    """A short hash of which image content sits in which split with which label."""
    digest = hashlib.sha256()
    for split in SPLITS:
        rows = splits[split][["path", "label", "sha256"]].sort_values("path")
        for path, label, content in rows.itertuples(index=False):
            digest.update(f"{split}\t{path}\t{label}\t{content}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class FoldDesign:
    """One fold of a K-fold cross-validation design, as the split stage dealt it."""

    design: str  # the design's fingerprint: the same for its K folds, unlike the data's
    folds: int  # K
    fold: int  # the test fold, 0 .. K - 1


def fold_design_json(design: str | None, folds: int, fold: int) -> dict[str, Any]:
    """What split writes to data/processed/cv_design.json (design None: no cross-validation)."""
    return {"cv_design": design, "folds": folds, "fold": fold}


def read_fold_design(paths: ProjectPaths) -> FoldDesign | None:
    """The cross-validation fold of the split tables; None without one (split.folds = 0).

    Split tables written before the file existed have none: they are a single split.
    """
    path = paths.fold_design
    if not path.is_file():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not payload.get("cv_design"):
        return None
    return FoldDesign(str(payload["cv_design"]), int(payload["folds"]), int(payload["fold"]))


def label_counts(labels: pd.Series) -> dict[str, int]:
    """How often each label occurs, sorted by label, with plain str keys and int values."""
    return {str(label): int(count) for label, count in labels.value_counts().sort_index().items()}
