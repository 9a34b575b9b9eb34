"""Benchmark the pipeline at scale: time and peak memory of each stage for a given image count.

    python benchmarks/scale.py --images 21165           # the COVID-19 Radiography DB's size
    python benchmarks/scale.py --images 21165 100000    # ... and ChestX-ray14's order

For each count, a temporary project gets phantoms at the class shares of the COVID-19
Radiography Database (covid 17.1%, normal 48.2%, viral_pneumonia 6.4%, lung_opacity 28.4%),
then runs the real stages one after another as DVC would (`python3 -m stages.<name>` in the
project, its own MLflow store): ingest, build, split, one training epoch, evaluate. Each stage's
peak memory is the largest sum of resident memory over the stage's process and every process
it started (build and ingest use one process per core), sampled every 0.1 s. Printed: one row
per stage with seconds and peak RSS in GB, and the ratio of each peak to the smallest count's.
Defaults are the issue's measuring recipe (mobilenetv2 at 64 px, 256-px phantoms and cache, no
undersampling); `--set key=value` changes any params.yaml key (dotted).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from quality import set_dotted

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "build", "split", "train", "evaluate")
# Class shares of the COVID-19 Radiography Database (21,165 images).
SHARES = {"covid": 3616, "normal": 10192, "viral_pneumonia": 1345, "lung_opacity": 6012}
RECIPE = {
    "model": "mobilenetv2",
    "data.synthetic.image_size": 256,
    "build.cache_size": 256,
    "train.image_size": 64,
    "train.epochs": 1,
    "train.fine_tune_epochs": 0,
    "train.batch_size": 64,
    "split.undersample": False,
}


def class_counts(images: int) -> dict[str, int]:
    """`images` split over the classes at the Radiography DB's shares (summing to `images`)."""
    total = sum(SHARES.values())
    counts = {name: images * share // total for name, share in SHARES.items()}
    counts["normal"] += images - sum(counts.values())
    return counts


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of `process` and all its descendants now (0 for those that ended)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_stage(stage: str, root: Path, env: dict[str, str]) -> tuple[float, int]:
    """Run `python3 -m stages.<stage>` in `root`; its seconds and peak tree RSS in bytes."""
    log = (root / f"{stage}.log").open("w")
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env, stdout=log, stderr=log
    )
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_rss(watched))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    log.close()
    if child.returncode != 0:
        tail = (root / f"{stage}.log").read_text()[-3000:]
        raise SystemExit(f"{stage} failed (exit {child.returncode}) in {root}:\n{tail}")
    return seconds, peak


def measure(images: int, overrides: dict[str, Any], keep: bool) -> dict[str, tuple[float, int]]:
    """Every stage's (seconds, peak RSS bytes) on a fresh project of `images` phantoms."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**RECIPE, **overrides}.items():
        set_dotted(params, key, value)
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"]["counts"] = class_counts(images)
    params["evaluate"]["external"] = {}
    root = Path(tempfile.mkdtemp(prefix=f"scale-{images}-"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    results = {}
    for stage in STAGES:
        results[stage] = run_stage(stage, root, env)
        seconds, peak = results[stage]
        print(f"  {images:,} images: {stage} {seconds:.0f} s, peak {peak / 1e9:.2f} GB", flush=True)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure each image count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[21165])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    arguments = parser.parse_args(argv)
    overrides = {}
    for item in arguments.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    measured = {images: measure(images, overrides, arguments.keep) for images in arguments.images}
    smallest = min(measured)
    print(f"\ncores: {os.cpu_count()}, recipe: {RECIPE | overrides}\n")
    print("| images | stage | seconds | peak RSS GB | peak vs smallest count |")
    print("|---|---|---:|---:|---:|")
    for images, results in measured.items():
        for stage, (seconds, peak) in results.items():
            ratio = peak / measured[smallest][stage][1]
            print(f"| {images:,} | {stage} | {seconds:.0f} | {peak / 1e9:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
