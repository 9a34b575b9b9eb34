"""The pixel cache: every manifest file decoded once into one uint8 (N, size, size) .npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_file
from cxr.core.params import BuildParams
from cxr.core.tables import IMAGE_COLUMNS, REJECTED_COLUMNS
from cxr.data.decoding import decode_files

# Bytes copied at a time when the cache is cut down to its accepted rows: the copy's memory
# stays this small whatever the size of the cache.
COPY_CHUNK_BYTES = 64 << 20


def keep_first_rows(path: Path, rows: int, chunk_bytes: int = COPY_CHUNK_BYTES) -> None:
    """Atomically replace the .npy at `path` by its first `rows` rows, copied chunk by chunk."""
    source = np.load(path, mmap_mode="r")
    if not 0 <= rows <= len(source):
        raise ValueError(f"{path}: cannot keep {rows} of its {len(source)} rows")
    row_bytes = max(1, source.itemsize * int(np.prod(source.shape[1:])))
    step = max(1, chunk_bytes // row_bytes)
    with staged_file(path) as staging:
        target = np.lib.format.open_memmap(
            staging, mode="w+", dtype=source.dtype, shape=(rows, *source.shape[1:])
        )
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            target[start:stop] = source[start:stop]
        target.flush()
        # Both memory maps are closed before the copy is renamed onto `path`.
        del target, source


def decode_into_cache(
    manifest: pd.DataFrame, raw_dir: Path, build_params: BuildParams, cache: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every manifest file once, pixels into the .npy `cache`; return images and rejects.

    Rows stream from the worker processes in manifest order straight into a memory-mapped
    .npy, so the stage never holds more than one cache's worth of pixels.
    """
    size = build_params.cache_size
    rows: list[dict[str, object]] = []
    rejected: list[dict[str, str]] = []
    pixels = np.lib.format.open_memmap(
        cache, mode="w+", dtype=np.uint8, shape=(len(manifest), size, size)
    )
    results = decode_files(
        raw_dir,
        manifest["path"].tolist(),
        build_params.max_pixels,
        size,
        build_params.resize,
        build_params.workers,
    )
    for entry, result in zip(manifest.to_dict("records"), results, strict=True):
        if result.rejection is not None or result.info is None or result.pixels is None:
            rejected.append({"path": result.path, "reason": str(result.rejection)})
            continue
        pixels[len(rows)] = result.pixels
        rows.append({**entry, **result.info, "cache_index": len(rows)})
    pixels.flush()
    del pixels  # release the memory map before the file is cut down or renamed
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
