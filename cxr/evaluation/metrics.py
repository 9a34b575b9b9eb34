"""Test-set scores: scikit-learn metrics, bootstrap intervals, curves, per-source scores.

Pure computation on arrays and tables; the evaluate stage writes what these return.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from imblearn.metrics import sensitivity_specificity_support
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    cohen_kappa_score,
    f1_score,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr.core.errors import PipelineError
from cxr.core.tables import label_indices
from cxr.evaluation.statistics import (
    INTERVAL_METRICS,
    bootstrap_intervals,
    expected_calibration_error,
    named_intervals,
)

SCREENING_CLASS = "covid"  # the class whose sensitivity is the screening figure
ARGMAX = "argmax"  # evaluate.decision's default: each image's most probable class


@dataclass(frozen=True)
class Predictions:
    """The test images' true class indices and the model's class probabilities for them."""

    true: np.ndarray  # (N,) positions in class_names
    probabilities: np.ndarray  # (N, classes)
    class_names: tuple[str, ...]

    @property
    def predicted(self) -> np.ndarray:
        """The predicted class index of each image."""
        return np.asarray(self.probabilities.argmax(axis=1))

    @property
    def confidence(self) -> np.ndarray:
        """The probability of each image's predicted class."""
        return np.asarray(self.probabilities.max(axis=1))

    @property
    def correct(self) -> np.ndarray:
        """Whether each image was classified right."""
        return np.asarray(self.predicted == self.true)


