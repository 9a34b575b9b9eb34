"""Tiny trained-model projects for the evaluate, compare, predict and serving tests."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from PIL import Image

from stages.paths import SPLITS, ProjectPaths
from stages.tables import data_fingerprint

NAMES = ["covid", "normal"]
CACHE_SIZE = 32
IMAGE_SIZE = 16


def phantom_pixels(count: int, seed: int, size: int = CACHE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Gray squares: label 0 (covid) carries a bright blob, label 1 (normal) does not."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    pixels = rng.normal(80, 10, (count, size, size))
    for index in np.flatnonzero(labels == 0):
        row, column = rng.integers(2, size - size // 3, size=2)
        pixels[index, row : row + size // 4, column : column + size // 4] += 120
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


def tiny_keras_model(image_size: int = IMAGE_SIZE, classes: int = 2) -> keras.Model:
    """A small CNN with the contract's layer names: image, backbone_input, backbone, head_pool."""
    inputs = keras.Input((image_size, image_size, 1), name="image")
    scaled = keras.layers.Rescaling(1 / 255, name="backbone_input")(inputs)
    backbone = keras.Sequential(
        [
            keras.Input((image_size, image_size, 1)),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
        ],
        name="backbone",
    )
    features = keras.layers.GlobalMaxPooling2D(name="head_pool")(backbone(scaled))
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(features)
    return keras.Model(inputs, outputs, name="cxr_tiny")


def write_project(
    root: Path,
    run_id: str = "0" * 32,
    experiment_id: str = "0",
    sources: tuple[str, ...] = ("",),
    per_split: int = 12,
    epochs: int = 3,
) -> ProjectPaths:
    """A project after build, split and train: pixel cache, split tables, raw PNGs, models/."""
    paths = ProjectPaths(root)
    count = per_split * len(SPLITS)
    pixels, labels = phantom_pixels(count, seed=7)
    paths.pixel_cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(paths.pixel_cache, pixels)
    paths.split_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for position, split in enumerate(SPLITS):
        rows = np.arange(position * per_split, (position + 1) * per_split)
        table = pd.DataFrame(
            {
                "path": [f"{NAMES[labels[row]]}/{row:03d}.png" for row in rows],
                "label": [NAMES[labels[row]] for row in rows],
                "sha256": [f"{row:064x}" for row in rows],
                "group": "",
                "source": [sources[row % len(sources)] for row in rows],
                "cache_index": rows,
            }
        )
        for row in rows:
            file = paths.raw_dir / f"{NAMES[labels[row]]}/{row:03d}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[row]).save(file)
        table.to_parquet(paths.split_table(split))
        splits[split] = table
    keras.utils.set_random_seed(0)
    model = tiny_keras_model()
    train_rows = splits["train"]["cache_index"].to_numpy()
    small = pixels[train_rows].reshape(-1, IMAGE_SIZE, 2, IMAGE_SIZE, 2).mean(axis=(2, 4))
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(small[..., np.newaxis], labels[train_rows], epochs=epochs, verbose=0)
    paths.models_dir.mkdir(parents=True, exist_ok=True)
    model.save(paths.model_file)
    paths.run_record.write_text(
        json.dumps(
            {
                "run_id": run_id,
                "experiment_id": experiment_id,
                "class_names": NAMES,
                "backbone": "tiny",
                "kind": "keras",
                "image_size": IMAGE_SIZE,
                "cache_size": CACHE_SIZE,
                "data_fingerprint": data_fingerprint(splits),
            }
        )
    )
    return paths


def sklearn_models_dir(models_dir: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    """models/ holding a fitted pixel logistic regression (kind sklearn) and its run.json."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    small = pixels.reshape(-1, IMAGE_SIZE, 2, IMAGE_SIZE, 2).mean(axis=(2, 4))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(small.reshape(len(small), -1).round().astype(np.uint8), labels)
    models_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, models_dir / "model.joblib")
    record = {
        "run_id": "1" * 32,
        "experiment_id": "0",
        "class_names": NAMES,
        "backbone": "pixel_logreg",
        "kind": "sklearn",
        "image_size": IMAGE_SIZE,
        "cache_size": CACHE_SIZE,
        "data_fingerprint": "none",
    }
    (models_dir / "run.json").write_text(json.dumps(record))
    return models_dir
