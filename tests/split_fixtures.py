"""Generated images tables and split params, shared by the splitting and split stage tests."""

from __future__ import annotations

import hashlib

import pandas as pd

from cxr.core.params import SplitParams
from cxr.core.tables import IMAGE_COLUMNS

COUNTS = {"covid": 60, "normal": 90, "viral_pneumonia": 30}

# Enough of every class that a 70 / 15 / 15 split leaves at least 10 per class and split.
BALANCED_COUNTS = {"covid": 100, "normal": 100, "viral_pneumonia": 100}


def images_table(counts: dict[str, int], copies: int = 0) -> pd.DataFrame:
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


def split_params(
    val: float = 0.15,
    test: float = 0.15,
    undersample: bool = False,
    resplit: bool = False,
    duplicates: str = "drop-from-test",
    near: int = 0,
    folds: int = 0,
    fold: int = 0,
) -> SplitParams:
    """Split params with the usual fractions, undersampling off."""
    return SplitParams(
        val_fraction=val,
        test_fraction=test,
        undersample=undersample,
        resplit=resplit,
        duplicates=duplicates,  # type: ignore[arg-type]
        near_duplicate_distance=near,
        folds=folds,
        fold=fold,
    )
