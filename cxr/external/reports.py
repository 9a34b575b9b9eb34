"""What external@<name> shows a person: its summary.md, printed lines and MLflow metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cxr.core.params import (
    external_metric,
)
from cxr.evaluation.metrics import ARGMAX
from cxr.external.scores import SCORED


def summary_markdown(name: str, metrics: Mapping[str, Any]) -> str:
    """reports/external/<name>/summary.md: the scores, the drop and the shortcut, for a person."""

    def cell(key: str) -> str:
        value = metrics.get(key)
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        if value is None:
            return "-"
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        return f"{value:.3f}{interval}"

    def number(value: Any, sign: str = "") -> str:
        return "-" if value is None else f"{value:{sign}.3f}"

    rows = "\n".join(
        f"| {key} | {cell(key)} | {number(metrics['internal'].get(key))} "
        f"| {number(metrics.get(f'{key}_drop'), '+')} |"
        for key in SCORED
    )
    shortcut = cell("source_shortcut_accuracy")
    decision = metrics.get("decision", ARGMAX)
    decided = (
        ""
        if decision == ARGMAX
        else f" Covid is called as evaluate called it (evaluate.decision = {decision}: covid "
        f"probability weighted {metrics['decision_covid_weight']:.3f}, fit on the validation "
        "split)."
    )
    return (
        f"# External dataset `{name}`\n\n"
        f"{metrics['images']} images from `{metrics['source']}`, {metrics['class_note']}."
        f"{decided}\n\n"
        "| score | external [95% CI] | internal test | drop (internal - external) |\n"
        "|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Source shortcut accuracy (pixel_logreg telling the training source's images from "
        f"these, {metrics['source_shortcut_folds']}-fold cross-validated, "
        f"{metrics['source_shortcut_images_per_source']} images per source): {shortcut}: "
        f"{metrics['source_shortcut_note']}.\n"
    )


def mlflow_metrics(name: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric top-level metrics as external_<name>_<key> (accuracy, drops, shortcut ...)."""
    return {
        external_metric(name, key): float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    }


def external_summary(metrics: Mapping[str, Any]) -> list[str]:
    """The stage's printed lines: the scores with the class note, and the shortcut check."""

    def interval(key: str) -> str:
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        return f" (95% CI {low:.3f}-{high:.3f})" if low is not None and high is not None else ""

    drop = metrics.get("accuracy_drop")
    internal = metrics["internal"].get("accuracy")
    versus = ""
    if drop is not None and internal is not None:
        direction = "below" if drop >= 0 else "above"
        versus = f", {abs(drop):.3f} {direction} the internal test accuracy {internal:.3f}"
    shortcut = metrics.get("source_shortcut_accuracy")
    shortcut_text = "n/a" if shortcut is None else f"{shortcut:.3f}"
    return [
        f"external {metrics['dataset']}: accuracy {metrics['accuracy']:.3f}"
        f"{interval('accuracy')}, macro F1 {metrics['f1_macro']:.3f} on {metrics['images']} "
        f"images{versus}; {metrics['class_note']}",
        f"  source shortcut accuracy {shortcut_text}{interval('source_shortcut_accuracy')}: "
        f"{metrics['source_shortcut_note']}",
    ]
