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


# DICOM columns drawn per class when any image has them: (column, what it is, figure file). A
# model can learn the view or the scanner instead of the finding (portable AP films come from
# sicker patients: DeGrave et al. 2021), so their balance across classes is worth a look.
HEADER_FIGURES = (
    ("view_position", "view position", "view_positions.png"),
    ("manufacturer", "manufacturer", "manufacturers.png"),
)
# Values drawn per figure; the rarer ones are summed as "other".
MOST_COMMON_VALUES = 12


def header_counts(images: pd.DataFrame, column: str) -> pd.DataFrame:
    """Images per value of a DICOM column (rows, most common first) and class (columns).

    Empty when no image has a value; a blank value reads "(none)", the rarest ones "other".
    """
    if column not in images or not images[column].astype(str).str.strip().any():
        return pd.DataFrame()
    values = images[column].astype(str).str.strip().replace("", "(none)")
    common = values.value_counts().index[:MOST_COMMON_VALUES]
    values = values.where(values.isin(common), "other")
    counts = pd.crosstab(values, images["label"])
    order = counts.sum(axis=1).sort_values(ascending=False, kind="stable").index
    return counts.loc[order]


def _draw_header_counts(images: pd.DataFrame, figures_dir: Path) -> None:
    """A grouped bar chart of images per view position and per manufacturer, by class."""
    for column, what, name in HEADER_FIGURES:
        counts = header_counts(images, column)
        if counts.empty:
            continue
        figure, axis = plt.subplots(figsize=(7, 1.5 + 0.45 * len(counts)))
        counts.iloc[::-1].plot.barh(ax=axis, width=0.8)  # most common on top
        axis.set(title=f"Images per {what} and class", xlabel="images", ylabel=what)
        axis.legend(title="class")
        save_figure(figure, figures_dir / name)


def draw_exploration(
    images: pd.DataFrame, histograms: dict[str, np.ndarray], figures_dir: Path
) -> None:
    """Images per class (bar), width x height (scatter) and intensity histograms per class.

    DICOM images add images per view position and per manufacturer, by class.
    """
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
    _draw_header_counts(images, figures_dir)


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
