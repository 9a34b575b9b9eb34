"""Stage evaluate: score the trained model on the test split, log the results to its MLflow run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

import stages.classifier  # noqa: F401  registers the custom layer the saved model uses
from stages.config import EvaluateParams, load_params
from stages.errors import PipelineError, report_errors
from stages.images import image_dataset
from stages.outputs import read_json, save_figure, staged_dir, write_json, write_table
from stages.paths import ProjectPaths, paths_from_argv
from stages.tables import read_table
from stages.tracking import run_exists, use_experiment


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


def score_predictions(
    true: np.ndarray, probabilities: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Accuracy, loss, F1, per-class precision/recall/F1, one-vs-rest ROC AUC (scikit-learn)."""
    predicted = probabilities.argmax(axis=1)
    labels = list(range(len(names)))
    report = classification_report(
        true, predicted, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    roc_auc = one_vs_rest_auc(true, probabilities, len(names))
    return {
        "test_accuracy": float(accuracy_score(true, predicted)),
        "test_loss": float(log_loss(true, probabilities, labels=labels)),
        "test_f1_macro": float(f1_score(true, predicted, average="macro", zero_division=0)),
        "test_f1_weighted": float(f1_score(true, predicted, average="weighted", zero_division=0)),
        "test_roc_auc_ovr": roc_auc,
        "test_images": len(true),
        "per_class": {
            name: {
                key: float(report[name][key])
                for key in ("precision", "recall", "f1-score", "support")
            }
            for name in names
        },
    }


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


def draw_misclassified(predictions: pd.DataFrame, raw_dir: Path, limit: int, path: Path) -> int:
    """Save a grid of misclassified test images titled true -> predicted; return how many."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    wrong = wrong.sort_values("confidence", ascending=False).head(limit)
    columns = max(1, min(4, len(wrong)))
    rows = max(1, -(-len(wrong) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, row in zip(axes.ravel(), wrong.itertuples(index=False), strict=False):
        with Image.open(raw_dir / row.path) as image:
            axis.imshow(image.convert("L"), cmap="gray")
        axis.set_title(
            f"true {row.actual}\npred {row.predicted} ({row.confidence:.2f})", fontsize=8
        )
    if wrong.empty:
        axes[0, 0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    save_figure(figure, path)
    return len(wrong)


def evaluate_model(
    evaluate: EvaluateParams, experiment: str, paths: ProjectPaths, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Predict the test split, write metrics, plots and figures, and log them to the train run."""
    record = read_json(paths.run_record)
    names: list[str] = record["class_names"]
    if not paths.model_file.exists():
        raise PipelineError(f"{paths.model_file}: missing; run the train stage first")
    model = keras.models.load_model(paths.model_file)
    test = read_table(paths.split_table("test"))
    unknown = sorted(set(test["label"]) - set(names))
    if unknown:
        raise PipelineError(
            f"test labels {unknown} unknown to the model (classes {names}); re-run train"
        )
    index = {name: position for position, name in enumerate(names)}
    true = test["label"].map(index).to_numpy()
    dataset = image_dataset(
        [paths.raw_dir / path for path in test["path"]],
        true.tolist(),
        record["image_size"],
        evaluate.batch_size,
        shuffle_seed=None,
    )
    probabilities = model.predict(dataset.map(lambda image, label: image), verbose=0)
    predicted = probabilities.argmax(axis=1)
    metrics = score_predictions(true, probabilities, names)
    predictions = pd.DataFrame(
        {
            "path": test["path"],
            "actual": [names[i] for i in true],
            "predicted": [names[i] for i in predicted],
            "confidence": probabilities.max(axis=1).round(4),
            **{f"p_{name}": probabilities[:, i].round(4) for i, name in enumerate(names)},
        }
    )
    with staged_dir(paths.reports("evaluate")) as figures_dir:
        draw_confusion(true, predicted, names, figures_dir / "confusion_matrix.png")
        metrics["misclassified_shown"] = draw_misclassified(
            predictions,
            paths.raw_dir,
            evaluate.misclassified_grid,
            figures_dir / "misclassified.png",
        )
        figures = sorted(figures_dir.iterdir())
        experiment_id = use_experiment(experiment, paths.root, environ)
        log_to_run(record, experiment_id, metrics, figures, predictions)
    write_table(paths.predictions, predictions)
    write_json(paths.metrics("evaluate"), metrics)
    return metrics


def log_to_run(
    record: dict[str, Any],
    experiment_id: str,
    metrics: dict[str, Any],
    figures: list[Path],
    predictions: pd.DataFrame,
) -> None:
    """Log the results to the train run (or a linked new run if this store lacks it)."""
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
    with start:
        flat = {key: value for key, value in metrics.items() if isinstance(value, int | float)}
        for name, scores in metrics["per_class"].items():
            flat.update(
                {
                    f"test_{key.replace('-score', '')}_{name}": value
                    for key, value in scores.items()
                    if key != "support"
                }
            )
        mlflow.log_metrics({key: float(value) for key, value in flat.items() if value is not None})
        for figure in figures:
            mlflow.log_artifact(str(figure), artifact_path="evaluate")
        mlflow.log_table(predictions, artifact_file="evaluate/test_predictions.json")


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluate stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    metrics = evaluate_model(params.evaluate, params.mlflow_experiment, paths, dict(os.environ))
    print(
        f"evaluate: test accuracy {metrics['test_accuracy']:.3f}, "
        f"macro F1 {metrics['test_f1_macro']:.3f} on {metrics['test_images']} images"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
