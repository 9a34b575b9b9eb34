"""Tests for reading the build's pixel cache at the model's size (cxr/models/pixels.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.core.errors import PipelineError
from cxr.models.pixels import (
    GATHER_CHUNK,
    RESIZE_CHUNK,
    CachedImages,
    load_split_pixels,
    open_pixel_cache,
    resize_batch,
)


def _cache(path: Path, rows: int, side: int) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 256, (rows, side, side), dtype=np.uint8)
    np.save(path, pixels)
    return pixels


def test_rows_come_back_in_the_asked_order_resized_like_resize_batch(tmp_path: Path) -> None:
    # Given a cache with more rows than one gather chunk, and indices unsorted, repeated and
    # crossing a chunk boundary
    pixels = _cache(tmp_path / "pixels.npy", GATHER_CHUNK + 37, 24)
    index = np.concatenate([np.arange(GATHER_CHUNK + 36, -1, -3), [5, 5, 0]])

    # When they are read at a smaller size
    loaded = load_split_pixels(tmp_path / "pixels.npy", index, 12)

    # Then each row is the cached row, area-resized exactly as resize_batch does
    assert loaded.shape == (len(index), 12, 12, 1) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, resize_batch(pixels[index][..., np.newaxis], 12))


def test_rows_at_the_cache_size_are_the_cached_bytes(tmp_path: Path) -> None:
    pixels = _cache(tmp_path / "pixels.npy", 20, 16)
    loaded = load_split_pixels(tmp_path / "pixels.npy", [3, 19, 0], 16)
    np.testing.assert_array_equal(loaded[..., 0], pixels[[3, 19, 0]])


def test_an_empty_split_gives_an_empty_batch(tmp_path: Path) -> None:
    _cache(tmp_path / "pixels.npy", 4, 16)
    assert load_split_pixels(tmp_path / "pixels.npy", [], 8).shape == (0, 8, 8, 1)


def test_a_size_above_the_cache_size_names_both_params(tmp_path: Path) -> None:
    _cache(tmp_path / "pixels.npy", 4, 16)
    with pytest.raises(PipelineError, match=r"train.image_size = 32 .* build.cache_size = 16"):
        load_split_pixels(tmp_path / "pixels.npy", [0], 32)


def test_a_truncated_cache_is_one_error_naming_the_file(tmp_path: Path) -> None:
    # Given a cache whose last rows were cut off (a disk filled up, a copy interrupted)
    cache = tmp_path / "pixels.npy"
    _cache(cache, 10, 16)
    cache.write_bytes(cache.read_bytes()[: -5 * 16 * 16])

    # When a cut-off row is read, then the error names the file and what to run
    with pytest.raises(PipelineError, match=r"pixels.npy: truncated pixel cache"):
        load_split_pixels(cache, [9], 16)


def test_a_missing_cache_says_to_run_the_pipeline(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="missing; run `dvc repro`"):
        open_pixel_cache(tmp_path / "pixels.npy")


def test_cached_images_read_what_load_split_pixels_gives_for_the_indexed_rows(
    tmp_path: Path,
) -> None:
    # Given a cache and a split of unsorted rows across a gather chunk
    _cache(tmp_path / "pixels.npy", GATHER_CHUNK + 10, 16)
    index = np.concatenate([np.arange(GATHER_CHUNK + 9, -1, -2), [3, 3]])
    loaded = load_split_pixels(tmp_path / "pixels.npy", index, 8)
    # When the same split is indexed lazily
    images = CachedImages(tmp_path / "pixels.npy", index, 8)
    # Then shape, length and every kind of index give the loaded pixels
    assert images.shape == loaded.shape and len(images) == len(loaded)
    np.testing.assert_array_equal(images[3], loaded[3])
    np.testing.assert_array_equal(images[np.int64(7)], loaded[7])
    np.testing.assert_array_equal(images[10:300], loaded[10:300])
    np.testing.assert_array_equal(images[np.array([5, 0, 5])], loaded[[5, 0, 5]])
    np.testing.assert_array_equal(images[:], loaded)


def test_cached_images_larger_than_the_cache_is_the_same_one_line_error(tmp_path: Path) -> None:
    _cache(tmp_path / "pixels.npy", 3, 16)
    with pytest.raises(PipelineError, match="train.image_size = 32 is larger than build"):
        CachedImages(tmp_path / "pixels.npy", [0, 1], 32)


@pytest.mark.parametrize(
    ("side", "size", "channels"),
    [(256, 224, 1), (256, 64, 1), (40, 32, 1), (100, 37, 1), (32, 48, 1), (33, 7, 3)],
)
def test_resize_batch_gives_the_bytes_of_tensorflows_area_resize(
    side: int, size: int, channels: int
) -> None:
    # Given random images, and TensorFlow's area resize (what resize_batch called before it was
    # numpy, and what every model trained until then saw), rounded half to even
    tf = pytest.importorskip("tensorflow")
    images = np.random.default_rng(side + size).integers(
        0, 256, (RESIZE_CHUNK + 5, side, side, channels), dtype=np.uint8
    )
    resized = tf.image.resize(images, (size, size), method="area")
    expected = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()

    # When numpy resizes them (down, up, odd ratios, several chunks), Then every byte is the same
    np.testing.assert_array_equal(resize_batch(images, size), expected)
