"""Stage build: scan data/raw into one table of images and draw the exploration plots."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from stages.config import BuildParams, load_params
from stages.errors import PipelineError, report_errors
from stages.outputs import save_figure, staged_dir, write_json, write_table
from stages.paths import ProjectPaths, paths_from_argv
from stages.tables import IMAGE_COLUMNS


def describe_image(raw_dir: Path, file: Path) -> dict[str, object]:
    """One table row: relative path, label (its folder), size, mode, format, bytes and sha256."""
    content = file.read_bytes()
    try:
        with Image.open(file) as image:
            width, height = image.size
            mode, image_format = image.mode, image.format
    except (OSError, Image.DecompressionBombError) as error:
        raise PipelineError(f"{file}: not a readable image ({error})") from None
    return {
        "path": file.relative_to(raw_dir).as_posix(),
        "label": file.parent.name,
        "width": width,
        "height": height,
        "mode": mode,
        "format": image_format,
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def scan_images(raw_dir: Path) -> pd.DataFrame:
    """Describe every file in raw_dir/<class>/, in parallel, sorted by path."""
    files = sorted(path for path in raw_dir.glob("*/*") if path.is_file())
    if not files:
        raise PipelineError(f"{raw_dir}: no images in class folders; run the ingest stage first")
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        rows = list(pool.map(lambda file: describe_image(raw_dir, file), files))
    return pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))


def intensity_histograms(
    images: pd.DataFrame, raw_dir: Path, per_class: int, bins: int, seed: int
) -> dict[str, np.ndarray]:
    """Mean normalised gray-level histogram per class over a seeded sample of its images."""
    histograms: dict[str, np.ndarray] = {}
    for label, group in images.groupby("label"):
        sample = group.sample(min(per_class, len(group)), random_state=seed)
        counts = np.zeros(bins)
        for relative in sample["path"]:
            with Image.open(raw_dir / relative) as image:
                pixels = np.asarray(image.convert("L"))
            counts += np.histogram(pixels, bins=bins, range=(0, 255), density=True)[0]
        histograms[str(label)] = counts / len(sample)
    return histograms


def draw_exploration(
    images: pd.DataFrame, histograms: dict[str, np.ndarray], figures_dir: Path
) -> None:
    """Images per class (bar), width x height (scatter) and intensity histograms per class."""
    counts = images["label"].value_counts().sort_index()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.bar(counts.index, counts.to_numpy(), color="tab:blue")
    axis.set(title="Images per class", xlabel="class", ylabel="images")
    save_figure(figure, figures_dir / "class_counts.png")

    figure, axis = plt.subplots(figsize=(6, 5))
    for label, group in images.groupby("label"):
        axis.scatter(group["width"], group["height"], s=10, alpha=0.6, label=str(label))
    axis.set(title="Image size", xlabel="width (px)", ylabel="height (px)")
    axis.legend()
    save_figure(figure, figures_dir / "image_sizes.png")

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, histogram in histograms.items():
        edges = np.linspace(0, 255, len(histogram) + 1)
        axis.plot((edges[:-1] + edges[1:]) / 2, histogram, label=label)
    axis.set(title="Pixel intensity per class", xlabel="gray level", ylabel="density")
    axis.legend()
    save_figure(figure, figures_dir / "intensity_histograms.png")


def build(build_params: BuildParams, seed: int, paths: ProjectPaths) -> pd.DataFrame:
    """Write the images table, its metrics and the exploration figures."""
    images = scan_images(paths.raw_dir)
    histograms = intensity_histograms(
        images,
        paths.raw_dir,
        build_params.histogram_images_per_class,
        build_params.histogram_bins,
        seed,
    )
    with staged_dir(paths.reports("build")) as figures_dir:
        draw_exploration(images, histograms, figures_dir)
    write_table(paths.images_table, images)
    write_json(
        paths.metrics("build"),
        {
            "images": len(images),
            "classes": {str(k): int(v) for k, v in images["label"].value_counts().items()},
            "distinct_contents": int(images["sha256"].nunique()),
        },
    )
    return images


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the build stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    images = build(params.build, params.seed, paths)
    print(
        f"build: {len(images)} images, {images['label'].nunique()} classes -> {paths.images_table}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
