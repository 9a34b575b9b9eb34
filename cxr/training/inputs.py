"""What a model trains on: train and val pixels from the pixel cache, labels, tf.data batches.

The resized train and val pixels are held in memory when they fit under CXR_MEMORY_CACHE_MB;
above it they are streamed: each batch is read from the pixel cache and resized as training
goes, so memory does not grow with the number of images. Both give the same batches in the
same order (tests/stages/test_train.py), only the speed differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from cxr.core.paths import ProjectPaths
from cxr.core.tables import class_names, data_fingerprint, label_indices, read_splits
from cxr.models.pixels import load_split_pixels, open_pixel_cache, read_cache_rows

MEGABYTE = 1 << 20
# Streamed batches read and resized ahead of the one the model is training on.
STREAM_READ_AHEAD = 2


@dataclass(frozen=True)
class StreamedPixels:
    """A split's pixels left in the pixel cache: rows `cache_index`, resized as they are read."""

    cache: Path
    pixels: np.memmap  # the cache, opened once (open_pixel_cache): its row layout
    cache_index: np.ndarray
    image_size: int

    def __len__(self) -> int:
        """Number of images."""
        return len(self.cache_index)

    def batch(self, positions: np.ndarray) -> np.ndarray:
        """The images at `positions` (0 .. len-1) as uint8 (n, size, size, 1)."""
        rows = self.cache_index[positions]
        return read_cache_rows(self.cache, self.pixels, rows, self.image_size)


Pixels = np.ndarray | StreamedPixels


@dataclass(frozen=True)
class TrainingData:
    """The split tables, class names and data fingerprint, with train and val pixels."""

    splits: dict[str, pd.DataFrame]
    class_names: list[str]
    fingerprint: str
    cache_size: int
    train_images: Pixels
    train_labels: np.ndarray
    val_images: Pixels
    val_labels: np.ndarray


def load_training_data(
    paths: ProjectPaths, image_size: int, memory_cache_mb: float | None = None
) -> TrainingData:
    """Train and val pixels at `image_size` from the build's cache, with class indices.

    In memory, or streamed when they would take more than `memory_cache_mb` (None: always in
    memory, as the scikit-learn baselines need).
    """
    splits = read_splits(paths)
    names = class_names(splits)
    rows = len(splits["train"]) + len(splits["val"])
    stream = memory_cache_mb is not None and rows * image_size**2 > memory_cache_mb * MEGABYTE

    cache = open_pixel_cache(paths.pixel_cache)  # fails now, with its reason, not mid-epoch

    def pixels(split: str) -> Pixels:
        index = splits[split]["cache_index"].to_numpy(dtype=np.int64)
        if stream:
            return StreamedPixels(paths.pixel_cache, cache, index, image_size)
        return load_split_pixels(paths.pixel_cache, index, image_size)

    def labels(split: str) -> np.ndarray:
        return label_indices(splits[split]["label"], names)

    return TrainingData(
        splits=splits,
        class_names=names,
        fingerprint=data_fingerprint(splits),
        cache_size=int(cache.shape[1]),
        train_images=pixels("train"),
        train_labels=labels("train"),
        val_images=pixels("val"),
        val_labels=labels("val"),
    )


def in_memory(images: Pixels) -> np.ndarray:
    """The pixels as an array; streamed ones are read whole (for the small baseline inputs)."""
    if isinstance(images, StreamedPixels):
        return images.batch(np.arange(len(images)))
    return images


def array_dataset(
    images: Pixels, labels: Sequence[int], batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    """Batches of (uint8 image, label), reshuffled each epoch when seeded.

    Streamed pixels are shuffled by position, which draws the same order as shuffling the
    images themselves (tf.data's order depends on the seed and the count, not the elements).
    """
    if isinstance(images, StreamedPixels):
        return streamed_dataset(images, labels, batch_size, shuffle_seed)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, dtype=np.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def streamed_dataset(
    images: StreamedPixels, labels: Sequence[int], batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    """Batches read from the pixel cache as they are needed (a few prefetched ahead)."""
    positions = np.arange(len(images), dtype=np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((positions, np.asarray(labels, dtype=np.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    size = images.image_size

    def read(batch_positions: tf.Tensor, batch_labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(images.batch, [batch_positions], tf.uint8, stateful=False)
        return tf.ensure_shape(pixels, (None, size, size, 1)), batch_labels

    # Batches are read in parallel but handed out in order, so the fit sees the same sequence.
    # A fixed, small read-ahead: AUTOTUNE grows its buffers while the consumer keeps up, and
    # memory then grows with the epoch again.
    dataset = dataset.batch(batch_size).map(
        read, num_parallel_calls=STREAM_READ_AHEAD, deterministic=True
    )
    return dataset.prefetch(STREAM_READ_AHEAD)
