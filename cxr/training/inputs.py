"""What a model trains on: train and val pixels from the pixel cache, labels, tf.data batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tensorflow as tf

from cxr.core.paths import ProjectPaths
from cxr.core.tables import class_names, data_fingerprint, label_indices, read_splits
from cxr.data.pixels import load_split_pixels, open_pixel_cache


@dataclass(frozen=True)
class TrainingData:
    """The split tables, class names and data fingerprint, with train and val pixels."""

    splits: dict[str, pd.DataFrame]
    class_names: list[str]
    fingerprint: str
    cache_size: int
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def load_training_data(paths: ProjectPaths, image_size: int) -> TrainingData:
    """Train and val pixels at `image_size` from the build's cache, with class indices."""
    splits = read_splits(paths)
    names = class_names(splits)

    def pixels(split: str) -> np.ndarray:
        return load_split_pixels(paths.pixel_cache, splits[split]["cache_index"], image_size)

    def labels(split: str) -> np.ndarray:
        return label_indices(splits[split]["label"], names)

    return TrainingData(
        splits=splits,
        class_names=names,
        fingerprint=data_fingerprint(splits),
        cache_size=int(open_pixel_cache(paths.pixel_cache).shape[1]),
        train_images=pixels("train"),
        train_labels=labels("train"),
        val_images=pixels("val"),
        val_labels=labels("val"),
    )


def array_dataset(
    images: np.ndarray, labels: Sequence[int], batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    """Batches of (uint8 image, label) from in-memory pixels, reshuffled each epoch when seeded."""
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, dtype=np.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
