"""Peak memory and time of reading a training split from the pixel cache at the model's size.

    .venv/bin/python benchmarks/cache_read.py [--images 21165] [--cache-size 256]
        [--train-fraction 0.7] [--image-size 64]

Writes a random pixel cache of --images rows in a temporary folder, then in a fresh process each:
the pipeline's load_split_pixels (chunks read with plain file reads, resized per chunk) and the
plain way (every chosen row gathered through the memory map at cache size, then resized).
Prints seconds and peak RSS (ru_maxrss, which includes TensorFlow's own ~0.7 GB) of each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WRITE = """
import sys
import numpy as np
cache, count, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pixels = np.lib.format.open_memmap(cache, mode="w+", dtype=np.uint8, shape=(count, side, side))
for start in range(0, count, 1000):
    block = pixels[start : start + 1000]
    block[:] = np.random.default_rng(start).integers(0, 256, block.shape, dtype=np.uint8)
pixels.flush()
"""

MEASURE = """
import resource, sys, time
import numpy as np
from pathlib import Path
from cxr.models.pixels import load_split_pixels, open_pixel_cache, resize_batch
cache, count, size, way = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = np.random.default_rng(0).permutation(len(open_pixel_cache(cache)))[:count]
start = time.perf_counter()
if way == "pipeline":
    images = load_split_pixels(cache, rows, size)
else:
    images = resize_batch(np.asarray(open_pixel_cache(cache)[rows])[..., np.newaxis], size)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(f"{seconds:.2f} {peak:.2f} {images.shape}")
"""


def main() -> int:
    """Write the cache, measure both ways in fresh processes, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=21_165)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "pixels.npy"
        # Written by a process of its own: Linux carries a process's peak RSS across fork and
        # exec, so mapping 1.4 GB here would show up as the measuring processes' peak.
        subprocess.run(
            [sys.executable, "-c", WRITE, str(cache), str(args.images), str(args.cache_size)],
            check=True,
        )
        count = int(args.images * args.train_fraction)
        print(
            f"cache {args.images} x {args.cache_size}^2 ({cache.stat().st_size / 1e9:.2f} GB), "
            f"reading {count} rows at {args.image_size} px"
        )
        for way in ("pipeline", "plain"):
            completed = subprocess.run(
                [sys.executable, "-c", MEASURE, str(cache), str(count), str(args.image_size), way],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            seconds, peak, _ = completed.stdout.split(maxsplit=2)
            label = "load_split_pixels" if way == "pipeline" else "gather via memory map"
            print(f"{label:22s}: {seconds} s, peak RSS {peak} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
