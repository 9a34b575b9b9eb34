"""A tiny project as the build and split stages leave it, and tiny params to train on it."""

from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Mapping, Sequence
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

# A tiny training setup (vgg16, 32 px, 2 epochs, augmented). VGG16's 19 layers trace several
# times faster than MobileNetV2's 150 (its first epoch is dominated by tracing on a CPU); at 32
# px its compute is small.
TINY_TRAINING: dict[str, Any] = {
    "model": "vgg16",
    "train": {
        "image_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "weights": "none",
        "fine_tune_epochs": 1,
        "fine_tune_layers": 5,
        "head": {"dense_units": 8},
        "augment": AUGMENTATION,
    },
}
# 44 phantoms of 48 px, and few of them in the histograms: a whole pipeline in seconds.
TINY_PHANTOMS: dict[str, Any] = {
    "data": {
        "synthetic": {
            "counts": {"covid": 14, "normal": 18, "viral_pneumonia": 12},
            "image_size": 48,
        }
    },
    "build": {"histogram_images_per_class": 4},
}
# A whole pipeline, ingest to compare, on TINY_PHANTOMS: the default model trains for seconds.
TINY_PIPELINE: tuple[dict[str, Any], ...] = (
    TINY_PHANTOMS,
    {
        "train": {
            "image_size": 32,
            "epochs": 2,
            "batch_size": 8,
            "fine_tune_epochs": 0,
            "head": {"dense_units": [8]},
        },
        "evaluate": {"bootstrap_samples": 50},
    },
)

# TINY_PHANTOMS through the pixel baselines: each experiment's pipeline takes seconds.
TINY_BASELINES = (
    TINY_PHANTOMS,
    {
        # obvious findings in a narrow pose: pixel baselines learn them from a few dozen images
        "data": {"synthetic": {"difficulty": 1.0, "positioning": 1.0}},
        "build": {"cache_size": 32},
        "train": {"baseline": {"image_size": 16}},
        "evaluate": {"bootstrap_samples": 20, "gradcam_images": 0},
    },
)


def tiny_params(
    weights: str | None = None,
    *,
    changes: Sequence[Mapping[str, Any]] = (TINY_TRAINING,),
    **train: Any,
) -> dict[str, Any]:
    """The repository's params shrunk by each of changes in turn, then weights and train keys.

    A change's mappings are merged into the params key by key, its other values replace theirs;
    the default is TINY_TRAINING (TINY_PIPELINE for a whole pipeline). weights (train.weights)
    and the train keyword arguments then replace whole values.
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for change in changes:
        _merge(params, change)
    if weights is not None:
        params["train"]["weights"] = weights
    params["train"].update(train)
    return params


def _merge(params: dict[str, Any], change: Mapping[str, Any]) -> None:
    """Merge change into params in place: mappings key by key, other values replaced by a copy."""
    for key, value in change.items():
        if isinstance(value, Mapping) and isinstance(params.get(key), dict):
            _merge(params[key], value)
        else:
            params[key] = copy.deepcopy(value)


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


# Self-supervised pre-training of compact_cnn at 32 px on the 33 train and val images of the
# prepared project (write_prepared_project): seconds an epoch.
TINY_PRETRAINING: dict[str, Any] = {
    "enabled": True,
    "epochs": 4,
    "batch_size": 8,
    "learning_rate": 0.002,
    "temperature": 0.5,
    "projection_units": 16,
}


def tiny_pretrain_params(**pretrain: Any) -> dict[str, Any]:
    """tiny_params for compact_cnn (one epoch, no weights), pre-trained as TINY_PRETRAINING says.

    The keyword arguments replace pretrain keys after TINY_PRETRAINING's.
    """
    params = tiny_params("none", epochs=1, fine_tune_epochs=0)
    params["model"] = "compact_cnn"
    params["pretrain"].update({**TINY_PRETRAINING, **pretrain})
    return params
