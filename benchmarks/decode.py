"""Images per second of the build's parallel decode + resize versus a plain Pillow loop.

Usage: .venv/bin/python benchmarks/decode.py [dataset_dir] [--cache-size 256] [--workers 0]

Both run in the same process over the same files, after one read of every file so that
both measure decoding from the page cache rather than the disk. Then, for the JPEGs, decoding
to gray at full size against decoding at the smallest DCT scale the cache needs (Pillow's draft
mode, which build uses).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxr.core.processes import available_cores  # noqa: E402
from cxr.images.decoding import PILLOW_MAX_PIXELS, decode_files, decode_gray  # noqa: E402

DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "covid19-dataset"


def plain_pillow(files: list[Path], size: int) -> int:
    """Open, convert to L and resize each file in one process; return how many decoded."""
    decoded = 0
    for file in files:
        try:
            with Image.open(file) as image:
                gray = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
        except OSError:
            continue
        np.asarray(gray)
        decoded += 1
    return decoded


def gray_decodes(files: list[Path], draft_side: int) -> float:
    """Seconds to decode every JPEG to gray in one process, with or without a draft size."""
    start = time.perf_counter()
    for file in files:
        decode_gray(file, PILLOW_MAX_PIXELS, draft_side=draft_side)
    return time.perf_counter() - start


def pipeline(root: Path, relatives: list[str], size: int, workers: int) -> int:
    """The build's decode_files (processes, sha256, perceptual hash); return how many decoded."""
    results = decode_files(root, relatives, PILLOW_MAX_PIXELS, size, "stretch", workers)
    return sum(result.pixels is not None for result in results)


def main() -> int:
    """Time both and print images / second and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path, nargs="?", default=DEFAULT_DATASET)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0 = every available core")
    args = parser.parse_args()
    root = args.dataset_dir.resolve()
    files = sorted(
        path for path in root.rglob("*") if path.is_file() and not path.name.startswith(".")
    )
    if not files:
        print(f"error: {root}: no files", file=sys.stderr)
        return 2
    relatives = [file.relative_to(root).as_posix() for file in files]
    megabytes = sum(len(file.read_bytes()) for file in files) / 1e6  # warms the page cache

    start = time.perf_counter()
    plain_count = plain_pillow(files, args.cache_size)
    plain_seconds = time.perf_counter() - start

    start = time.perf_counter()
    pipeline_count = pipeline(root, relatives, args.cache_size, args.workers)
    pipeline_seconds = time.perf_counter() - start

    workers = args.workers or available_cores()
    plain_rate, pipeline_rate = plain_count / plain_seconds, pipeline_count / pipeline_seconds
    print(f"dataset: {root} ({len(files)} files, {megabytes:.0f} MB), cache {args.cache_size} px")
    print(f"plain Pillow loop, 1 process : {plain_rate:8.1f} images/s ({plain_seconds:.1f} s)")
    print(
        f"pipeline decode_files, {workers} proc: {pipeline_rate:8.1f} images/s "
        f"({pipeline_seconds:.1f} s, incl. process start, sha256, perceptual hash, EXIF)"
    )
    print(f"speed-up: {pipeline_rate / plain_rate:.2f}x")

    jpegs = [file for file in files if file.suffix.lower() in (".jpg", ".jpeg")]
    if jpegs:
        full_seconds = gray_decodes(jpegs, draft_side=0)
        draft_seconds = gray_decodes(jpegs, draft_side=args.cache_size)
        print(
            f"JPEG decode to gray, 1 process, {len(jpegs)} files: full size "
            f"{len(jpegs) / full_seconds:.1f} images/s, DCT-scaled to >= {args.cache_size} px "
            f"(what build does) {len(jpegs) / draft_seconds:.1f} images/s: "
            f"{full_seconds / draft_seconds:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
