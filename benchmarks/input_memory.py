"""Benchmark the training input: peak memory and images/second, held in memory versus streamed.

    python benchmarks/input_memory.py --images 5000 20000 --image-size 224

For each image count, a pixel cache of that many rows (build.cache_size 256, random pixels) and
its split tables are written to a temporary project; then, in a fresh process each (peak RSS
is per process), the train stage's input is loaded as train loads it
(cxr.training.inputs.load_training_data) and one shuffled epoch of batches is drawn through
array_dataset, as fit would draw it, with CXR_MEMORY_CACHE_MB large (in memory) and 0
(streamed). Printed: load time, epoch time, images/s and the process's peak RSS. No model is
involved: this is the part of train's memory that grows with the number of images.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CACHE_SIZE = 256
CLASSES = ("covid", "normal", "viral_pneumonia")


def write_project(root: Path, images: int) -> None:
    """A pixel cache of `images` random rows and train/val/test tables over them (80/10/10)."""
    import numpy as np
    import pandas as pd

    from cxr.core.paths import ProjectPaths

    paths = ProjectPaths(root)
    paths.pixel_cache.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cache = np.lib.format.open_memmap(
        paths.pixel_cache, mode="w+", dtype=np.uint8, shape=(images, CACHE_SIZE, CACHE_SIZE)
    )
    for start in range(0, images, 1000):
        stop = min(start + 1000, images)
        cache[start:stop] = rng.integers(0, 256, (stop - start, CACHE_SIZE, CACHE_SIZE), np.uint8)
    cache.flush()
    del cache
    table = pd.DataFrame(
        {
            "path": [f"{index}.png" for index in range(images)],
            "label": [CLASSES[index % 3] for index in range(images)],
            "sha256": [f"{index:064x}" for index in range(images)],
            "group": "",
            "source": "",
            "cache_index": range(images),
        }
    )
    split = np.where(
        np.arange(images) % 10 < 8, "train", np.where(np.arange(images) % 10 < 9, "val", "test")
    )
    paths.split_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        table[split == name].to_parquet(paths.split_table(name), index=False)


def peak_rss_bytes() -> int:
    """Peak resident memory of the current process: VmHWM, which starts afresh at exec.

    Not getrusage's ru_maxrss: Linux carries that over from the parent across fork and exec,
    and the parent touched the whole cache while writing it.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux


def measure(root: str, image_size: int, memory_cache_mb: float, batch_size: int) -> None:
    """In this (fresh) process: load, draw one epoch, print a JSON line with the figures."""
    from cxr.core.paths import ProjectPaths
    from cxr.training.inputs import array_dataset, load_training_data

    started = time.perf_counter()
    data = load_training_data(ProjectPaths(Path(root)), image_size, memory_cache_mb)
    loaded = time.perf_counter()
    count = 0
    for images, _ in array_dataset(data.train_images, data.train_labels.tolist(), batch_size, 1):
        count += int(images.shape[0])
    drawn = time.perf_counter()
    peak_gb = peak_rss_bytes() / 1024**3
    print(
        json.dumps(
            {
                "load_s": loaded - started,
                "epoch_s": drawn - loaded,
                "images": count,
                "images_per_s": count / (drawn - loaded),
                "peak_gb": peak_gb,
            }
        )
    )


def main() -> None:
    """Print one row per image count and input mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--measure", nargs=2, metavar=("ROOT", "LIMIT_MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.image_size, float(args.measure[1]), args.batch_size)
        return
    print(f"| images | input | load s | epoch s | images/s | peak RSS GB |  ({args.image_size} px)")
    print("|---|---|---|---|---|---|")
    for images in args.images:
        with tempfile.TemporaryDirectory(prefix="cxr-input-") as root:
            write_project(Path(root), images)
            for mode, limit in (("in memory", 1e9), ("streamed", 0)):
                size, batch = str(args.image_size), str(args.batch_size)
                command = [sys.executable, __file__, "--image-size", size, "--batch-size", batch,
                           "--measure", root, str(limit)]  # fmt: skip
                output = subprocess.run(command, capture_output=True, text=True, check=True)
                figures = json.loads(output.stdout.strip().splitlines()[-1])
                print(
                    f"| {images:,} | {mode} | {figures['load_s']:.1f} | {figures['epoch_s']:.1f} | "
                    f"{figures['images_per_s']:,.0f} | {figures['peak_gb']:.2f} |"
                )


if __name__ == "__main__":
    main()
