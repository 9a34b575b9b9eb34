"""Pixels for the model: rows of the build's pixel cache and the one resize path to its size.

Plain numpy, so every Keras backend (and a process without TensorFlow) resizes alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BufferedReader
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cxr.core.errors import PipelineError

# Cache rows gathered and resized at once: bounds the memory beyond the resized split itself.
GATHER_CHUNK = 512
# Images resized at once: bounds the float32 working copies.
RESIZE_CHUNK = 32


def load_split_pixels(
    cache: Path, cache_index: Sequence[int] | np.ndarray, image_size: int
) -> np.ndarray:
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
    index = np.asarray(cache_index, dtype=np.int64)
    result = np.empty((len(index), image_size, image_size, 1), dtype=np.uint8)
    # A chunk at a time: only the resized split is held, never every chosen row at cache size
    # (21,165 rows at 256 px are 1.4 GB before a 64-px resize makes them 87 MB).
    with cache.open("rb") as handle:
        for start in range(0, len(index), GATHER_CHUNK):
            rows = _read_rows(handle, pixels, index[start : start + GATHER_CHUNK])
            result[start : start + len(rows)] = resize_batch(rows[..., np.newaxis], image_size)
    return result


class ImageRows(Protocol):
    """Images indexed like an array (N, size, size, 1): a numpy array or CachedImages."""

    @property
    def shape(self) -> tuple[int, ...]:
        """(images, size, size, 1)."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...


class CachedImages:
    """Rows of the pixel cache at `image_size`, read when indexed: the split is never all held.

    Indexing with an int, a slice or an array of positions gives what load_split_pixels would
    give for those rows (an int: one image), so evaluate scores a split of any size a chunk at
    a time and reads back only the few images its figures show.
    """

    def __init__(self, cache: Path, cache_index: Sequence[int], image_size: int) -> None:
        self.cache = cache
        self.cache_index = np.asarray(cache_index, dtype=np.int64)
        self.image_size = image_size
        # Reading no rows checks the cache and the size at once (the one-line error when the
        # cache is missing or smaller than image_size), before anything is scored.
        load_split_pixels(cache, [], image_size)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(images, image_size, image_size, 1), as the loaded array would be."""
        return (len(self.cache_index), self.image_size, self.image_size, 1)

    def __len__(self) -> int:
        return len(self.cache_index)

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return load_split_pixels(self.cache, [self.cache_index[key]], self.image_size)[0]
        return load_split_pixels(self.cache, self.cache_index[key], self.image_size)


def read_cache_rows(
    cache: Path, pixels: np.memmap, cache_index: Sequence[int], image_size: int
) -> np.ndarray:
    """A few rows of the pixel cache (`pixels`: it opened) at `image_size`: one streamed batch.

    Same pixels as load_split_pixels gives for those rows (the resize is per image).
    """
    with cache.open("rb") as handle:
        rows = _read_rows(handle, pixels, np.asarray(cache_index, dtype=np.int64))
    return resize_batch(rows[..., np.newaxis], image_size)


def _read_rows(handle: BufferedReader, pixels: np.memmap, rows: np.ndarray) -> np.ndarray:
    """Rows of the cache read with plain file reads, not through the memory map.

    Pages touched through a memory map count in the process's resident memory for as long as
    the map lives, so reading every training row through it grows RSS with the dataset.
    """
    chosen = np.empty((len(rows), *pixels.shape[1:]), dtype=np.uint8)
    offset = pixels.offset  # where the rows start, after the .npy header
    row_bytes = chosen[0].nbytes if len(rows) else 0
    for position, row in enumerate(rows):
        handle.seek(offset + int(row) * row_bytes)
        if handle.readinto(memoryview(chosen[position]).cast("B")) != row_bytes:
            raise PipelineError(f"{handle.name}: truncated pixel cache; run `dvc repro build`")
    return chosen


def resize_batch(images: np.ndarray, image_size: int) -> np.ndarray:
    """Area-resize uint8 (N, H, W, C) to (N, image_size, image_size, C) uint8; as-is when equal.

    Train, evaluate and predict all reach the model's size through this one function, so a new
    image is resized exactly as the training images were. The bytes are those of
    TensorFlow's `tf.image.resize(method="area")`, rounded half to even (what this function
    returned before it was numpy; tests/models/test_pixels.py compares them).
    """
    if images.shape[1:3] == (image_size, image_size):
        return images
    count, height, width, channels = images.shape
    rows_in, row_weights, row_scale = _area_taps(height, image_size)
    columns_in, column_weights, column_scale = _area_taps(width, image_size)
    # TensorFlow's kernel, float32 step by step in its order: per input row, the weighted sum
    # of the columns each output column covers; per output row, the weighted sum of those
    # rows; times 1 / (row scale * column scale), that product rounded to float32 first.
    normaliser = np.float32(1.0 / float(np.float32(row_scale * column_scale)))
    result = np.empty((count, image_size, image_size, channels), dtype=np.uint8)
    for start in range(0, count, RESIZE_CHUNK):
        planes = np.moveaxis(images[start : start + RESIZE_CHUNK], 3, 1).astype(np.float32)
        across = _weighted_taps(planes, columns_in, column_weights, axis=3)
        down = _weighted_taps(across, rows_in, row_weights[:, np.newaxis, :], axis=2)
        down *= normaliser
        np.clip(np.round(down, out=down), 0, 255, out=down)
        result[start : start + len(planes)] = np.moveaxis(down, 1, 3).astype(np.uint8)
    return result


def _area_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """Per output pixel on one axis: the input pixels it covers (out, taps), their weights, scale.

    The weight is the covered fraction of each input pixel times nothing else (the scale is
    applied once at the end); taps past an output pixel's last input pixel weigh 0.
    """
    scale = np.float32(size_in) / np.float32(size_out)
    first = np.arange(size_out).astype(np.float32) * scale
    last = np.arange(1, size_out + 1).astype(np.float32) * scale
    start = np.floor(first).astype(np.int64)
    end = np.ceil(last).astype(np.int64)
    index = start[:, np.newaxis] + np.arange(int((end - start).max()))
    pixel = index.astype(np.float32)
    low, high, one = first[:, np.newaxis], last[:, np.newaxis], np.float32(1)
    weights = np.where(
        pixel < low,
        np.where(pixel + one > high, scale, pixel + one - low),
        np.where(pixel + one > high, high - pixel, one),
    ).astype(np.float32)
    weights = np.where(index < end[:, np.newaxis], weights, np.float32(0)).astype(np.float32)
    return np.minimum(index, size_in - 1), weights, scale


def _weighted_taps(
    planes: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int
) -> np.ndarray:
    """Sum over taps k of planes taken at index[:, k] along `axis` times weights[:, k], in order."""
    total = np.take(planes, index[:, 0], axis=axis)
    total *= weights[..., 0]
    for tap in range(1, index.shape[1]):
        term = np.take(planes, index[:, tap], axis=axis)
        term *= weights[..., tap]
        total += term
    return total


def open_pixel_cache(cache: Path) -> np.memmap:
    """The build's pixel cache, memory-mapped: uint8 (N, cache_size, cache_size)."""
    if not cache.exists():
        raise PipelineError(f"{cache}: missing; run `dvc repro` so the build stage writes it")
    try:
        return np.load(cache, mmap_mode="r")
    except ValueError as error:  # shorter than its header says: cut off by a full disk or a copy
        raise PipelineError(
            f"{cache}: truncated pixel cache ({error}); run `dvc repro build`"
        ) from None
