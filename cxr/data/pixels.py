"""Pixels for the model: rows of the build's pixel cache and the one resize path to its size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from cxr.core.errors import PipelineError


def load_split_pixels(cache: Path, cache_index: Sequence[int], image_size: int) -> np.ndarray:
    """Rows `cache_index` of the build's pixel cache as uint8 (N, image_size, image_size, 1).

    The cache holds every image decoded once at build.cache_size; a smaller training size is
    an area-resize of those pixels, never a second decode of the files.
    """
    pixels = open_pixel_cache(cache)
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


def open_pixel_cache(cache: Path) -> np.ndarray:
    """The build's pixel cache, memory-mapped: uint8 (N, cache_size, cache_size)."""
    if not cache.exists():
        raise PipelineError(f"{cache}: missing; run `dvc repro` so the build stage writes it")
    return np.load(cache, mmap_mode="r")
