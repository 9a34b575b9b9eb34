"""The pixel cache: every manifest file decoded once into one uint8 (N, size, size) .npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_file
from cxr.core.params import BuildParams
from cxr.core.tables import IMAGE_COLUMNS, REJECTED_COLUMNS
from cxr.images.decoding import decode_files

# Bytes copied at a time when the cache is cut down to its accepted rows: the copy's memory
# stays this small whatever the size of the cache.
COPY_CHUNK_BYTES = 64 << 20


def new_cache_file(path: Path, shape: tuple[int, ...]) -> int:
    """Create the uint8 .npy at `path` with its header and room for `shape`; return its data offset.

    Rows are then written with plain file writes, not through a memory map: pages written
    through a map count in the process's resident memory for as long as the map lives, so a
    memory-mapped build grew with the dataset (7.3 GB for 100,000 rows at 256 px).
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    offset = int(array.offset)
    del array  # closes the map: only the header and the file's length are written
    return offset


def keep_first_rows(path: Path, rows: int, chunk_bytes: int = COPY_CHUNK_BYTES) -> None:
    """Atomically replace the .npy at `path` by its first `rows` rows, copied chunk by chunk."""
    source = np.load(path, mmap_mode="r")
    if source.dtype != np.uint8:
        raise ValueError(f"{path}: holds {source.dtype} rows, not the cache's uint8")
    if not 0 <= rows <= len(source):
        raise ValueError(f"{path}: cannot keep {rows} of its {len(source)} rows")
    row_shape, source_offset = tuple(source.shape[1:]), int(source.offset)
    del source  # only its layout was needed: the rows are read with plain file reads
    left = rows * int(np.prod(row_shape))
    with staged_file(path) as staging:
        target_offset = new_cache_file(staging, (rows, *row_shape))
        with path.open("rb") as reader, staging.open("r+b") as writer:
            reader.seek(source_offset)
            writer.seek(target_offset)
            while left:
                chunk = reader.read(min(chunk_bytes, left))
                if not chunk:
                    raise ValueError(f"{path}: truncated; cannot keep its first {rows} rows")
                writer.write(chunk)
                left -= len(chunk)


def decode_into_cache(
    manifest: pd.DataFrame, raw_dir: Path, build_params: BuildParams, cache: Path, workers: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every manifest file once, pixels into the .npy `cache`; return images and rejects.

    `workers` decoding processes (0 = every available core: CXR_WORKERS) give the same rows.

    Rows stream from the worker processes in manifest order straight into the .npy with file
    writes, so the stage holds a few decoded images at a time, whatever the dataset's size.
    """
    size = build_params.cache_size
    rows: list[dict[str, object]] = []
    rejected: list[dict[str, str]] = []
    offset = new_cache_file(cache, (len(manifest), size, size))
    results = decode_files(
        raw_dir,
        manifest["path"].tolist(),
        build_params.max_pixels,
        size,
        build_params.resize,
        workers,
        build_params.dicom.decoding_window,
    )
    with cache.open("r+b") as writer:
        writer.seek(offset)
        for entry, result in zip(manifest.to_dict("records"), results, strict=True):
            if result.rejection is not None or result.info is None or result.pixels is None:
                rejected.append({"path": result.path, "reason": str(result.rejection)})
                continue
            if result.pixels.shape != (size, size):
                raise ValueError(f"{result.path}: decoded to {result.pixels.shape}, not {size}")
            # Accepted rows are written one after another: row k is the k-th accepted image.
            writer.write(np.ascontiguousarray(result.pixels, dtype=np.uint8).data)  # no bytes copy
            rows.append({**entry, **result.info, "cache_index": len(rows)})
    if rejected:
        keep_first_rows(cache, len(rows))
    images = pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))
    images = images.astype({"width": "int64", "height": "int64", "bytes": "int64"})
    return images.astype({"cache_index": "int64"}), pd.DataFrame(
        rejected, columns=list(REJECTED_COLUMNS)
    )


def check_classes_left(images: pd.DataFrame, rejected: pd.DataFrame, raw_dir: Path) -> None:
    """Fail in one line when fewer than two classes keep a usable image."""
    classes = images["label"].nunique()
    if classes < 2:
        raise PipelineError(
            f"{raw_dir}: {len(images)} usable image(s) in {classes} class(es) after rejecting "
            f"{len(rejected)} file(s) (e.g. {rejected.head(3).to_dict('records')}); need at "
            "least two classes"
        )
