"""Stage evaluate: score the trained model on the test split, log the results to its MLflow run."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from stages.config import EvaluateParams, load_params
from stages.errors import PipelineError, report_errors
from stages.gradcam import NoFeatureMapError, draw_gradcam_grid, gradcam_heatmaps
from stages.images import load_split_pixels
from stages.outputs import read_json, save_figure, staged_dir, write_json, write_table
from stages.paths import ProjectPaths, paths_from_argv
from stages.predictors import Predictor, load_models_dir
from stages.serving import log_classifier
from stages.statistics import (
    INTERVAL_METRICS,
    bootstrap_intervals,
    calibration_bins,
    expected_calibration_error,
)
from stages.tables import label_indices, read_table
from stages.tracking import run_exists, use_experiment

SCREENING_CLASS = "covid"  # the class whose sensitivity is the screening figure


def one_vs_rest_auc(true: np.ndarray, probabilities: np.ndarray, class_count: int) -> float | None:
    """Macro one-vs-rest ROC AUC, or None when a class is absent from the test labels."""
    # AUC is undefined for a class with no positive example; None says so instead of a wrong number.
    if len(np.unique(true)) < class_count:
        return None
    if class_count == 2:
        return float(roc_auc_score(true, probabilities[:, 1]))
    return float(
        roc_auc_score(true, probabilities, multi_class="ovr", labels=list(range(class_count)))
    )


def macro_f1(true: np.ndarray, predicted: np.ndarray) -> float:
    """Macro F1 over the classes present in either array (scikit-learn)."""
    return float(f1_score(true, predicted, average="macro", zero_division=0))


def sensitivity_specificity(
    true: np.ndarray, predicted: np.ndarray, class_count: int
) -> list[tuple[float | None, float | None]]:
    """One-vs-rest (sensitivity, specificity) per class; None when a class has no positives."""
    matrices = multilabel_confusion_matrix(true, predicted, labels=list(range(class_count)))
    rates = []
    for (true_negative, false_positive), (false_negative, true_positive) in matrices:
        positives, negatives = true_positive + false_negative, true_negative + false_positive
        rates.append(
            (
                float(true_positive / positives) if positives else None,
                float(true_negative / negatives) if negatives else None,
            )
        )
    return rates


def score_predictions(
    true: np.ndarray, probabilities: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Accuracy, loss, F1, balanced accuracy, kappa, per-class rates and ROC AUC (scikit-learn)."""
    predicted = probabilities.argmax(axis=1)
    labels = list(range(len(names)))
    report = classification_report(
        true, predicted, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    rates = sensitivity_specificity(true, predicted, len(names))
    scores: dict[str, Any] = {
        "test_accuracy": float(accuracy_score(true, predicted)),
        "test_loss": float(log_loss(true, probabilities, labels=labels)),
        "test_f1_macro": macro_f1(true, predicted),
        "test_f1_weighted": float(f1_score(true, predicted, average="weighted", zero_division=0)),
        "test_balanced_accuracy": float(balanced_accuracy_score(true, predicted)),
        "test_cohen_kappa": float(cohen_kappa_score(true, predicted, labels=labels)),
        "test_roc_auc_ovr": one_vs_rest_auc(true, probabilities, len(names)),
        "test_images": len(true),
        "per_class": {
            name: {
                **{
                    key: float(report[name][key])
                    for key in ("precision", "recall", "f1-score", "support")
                },
                "sensitivity": rates[position][0],
                "specificity": rates[position][1],
            }
            for position, name in enumerate(names)
        },
    }
    if SCREENING_CLASS in names:
        scores["test_covid_sensitivity"] = rates[names.index(SCREENING_CLASS)][0]
    return scores


def confidence_intervals(
    true: np.ndarray, probabilities: np.ndarray, samples: int, seed: int
) -> dict[str, list[float | None]]:
    """Bootstrap 95% intervals of accuracy, macro F1 and AUC over the test images (None: off)."""
    if samples == 0:
        return {name: [None, None] for name in INTERVAL_METRICS}
    predicted = probabilities.argmax(axis=1)
    class_count = probabilities.shape[1]

    def statistic(indices: np.ndarray) -> np.ndarray:
        auc = one_vs_rest_auc(true[indices], probabilities[indices], class_count)
        return np.array(
            [
                accuracy_score(true[indices], predicted[indices]),
                macro_f1(true[indices], predicted[indices]),
                np.nan if auc is None else auc,
            ]
        )

    lows, highs = bootstrap_intervals(statistic, len(true), samples, seed)
    return {
        name: [None if np.isnan(low) else float(low), None if np.isnan(high) else float(high)]
        for name, low, high in zip(INTERVAL_METRICS, lows, highs, strict=True)
    }


def curve_tables(
    true: np.ndarray, probabilities: np.ndarray, names: list[str]
) -> dict[str, dict[str, pd.DataFrame]]:
    """One-vs-rest ROC and precision-recall points per class present in the test labels."""
    tables: dict[str, dict[str, pd.DataFrame]] = {"roc": {}, "pr": {}}
    for position, name in enumerate(names):
        positive = true == position
        if not positive.any() or positive.all():
            continue
        scores = probabilities[:, position]
        fpr, tpr, roc_thresholds = roc_curve(positive, scores)
        precision, recall, pr_thresholds = precision_recall_curve(positive, scores)
        # roc_curve starts at threshold +inf ("call nothing positive"); 1.0 is the same point
        # for probabilities and keeps the CSV numeric for DVC.
        tables["roc"][name] = pd.DataFrame(
            {"fpr": fpr, "tpr": tpr, "threshold": np.minimum(roc_thresholds, 1.0)}
        ).round(5)
        tables["pr"][name] = pd.DataFrame(
            {"recall": recall, "precision": precision, "threshold": [*pr_thresholds, 1.0]}
        ).round(5)
    return tables


def draw_confusion(
    true: np.ndarray, predicted: np.ndarray, names: list[str], path: Path
) -> np.ndarray:
    """Save the confusion matrix as a PNG; return it."""
    matrix = confusion_matrix(true, predicted, labels=list(range(len(names))))
    figure, axis = plt.subplots(figsize=(1.6 * len(names) + 2, 1.4 * len(names) + 2))
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=axis, cmap="Blues", colorbar=False)
    axis.set_title("Test confusion matrix")
    save_figure(figure, path)
    return matrix


