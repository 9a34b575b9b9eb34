"""The source shortcut check: how well pixel_logreg tells the training source from the external."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from cxr.core.params import (
    BaselineParams,
)
from cxr.evaluation.statistics import bootstrap_intervals
from cxr.models.baselines import build_baseline, flatten_pixels

# The shortcut check: images drawn per class and source (bounds its time on a large dataset),
# cross-validation folds, and the accuracies read as "hard to tell apart" and "a trap".
SHORTCUT_IMAGES_PER_CLASS = 500

SHORTCUT_FOLDS = 5

SHORTCUT_HARD = 0.6

SHORTCUT_TRAP = 0.9


def shortcut_sample(
    internal: pd.DataFrame, external: pd.DataFrame, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of both sources for the shortcut check: per shared class, as many from each.

    With the classes in equal numbers on both sides, what class an image shows says nothing
    about its source, so chance is 0.5 and anything above it comes from the source itself.
    """
    rng = np.random.default_rng(seed)
    chosen: tuple[list[int], list[int]] = ([], [])
    for label in sorted(set(internal["label"]) & set(external["label"])):
        sides = [
            np.flatnonzero(table["label"].to_numpy() == label) for table in (internal, external)
        ]
        count = min(len(sides[0]), len(sides[1]), SHORTCUT_IMAGES_PER_CLASS)
        for rows, side in zip(chosen, sides, strict=True):
            rows.extend(sorted(rng.choice(side, count, replace=False).tolist()))
    return internal.iloc[chosen[0]], external.iloc[chosen[1]]


def shortcut_note(accuracy: float | None) -> str:
    """One line reading the shortcut accuracy for a person."""
    if accuracy is None:
        return "not computed: too few images of the shared classes in one of the sources"
    if accuracy >= SHORTCUT_TRAP:
        return (
            f"a shortcut trap: pixels alone tell the two sources apart ({accuracy:.2f}; 0.5 = "
            "chance), so a model can score by recognising the source instead of the lungs; "
            "trust the external figures over the internal ones"
        )
    if accuracy <= SHORTCUT_HARD:
        return (
            f"the sources are hard to tell apart from pixels ({accuracy:.2f}; 0.5 = chance): "
            "little room for a source shortcut"
        )
    return (
        f"the sources are partly told apart from pixels ({accuracy:.2f}; 0.5 = chance, 1.0 = "
        "always): some room for a source shortcut"
    )


def source_shortcut(
    internal: np.ndarray,
    external: np.ndarray,
    baseline: BaselineParams,
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """Cross-validated accuracy (95% CI) of pixel_logreg telling internal from external images.

    `internal` and `external` are uint8 (N, S, S, 1) images at train.baseline.image_size, as
    many from each source (shortcut_sample). Near 0.5: the sources are hard to tell apart;
    near 1.0: a shortcut trap, the source is written all over the pixels.
    """
    per_source = min(len(internal), len(external))
    folds = min(SHORTCUT_FOLDS, per_source)
    result: dict[str, Any] = {
        "source_shortcut_accuracy": None,
        "source_shortcut_accuracy_ci_low": None,
        "source_shortcut_accuracy_ci_high": None,
        "source_shortcut_images_per_source": per_source,
        "source_shortcut_folds": folds,
    }
    if folds < 2:
        return result | {"source_shortcut_note": shortcut_note(None)}
    pixels = flatten_pixels(np.concatenate([internal[:per_source], external[:per_source]]))
    source = np.repeat([0, 1], per_source)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A fold that stops at max_iter still scores; the check needs no converged optimum.
        warnings.simplefilter("ignore")
        guessed = cross_val_predict(
            build_baseline("pixel_logreg", baseline, seed), pixels, source, cv=splitter
        )
    correct = (guessed == source).astype(np.float64)
    accuracy = float(correct.mean())
    if samples:
        lows, highs = bootstrap_intervals(
            lambda indices: np.array([correct[indices].mean()]), len(correct), samples, seed
        )
        result["source_shortcut_accuracy_ci_low"] = float(lows[0])
        result["source_shortcut_accuracy_ci_high"] = float(highs[0])
    return result | {
        "source_shortcut_accuracy": accuracy,
        "source_shortcut_note": shortcut_note(accuracy),
    }