def known_label_indices(test: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """The class index of each test label; fails when the model does not know a label."""
    unknown = sorted(set(test["label"]) - set(names))
    if unknown:
        raise PipelineError(
            f"test labels {unknown} unknown to the model (classes {list(names)}); re-run train"
        )
    return label_indices(test["label"], names)


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
    """One-vs-rest (sensitivity, specificity) per class (imbalanced-learn); None when undefined.

    Sensitivity is None for a class with no positive image, specificity for one with no
    negative image; imbalanced-learn would report 0.0 there.
    """
    # warn_for=() silences the ill-defined warnings of exactly those classes, set to None below.
    sensitivity, specificity, positives = sensitivity_specificity_support(
        true, predicted, labels=list(range(class_count)), average=None, warn_for=()
    )
    negatives = len(true) - positives
    return [
        (
            float(sensitivity[position]) if positives[position] else None,
            float(specificity[position]) if negatives[position] else None,
        )
        for position in range(class_count)
    ]


def score_predictions(
    true: np.ndarray, probabilities: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, loss, F1, balanced accuracy, kappa, per-class rates and ROC AUC (scikit-learn)."""
    names = list(names)
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
    true: np.ndarray,
    probabilities: np.ndarray,
    samples: int,
    seed: int,
    screening: int | None = None,
) -> dict[str, list[float | None]]:
    """Bootstrap 95% intervals over the test images (None: off), all from the same resamples.

    Accuracy, macro F1 and AUC (INTERVAL_METRICS, the leaderboard's), balanced accuracy, and with
    `screening`, the index of SCREENING_CLASS, its sensitivity (test_covid_sensitivity).
    """
    screened = ["test_covid_sensitivity"] if screening is not None else []
    names = (*INTERVAL_METRICS, "test_balanced_accuracy", *screened)
    if samples == 0:
        return {name: [None, None] for name in names}
    predicted = probabilities.argmax(axis=1)
    class_count = probabilities.shape[1]

    def statistic(indices: np.ndarray) -> np.ndarray:
        auc = one_vs_rest_auc(true[indices], probabilities[indices], class_count)
        with warnings.catch_warnings():
            # A resample may miss a class; sklearn warns, the interval takes it as it is.
            warnings.simplefilter("ignore", UserWarning)
            balanced = balanced_accuracy_score(true[indices], predicted[indices])
        figures = [
            accuracy_score(true[indices], predicted[indices]),
            macro_f1(true[indices], predicted[indices]),
            np.nan if auc is None else auc,
            balanced,
        ]
        if screening is not None:
            rates = sensitivity_specificity(true[indices], predicted[indices], class_count)
            sensitivity = rates[screening][0]
            figures.append(np.nan if sensitivity is None else sensitivity)
        return np.array(figures)

    lows, highs = bootstrap_intervals(statistic, len(true), samples, seed)
    return named_intervals(names, lows, highs)


def evaluation_metrics(
    predictions: Predictions, bootstrap_samples: int, calibration_bins: int, seed: int
) -> dict[str, Any]:
    """Scores, their bootstrap intervals (also as <name>_ci_low / _ci_high) and the ECE."""
    true, probabilities = predictions.true, predictions.probabilities
    metrics = score_predictions(true, probabilities, predictions.class_names)
    names = list(predictions.class_names)
    screening = names.index(SCREENING_CLASS) if SCREENING_CLASS in names else None
    intervals = confidence_intervals(true, probabilities, bootstrap_samples, seed, screening)
    metrics["confidence_intervals"] = intervals
    for name, (low, high) in intervals.items():
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    ece = expected_calibration_error(predictions.confidence, predictions.correct, calibration_bins)
    # NaN (no image to bin) is no number JSON can hold: None, as for an undefined AUC.
    metrics["test_ece"] = ece if np.isfinite(ece) else None
    return metrics


def curve_tables(
    true: np.ndarray, probabilities: np.ndarray, names: Sequence[str]
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


def prediction_table(test: pd.DataFrame, predictions: Predictions) -> pd.DataFrame:
    """One row per test image: path, hash, source, true and predicted class, probabilities."""
    names = predictions.class_names
    return pd.DataFrame(
        {
            "path": test["path"].to_numpy(),
            "sha256": test["sha256"].to_numpy() if "sha256" in test else "",
            "source": test["source"].to_numpy() if "source" in test else "",
            "actual": [names[i] for i in predictions.true],
            "predicted": [names[i] for i in predictions.predicted],
            "correct": predictions.correct,
            "confidence": predictions.confidence.round(4),
            **{
                f"p_{name}": predictions.probabilities[:, i].round(4)
                for i, name in enumerate(names)
            },
        }
    )


def per_source_scores(
    test: pd.DataFrame, true: np.ndarray, predicted: np.ndarray, names: Sequence[str]
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
            row["covid_sensitivity"] = rates[list(names).index(SCREENING_CLASS)][0]
        rows.append(row)
    return pd.DataFrame(rows).round(4).astype(object)


def per_source_json(by_source: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The per-source table as {source: {score: value}}, None for a missing value."""
    return {
        source: {key: None if pd.isna(value) else value for key, value in scores.items()}
        for source, scores in by_source.set_index("source").to_dict(orient="index").items()
    }


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


def evaluation_line(metrics: Mapping[str, Any]) -> str:
    """Evaluate's printed headline: accuracy with its CI, macro F1, images, Grad-CAM and TTA."""
    low, high = metrics["confidence_intervals"]["test_accuracy"]
    interval = f" (95% CI {low:.3f}-{high:.3f})" if low is not None and high is not None else ""
    return (
        f"test accuracy {metrics['test_accuracy']:.3f}{interval}, "
        f"macro F1 {metrics['test_f1_macro']:.3f} on {metrics['test_images']} images; "
        f"Grad-CAM {metrics['gradcam']}; TTA {'on' if metrics['tta'] else 'off'}"
        f"{decision_words(metrics)}"
    )


def decision_words(metrics: Mapping[str, Any]) -> str:
    """'' under argmax, else the decision and the covid weight it fit on the validation split."""
    decision = metrics.get("decision", ARGMAX)
    if decision == ARGMAX:
        return ""
    threshold = metrics.get("decision_covid_threshold")
    moved = f", covid from p {threshold:.3f}" if threshold is not None else ""
    return (
        f"; decision {decision} (covid weight {metrics['decision_covid_weight']:.3f}{moved}, "
        f"fit on {metrics['decision_val_images']} validation images)"
    )
