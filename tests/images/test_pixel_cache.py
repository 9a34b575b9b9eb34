"""Tests for the pixel cache (cxr/images/pixel_cache.py): decoding into it, cutting it down."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.core.params import BuildParams
from cxr.core.tables import IMAGE_COLUMNS, MANIFEST_COLUMNS, REJECTED_COLUMNS
from cxr.images.decoding import decode_gray, resize_square
from cxr.images.pixel_cache import decode_into_cache, keep_first_rows

CACHE_SIZE = 32


def _manifest(raw_dir: Path, bad: set[int], count: int = 6) -> pd.DataFrame:
    """`count` files alternating between two classes; those at the `bad` positions are text."""
    paths = []
    for index in range(count):
        label = ("covid", "normal")[index % 2]
        relative = f"{label}/image_{index}.png"
        (raw_dir / label).mkdir(parents=True, exist_ok=True)
        if index in bad:
            (raw_dir / relative).write_text("not an image", encoding="utf-8")
        else:
            gray = np.full((20 + index, 24), 30 * index, dtype=np.uint8)
            Image.fromarray(gray).save(raw_dir / relative)
        paths.append(relative)
    return pd.DataFrame(
        {
            "path": paths,
            "label": [path.split("/")[0] for path in paths],
            "given_split": "",
            "group": "",
            "source": "",
        },
        columns=list(MANIFEST_COLUMNS),
    )


def _build_params() -> BuildParams:
    return BuildParams(
        cache_size=CACHE_SIZE,
        resize="pad",
        max_pixels=1_000_000,
        histogram_images_per_class=2,
        histogram_bins=8,
        dicom={"window": "auto"},
    )


@pytest.mark.parametrize("bad", [set(), {0}, {2, 3}, {5}], ids=["none", "first", "middle", "last"])
def test_cache_holds_exactly_the_accepted_images(tmp_path: Path, bad: set[int]) -> None:
    # Given a manifest of six files of which those at `bad` cannot be decoded
    raw_dir = tmp_path / "raw"
    manifest = _manifest(raw_dir, bad)
    cache_dir = tmp_path / "interim"
    cache_dir.mkdir()
    cache = cache_dir / "pixels.npy"

    # When they are decoded into the cache
    images, rejected = decode_into_cache(manifest, raw_dir, _build_params(), cache, workers=1)

    # Then the rejected files are listed and the accepted ones are the images, in manifest order
    assert tuple(images.columns) == IMAGE_COLUMNS
    assert tuple(rejected.columns) == REJECTED_COLUMNS
    assert rejected["path"].tolist() == [manifest["path"][index] for index in sorted(bad)]
    assert images["path"].tolist() == [
        path for index, path in enumerate(manifest["path"]) if index not in bad
    ]
    assert images["cache_index"].tolist() == list(range(len(images)))
    # and the cache has one row per accepted image, no more, each that image's pixels
    pixels = np.load(cache, mmap_mode="r")
    assert pixels.shape == (len(manifest) - len(bad), CACHE_SIZE, CACHE_SIZE)
    assert pixels.dtype == np.uint8
    assert cache.stat().st_size == pixels.offset + pixels.size
    for row in images.itertuples():
        expected = resize_square(decode_gray(raw_dir / row.path, 10**6), CACHE_SIZE, "pad")
        np.testing.assert_array_equal(pixels[row.cache_index], expected)
    # and no temporary file is left beside the cache
    assert [path.name for path in cache_dir.iterdir()] == ["pixels.npy"]


def test_keep_first_rows_keeps_the_first_rows(tmp_path: Path) -> None:
    # Given a .npy of 1000 rows
    path = tmp_path / "rows.npy"
    full = np.arange(1000 * 6, dtype=np.uint8).reshape(1000, 2, 3)
    np.save(path, full)

    # When it is cut to 7 rows
    keep_first_rows(path, 7)

    # Then it loads as exactly those rows and the file holds nothing more
    np.testing.assert_array_equal(np.load(path), full[:7])
    assert path.stat().st_size == np.load(path, mmap_mode="r").offset + 7 * 6
    assert [entry.name for entry in tmp_path.iterdir()] == ["rows.npy"]


@pytest.mark.parametrize("rows", [0, 1, 999, 1000])
def test_keep_first_rows_copies_in_small_chunks(tmp_path: Path, rows: int) -> None:
    # Given a .npy of 1000 rows of 6 bytes
    path = tmp_path / "rows.npy"
    full = np.arange(1000 * 6, dtype=np.int64).reshape(1000, 6).astype(np.uint8)
    np.save(path, full)

    # When it is cut copying at most 20 bytes (3 rows) at a time
    keep_first_rows(path, rows, chunk_bytes=20)

    # Then every kept row arrived, none of the others
    kept = np.load(path)
    assert kept.shape == (rows, 6)
    np.testing.assert_array_equal(kept, full[:rows])


def test_keep_first_rows_never_holds_the_whole_cache(tmp_path: Path) -> None:
    # Given an 8 MiB cache of 2000 rows of 64 x 64 pixels
    path = tmp_path / "pixels.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(2000, 64, 64))
    rows[:] = np.arange(2000, dtype=np.uint8)[:, np.newaxis, np.newaxis]
    rows.flush()
    del rows

    # When it is cut to 1999 rows in 64 KiB chunks, with allocations traced
    tracemalloc.start()
    try:
        keep_first_rows(path, 1999, chunk_bytes=64 << 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then the copy allocated far less than the cache, and the rows are intact
    assert peak < (8 << 20) // 8
    kept = np.load(path, mmap_mode="r")
    assert kept.shape == (1999, 64, 64)
    assert (kept[:, 0, 0] == np.arange(1999, dtype=np.uint8)).all()


def test_keep_first_rows_refuses_more_rows_than_it_has(tmp_path: Path) -> None:
    # Given a .npy of 3 rows
    path = tmp_path / "rows.npy"
    np.save(path, np.zeros((3, 2), dtype=np.uint8))

    # When 4 rows are asked for, then it fails and leaves the file as it was
    with pytest.raises(ValueError, match="cannot keep 4 of its 3 rows"):
        keep_first_rows(path, 4)
    assert np.load(path).shape == (3, 2)
