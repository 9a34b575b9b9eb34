"""A tiny project as the build and split stages leave it: pixel cache plus split tables."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxr.core.paths import ProjectPaths
from cxr.ingestion.phantoms import render_phantom

ROOT = Path(__file__).resolve().parents[1]
CACHE_SIZE = 40
# images per class in train, val and test: enough for every class in every split
SPLIT_COUNTS = {"train": 8, "val": 3, "test": 3}
CLASSES = ("covid", "normal", "viral_pneumonia")
# The default recipe trains without augmentation; these tests train with it, so that the
# augmentation layers, their seeds and the end-to-end frozen phase are exercised.
AUGMENTATION = {
    "horizontal_flip": True,
    "rotation": 0.03,
    "zoom": 0.1,
    "translation": 0.05,
    "contrast": 0.1,
    "brightness": 0.1,
}


def tiny_params(weights: str = "none", **train: Any) -> dict[str, Any]:
    """The repository's params with a tiny, fast training setup (vgg16, 32 px, 2 epochs, augmented).

    VGG16's 19 layers trace several times faster than MobileNetV2's 150 (its first epoch is
    dominated by tracing on a CPU); at 32 px its compute is small.
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = "vgg16"
    params["train"].update(
        image_size=32,
        epochs=2,
        batch_size=8,
        weights=weights,
        fine_tune_epochs=1,
        fine_tune_layers=5,
    )
    params["train"]["head"]["dense_units"] = 8
    params["train"]["augment"] = dict(AUGMENTATION)
    params["train"].update(train)
    return params


def write_prepared_project(root: Path) -> Path:
    """Write pixels.npy (rows in cache_index order) and train/val/test tables under root."""
    paths = ProjectPaths(root)
    rows, pixels = [], []
    rng = np.random.default_rng(7)
    for split, per_class in SPLIT_COUNTS.items():
        for label in CLASSES:
            for index in range(per_class):
                image = render_phantom(label, rng, CACHE_SIZE, difficulty=1.0)
                rows.append(
                    {
                        "path": f"{split}/{label}/{index}.png",
                        "label": label,
                        "split": split,
                        "sha256": hashlib.sha256(image.tobytes()).hexdigest(),
                        "group": "",
                        "source": "",
                        "cache_index": len(pixels),
                    }
                )
                pixels.append(image)
    paths.pixel_cache.parent.mkdir(parents=True, exist_ok=True)
    # Stored shuffled, so a test catches a loader that ignores cache_index.
    order = rng.permutation(len(pixels))
    np.save(paths.pixel_cache, np.stack(pixels)[np.argsort(order)])
    table = pd.DataFrame(rows)
    table["cache_index"] = order[table["cache_index"]]
    paths.split_dir.mkdir(parents=True, exist_ok=True)
    for split, part in table.groupby("split"):
        part.drop(columns="split").to_parquet(paths.split_table(str(split)), index=False)
    return root


def fresh_copy(prepared: Path, target: Path, params: dict[str, Any]) -> Path:
    """A copy of the prepared project with its own params.yaml."""
    root = target / "project"
    shutil.copytree(prepared, root)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root
