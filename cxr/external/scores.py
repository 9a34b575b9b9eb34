"""External scores on the classes shared with the model, and their drop from the internal test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.tables import label_indices
from cxr.evaluation.metrics import (
    Predictions,
    evaluation_metrics,
    score_predictions,
)

# The figures compared between the internal test split and an external dataset.
SCORED = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "covid_sensitivity")


def shared_classes(
    name: str, counts: Mapping[str, int], model_classes: Sequence[str]
) -> tuple[str, ...]:
    """The model's classes the dataset holds, in the model's order; fail on a class it lacks."""
    unknown = sorted(set(counts) - set(model_classes))
    if unknown:
        listed = ", ".join(f"{label!r} ({counts[label]} images)" for label in unknown)
        raise PipelineError(
            f"evaluate.external.{name}: class {listed} unknown to the model (classes "
            f"{', '.join(model_classes)}); map it with evaluate.external.{name}.label_map or "
            f"leave it out with evaluate.external.{name}.classes"
        )
    shared = tuple(label for label in model_classes if counts.get(label, 0) > 0)
    if len(shared) < 2:
        raise PipelineError(
            f"evaluate.external.{name}: images of {len(shared)} of the model's classes "
            f"({', '.join(shared) or 'none'}); scoring needs two or more"
        )
    return shared


def on_shared_classes(
    probabilities: np.ndarray, model_classes: Sequence[str], shared: Sequence[str]
) -> np.ndarray:
    """The probabilities of the `shared` classes only, renormalised to sum to 1 per image."""
    columns = [list(model_classes).index(label) for label in shared]
    kept = np.asarray(probabilities, dtype=np.float64)[:, columns]
    totals = kept.sum(axis=1, keepdims=True)
    # An image given ~0 on every shared class is spread evenly over them rather than 0 / 0.
    even = np.full_like(kept, 1.0 / len(columns))
    return np.divide(kept, totals, out=even, where=totals > 0)


def class_note(shared: Sequence[str], model_classes: Sequence[str]) -> str:
    """What the scores are over: every class of the model, or the shared ones, renormalised."""
    if len(shared) == len(model_classes):
        return f"scored on all {len(shared)} classes of the model"
    return (
        f"scored on {len(shared)} of the model's {len(model_classes)} classes "
        f"({', '.join(shared)}), probabilities renormalised over them"
    )


def external_scores(
    predictions: Predictions, samples: int, calibration_bins: int, seed: int
) -> dict[str, Any]:
    """Scores as evaluate computes them, named without `test_`, with CIs of all five SCORED."""
    scores = evaluation_metrics(predictions, samples, calibration_bins, seed)
    intervals = {
        key.removeprefix("test_"): value
        for key, value in scores.pop("confidence_intervals").items()
    }
    metrics = {key.removeprefix("test_"): value for key, value in scores.items()}
    metrics.setdefault("covid_sensitivity", None)
    intervals.setdefault("covid_sensitivity", [None, None])
    for key, (low, high) in intervals.items():
        metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = low, high
    return metrics | {"confidence_intervals": intervals}


def internal_reference(
    evaluated: Mapping[str, Any],
    test_predictions: pd.DataFrame,
    model_classes: Sequence[str],
    shared: Sequence[str],
) -> dict[str, float | None]:
    """The internal test figures to compare with, on the same classes as the external ones.

    With every class shared they are metrics/summary/evaluate.json's; otherwise the test images
    of the shared classes are scored again from metrics/test_predictions.csv, renormalised the
    same way.
    """
    if len(shared) == len(model_classes):
        return {key: evaluated.get(f"test_{key}") for key in SCORED}
    rows = test_predictions[test_predictions["actual"].isin(shared)]
    if rows.empty:
        return dict.fromkeys(SCORED)
    probabilities = rows[[f"p_{label}" for label in model_classes]].to_numpy()
    scores = score_predictions(
        label_indices(rows["actual"], shared),
        on_shared_classes(probabilities, model_classes, shared),
        shared,
    )
    return {key: scores.get(f"test_{key}") for key in SCORED}


def drops(internal: Mapping[str, float | None], external: Mapping[str, Any]) -> dict[str, Any]:
    """Internal minus external figure per score: how much is lost on the other source."""
    return {
        f"{key}_drop": None
        if internal.get(key) is None or external.get(key) is None
        else float(internal[key]) - float(external[key])  # type: ignore[arg-type]
        for key in SCORED
    }
