"""Pixels for the model: rows of the build's pixel cache, one resize path, tf.data batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from stages.errors import PipelineError


def load_split_pixels(cache: Path, cache_index: Sequence[int], image_size: int) -> np.ndarray:
    """Rows `cache_index` of the build's pixel cache as uint8 (N, image_size, image_size, 1).

    The cache holds every image decoded once at build.cache_size; a smaller training size is
    an area-resize of those pixels, never a second decode of the files.
    """
    if not cache.exists():
        raise PipelineError(f"{cache}: missing; run `dvc repro` so the build stage writes it")
    pixels = np.load(cache, mmap_mode="r")
    cache_size = pixels.shape[1]
    if image_size > cache_size:
        raise PipelineError(
            f"train.image_size = {image_size} is larger than build.cache_size = {cache_size}; "
            f"raise build.cache_size to at least {image_size}"
        )
    chosen = np.asarray(pixels[np.asarray(cache_index, dtype=np.int64)])[..., np.newaxis]
    return resize_batch(chosen, image_size)


def resize_batch(images: np.ndarray, image_size: int) -> np.ndarray:
    """Area-resize uint8 (N, H, W, 1) to (N, image_size, image_size, 1) uint8; as-is when equal.

    Train, evaluate and predict all reach the model's size through this one function, so a new
    image is resized exactly as the training images were.
    """
    if images.shape[1:3] == (image_size, image_size):
        return images
    resized = [
        tf.image.resize(images[start : start + 512], (image_size, image_size), method="area")
        for start in range(0, len(images), 512)
    ]
    stacked = tf.concat(resized, axis=0) if resized else tf.zeros((0, image_size, image_size, 1))
    return tf.cast(tf.clip_by_value(tf.round(stacked), 0, 255), tf.uint8).numpy()


def array_dataset(
    images: np.ndarray, labels: Sequence[int], batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    """Batches of (uint8 image, label) from in-memory pixels, reshuffled each epoch when seeded."""
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, dtype=np.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
