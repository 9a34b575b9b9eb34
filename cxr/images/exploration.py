"""What the build found: intensity histograms, exploration figures and the build metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxr.core.outputs import save_figure
from cxr.core.tables import label_counts


def intensity_histograms(
    images: pd.DataFrame, pixels: np.ndarray, per_class: int, bins: int, seed: int
) -> dict[str, np.ndarray]:
    """Mean normalised gray-level histogram per class over a seeded sample of cached images."""
    histograms: dict[str, np.ndarray] = {}
    for label, group in images.groupby("label"):
        sample = group.sample(min(per_class, len(group)), random_state=seed)
        counts = np.zeros(bins)
        for index in sample["cache_index"]:
            counts += np.histogram(pixels[index], bins=bins, range=(0, 255), density=True)[0]
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
    axis.set(
        title="Pixel intensity per class (cached images)", xlabel="gray level", ylabel="density"
    )
    axis.legend()
    save_figure(figure, figures_dir / "intensity_histograms.png")


def build_metrics(images: pd.DataFrame, rejected: pd.DataFrame) -> dict[str, object]:
    """Image and class counts, distinct contents and rejected files per reason."""
    reasons = Counter(reason.split(":", 1)[0] for reason in rejected["reason"])
    return {
        "images": len(images),
        "classes": label_counts(images["label"]),
        "distinct_contents": int(images["sha256"].nunique()),
        "rejected": len(rejected),
        "rejected_reasons": dict(sorted(reasons.items())),
    }