def draw_curves(
    true: np.ndarray, probabilities: np.ndarray, names: list[str], reports_dir: Path
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
        axis.set_title(f"Test {title}")
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


def draw_misclassified(
    predictions: pd.DataFrame, pixels: np.ndarray, limit: int, path: Path
) -> int:
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
    predictor: Predictor,
    images: np.ndarray,
    true: np.ndarray,
    probabilities: np.ndarray,
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
    names = predictor.class_names
    predicted = probabilities.argmax(axis=1)
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
            heatmaps = gradcam_heatmaps(predictor.model, images[chosen], predicted[chosen])
        except NoFeatureMapError as reason:
            return f"unavailable: {reason}"
        titles = [
            f"{'ok' if predicted[i] == position else 'WRONG'}: pred {names[predicted[i]]} "
            f"({probabilities[i, predicted[i]]:.2f})"
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


def per_source_scores(
    test: pd.DataFrame, true: np.ndarray, predicted: np.ndarray, names: list[str]
) -> pd.DataFrame | None:
    """Images, accuracy, macro F1 and balanced accuracy per source, when there are several."""
    if "source" not in test or test["source"].nunique() < 2:
        return None
    rows = []
    for source, indices in test.reset_index(drop=True).groupby("source").indices.items():
        with warnings.catch_warnings():
            # A source may lack a class; sklearn warns about it, the image counts show it anyway.
            warnings.simplefilter("ignore", UserWarning)
            balanced = balanced_accuracy_score(true[indices], predicted[indices])
        row: dict[str, Any] = {
            "source": source or "(none)",
            "images": len(indices),
            "accuracy": accuracy_score(true[indices], predicted[indices]),
            "f1_macro": macro_f1(true[indices], predicted[indices]),
            "balanced_accuracy": balanced,
        }
        if SCREENING_CLASS in names:
            rates = sensitivity_specificity(true[indices], predicted[indices], len(names))
            row["covid_sensitivity"] = rates[names.index(SCREENING_CLASS)][0]
        rows.append(row)
    return pd.DataFrame(rows).round(4).astype(object)


def evaluate_model(
    evaluate: EvaluateParams,
    seed: int,
    max_pixels: int,
    experiment: str,
    paths: ProjectPaths,
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """Predict the test split, write metrics, plots and figures, and log them to the train run."""
    predictor = load_models_dir(paths.models_dir)
    record = read_json(paths.run_record)
    names = list(predictor.class_names)
    test = read_table(paths.split_table("test"))
    unknown = sorted(set(test["label"]) - set(names))
    if unknown:
        raise PipelineError(
            f"test labels {unknown} unknown to the model (classes {names}); re-run train"
        )
    true = label_indices(test["label"], names)
    images = load_split_pixels(paths.pixel_cache, test["cache_index"], predictor.image_size)
    probabilities, images_per_second = predictor.timed_predict_proba(images, evaluate.batch_size)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = predicted == true
    metrics = score_predictions(true, probabilities, names)
    metrics["confidence_intervals"] = confidence_intervals(
        true, probabilities, evaluate.bootstrap_samples, seed
    )
    for name, (low, high) in metrics["confidence_intervals"].items():
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    metrics["test_ece"] = expected_calibration_error(confidence, correct, evaluate.calibration_bins)
    metrics["inference_images_per_second"] = round(images_per_second, 1)
    predictions = pd.DataFrame(
        {
            "path": test["path"].to_numpy(),
            "sha256": test["sha256"].to_numpy() if "sha256" in test else "",
            "source": test["source"].to_numpy() if "source" in test else "",
            "actual": [names[i] for i in true],
            "predicted": [names[i] for i in predicted],
            "correct": correct,
            "confidence": confidence.round(4),
            **{f"p_{name}": probabilities[:, i].round(4) for i, name in enumerate(names)},
        }
    )
    by_source = per_source_scores(test, true, predicted, names)
    if by_source is not None:
        metrics["per_source"] = {
            source: {key: None if pd.isna(value) else value for key, value in scores.items()}
            for source, scores in by_source.set_index("source").to_dict(orient="index").items()
        }
    plots_dir = paths.evaluate_plots
    with staged_dir(plots_dir) as plots_staging, staged_dir(paths.reports("evaluate")) as figures:
        for kind, tables in curve_tables(true, probabilities, names).items():
            (plots_staging / kind).mkdir()
            for name, table in tables.items():
                write_table(plots_staging / kind / f"{name}.csv", table)
        reliability = calibration_bins(confidence, correct, evaluate.calibration_bins)
        write_table(plots_staging / "calibration.csv", reliability.round(5))
        draw_confusion(true, predicted, names, figures / "confusion_matrix.png")
        draw_curves(true, probabilities, names, figures)
        draw_reliability(
            correct,
            confidence,
            evaluate.calibration_bins,
            metrics["test_ece"],
            figures / "reliability.png",
        )
        metrics["misclassified_shown"] = draw_misclassified(
            predictions, images, evaluate.misclassified_grid, figures / "misclassified.png"
        )
        metrics["gradcam"] = draw_gradcam(
            predictor,
            images,
            true,
            probabilities,
            evaluate.gradcam_images,
            seed,
            figures / "gradcam",
        )
        if by_source is not None:
            write_table(figures / "per_source.csv", by_source)
        experiment_id = use_experiment(experiment, paths.root, environ)
        run_id, model_uri = log_to_run(
            record,
            experiment_id,
            metrics,
            (figures, plots_staging),
            predictions,
            paths.models_dir,
            (images[0] if len(images) else np.zeros((8, 8), np.uint8), max_pixels),
        )
    metrics["mlflow_run_id"], metrics["model_uri"] = run_id, model_uri
    write_table(paths.predictions, predictions)
    write_json(paths.metrics("evaluate"), metrics)
    return metrics


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics as MLflow names: test_*, per class and per source."""
    flat = {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    for name, scores in metrics["per_class"].items():
        for key, value in scores.items():
            if key != "support" and value is not None:
                flat[f"test_{key.replace('-score', '')}_{name}"] = float(value)
    for source, scores in metrics.get("per_source", {}).items():
        for key, value in scores.items():
            if value is not None and not pd.isna(value):
                flat[f"source_{source}_{key}"] = float(value)
    return {key: value for key, value in flat.items() if np.isfinite(value)}


def log_to_run(
    record: dict[str, Any],
    experiment_id: str,
    metrics: dict[str, Any],
    artifacts: tuple[Path, Path],
    predictions: pd.DataFrame,
    models_dir: Path,
    example: tuple[np.ndarray, int],
) -> tuple[str, str]:
    """Log results and the servable model to the train run (or a linked new run); ids back."""
    run_id = record["run_id"]
    continued = run_exists(run_id)
    if not continued:
        print(f"evaluate: MLflow run {run_id} is not in this store; logging to a new linked run")
    tags = {
        "backbone": record["backbone"],
        "data_fingerprint": record["data_fingerprint"],
        "trained_in_run": run_id,
    }
    start = (
        mlflow.start_run(run_id=run_id)
        if continued
        else mlflow.start_run(experiment_id=experiment_id, tags=tags)
    )
    with start as run:
        mlflow.log_metrics(flat_metrics(metrics))
        figures_dir, plots_dir = artifacts
        mlflow.log_artifacts(str(figures_dir), artifact_path="evaluate")
        mlflow.log_artifacts(str(plots_dir), artifact_path="evaluate/plots")
        mlflow.log_table(predictions, artifact_file="evaluate/test_predictions.json")
        model_uri = log_classifier(models_dir, record, *example)
        return run.info.run_id, model_uri


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluate stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    metrics = evaluate_model(
        params.evaluate,
        params.seed,
        params.build.max_pixels,
        params.mlflow_experiment,
        paths,
        dict(os.environ),
    )
    low, high = metrics["confidence_intervals"]["test_accuracy"]
    interval = f" (95% CI {low:.3f}-{high:.3f})" if low is not None and high is not None else ""
    print(
        f"evaluate: test accuracy {metrics['test_accuracy']:.3f}{interval}, "
        f"macro F1 {metrics['test_f1_macro']:.3f} on {metrics['test_images']} images; "
        f"Grad-CAM {metrics['gradcam']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
