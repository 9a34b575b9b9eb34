"""What evaluate draws: confusion, ROC / PR, reliability, errors, Grad-CAM, and DVC plots data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    confusion_matrix,
)

from cxr.core.outputs import save_figure, write_table
from cxr.core.params import EvaluateParams
from cxr.evaluation.gradcam import NoFeatureMapError, draw_gradcam_grid, gradcam_heatmaps
from cxr.evaluation.metrics import Predictions, curve_tables
from cxr.evaluation.statistics import calibration_bins, expected_calibration_error

if TYPE_CHECKING:
    from cxr.models.pixels import ImageRows


def draw_confusion(
    true: np.ndarray, predicted: np.ndarray, names: list[str], path: Path, images: str = "Test"
) -> np.ndarray:
    """Save the confusion matrix as a PNG, titled after the `images` scored; return it."""
    matrix = confusion_matrix(true, predicted, labels=list(range(len(names))))
    figure, axis = plt.subplots(figsize=(1.6 * len(names) + 2, 1.4 * len(names) + 2))
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=axis, cmap="Blues", colorbar=False)
    axis.set_title(f"{images} confusion matrix")
    save_figure(figure, path)
    return np.asarray(matrix)


def draw_curves(
    true: np.ndarray,
    probabilities: np.ndarray,
    names: list[str],
    reports_dir: Path,
    images: str = "Test",
) -> None:
    """ROC and precision-recall curves, one line per class (one vs rest), as two PNGs."""
    for kind, display, title in (
        ("roc", RocCurveDisplay, "ROC, one vs rest"),
        ("pr", PrecisionRecallDisplay, "Precision-recall, one vs rest"),
    ):
        figure, axis = plt.subplots(figsize=(5.5, 5))
        for position, name in enumerate(names):
            positive = true == position
            if positive.any() and not positive.all():
                display.from_predictions(
                    positive,
                    probabilities[:, position],
                    name=name,
                    ax=axis,
                    plot_chance_level=False,
                )
        axis.set_title(f"{images} {title}")
        save_figure(figure, reports_dir / f"{kind}_curves.png")


def draw_reliability(
    correct: np.ndarray, confidence: np.ndarray, bins: int, ece: float, path: Path
) -> None:
    """Reliability diagram of the top-class confidence, with the image count per bin."""
    figure, (curve, counts) = plt.subplots(
        2, 1, figsize=(5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    CalibrationDisplay.from_predictions(
        correct.astype(int), confidence, n_bins=bins, ax=curve, name="model"
    )
    curve.set(title=f"Reliability (ECE {ece:.3f})", ylabel="accuracy in bin", xlabel="")
    counts.hist(confidence, bins=np.linspace(0, 1, bins + 1), color="tab:gray", edgecolor="white")
    counts.set(xlabel="confidence of the predicted class", ylabel="images")
    save_figure(figure, path)


def draw_misclassified(predictions: pd.DataFrame, pixels: ImageRows, limit: int, path: Path) -> int:
    """Save a grid of misclassified test images titled true -> predicted; return how many."""
    wrong = predictions.reset_index(drop=True)
    wrong = wrong[wrong["actual"] != wrong["predicted"]]
    wrong = wrong.sort_values("confidence", ascending=False).head(limit)
    columns = max(1, min(4, len(wrong)))
    rows = max(1, -(-len(wrong) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (row, item) in zip(axes.ravel(), wrong.iterrows(), strict=False):
        axis.imshow(pixels[row].reshape(pixels.shape[1:3]), cmap="gray", vmin=0, vmax=255)
        axis.set_title(
            f"true {item['actual']}\npred {item['predicted']} ({item['confidence']:.2f})",
            fontsize=8,
        )
    if wrong.empty:
        axes[0, 0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    save_figure(figure, path)
    return len(wrong)


def draw_gradcam(
    model: Any,
    images: ImageRows,
    predictions: Predictions,
    per_kind: int,
    seed: int,
    out_dir: Path,
) -> str:
    """Grad-CAM grids per true class: up to `per_kind` correct and `per_kind` wrong images.

    Returns what was done, or why nothing was (a model without a convolutional feature map).
    """
    if per_kind == 0:
        return "disabled (evaluate.gradcam_images = 0)"
    out_dir.mkdir(parents=True, exist_ok=True)
    names, true, predicted = predictions.class_names, predictions.true, predictions.predicted
    rng = np.random.default_rng(seed)
    drawn = 0
    for position, name in enumerate(names):
        chosen: list[int] = []
        for correct in (True, False):
            pool = np.flatnonzero((true == position) & ((predicted == position) == correct))
            chosen.extend(rng.permutation(pool)[:per_kind].tolist())
        if not chosen:
            continue
        try:
            heatmaps = gradcam_heatmaps(model, images[chosen], predicted[chosen])
        except NoFeatureMapError as reason:
            return f"unavailable: {reason}"
        titles = [
            f"{'ok' if predicted[i] == position else 'WRONG'}: pred {names[predicted[i]]} "
            f"({predictions.probabilities[i, predicted[i]]:.2f})"
            for i in chosen
        ]
        draw_gradcam_grid(
            images[chosen],
            heatmaps,
            titles,
            f"Grad-CAM, true class {name} (heat = evidence for the predicted class)",
            out_dir / f"{name}.png",
        )
        drawn += len(chosen)
    return f"{drawn} images"


def draw_evaluation_figures(
    figures_dir: Path,
    model: Any,
    images: ImageRows,
    predictions: Predictions,
    per_image: pd.DataFrame,
    settings: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """Draw every evaluate figure into `figures_dir`; return misclassified_shown and gradcam."""
    names = list(predictions.class_names)
    true, predicted = predictions.true, predictions.predicted
    correct, confidence = predictions.correct, predictions.confidence
    bins = settings.calibration_bins
    draw_confusion(true, predicted, names, figures_dir / "confusion_matrix.png")
    draw_curves(true, predictions.probabilities, names, figures_dir)
    # The same figure as metrics' test_ece: same function, same inputs.
    ece = expected_calibration_error(confidence, correct, bins)
    draw_reliability(correct, confidence, bins, ece, figures_dir / "reliability.png")
    return {
        "misclassified_shown": draw_misclassified(
            per_image, images, settings.misclassified_grid, figures_dir / "misclassified.png"
        ),
        "gradcam": draw_gradcam(
            model, images, predictions, settings.gradcam_images, seed, figures_dir / "gradcam"
        ),
    }


def write_plots_data(plots_dir: Path, predictions: Predictions, bins: int) -> None:
    """ROC and PR points per class (roc/, pr/) and the reliability table, as CSVs for DVC plots."""
    curves = curve_tables(predictions.true, predictions.probabilities, predictions.class_names)
    for kind, tables in curves.items():
        (plots_dir / kind).mkdir()
        for name, table in tables.items():
            write_table(plots_dir / kind / f"{name}.csv", table)
    reliability = calibration_bins(predictions.confidence, predictions.correct, bins)
    write_table(plots_dir / "calibration.csv", reliability.round(5))
