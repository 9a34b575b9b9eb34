"""How sure we are: bootstrap confidence intervals, McNemar's test and calibration error."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest, bootstrap
from sklearn.calibration import calibration_curve

from cxr.core.progress import Progress

# The test metrics evaluate gives a bootstrap 95% interval (<name>_ci_low / _ci_high).
INTERVAL_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr")


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], np.ndarray],
    size: int,
    samples: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap (scipy) of `statistic(indices)` over `size` items; (lows, highs).

    `statistic` takes an index array of a resample of the test images and returns one value
    per figure (accuracy, F1, AUC ...). A NaN marks a figure undefined on that resample, e.g.
    an AUC when the resample misses a class; those resamples are left out of that figure's
    interval rather than failing it. An interval is NaN only when the figure is undefined on
    every resample.
    """
    if size < 2:
        nan = np.full(np.atleast_1d(statistic(np.arange(size))).shape, np.nan)
        return nan, nan
    with (
        warnings.catch_warnings(),
        Progress("bootstrap", "resamples", samples) as progress,
    ):
        # scipy warns when NaN resamples make its own interval undefined; ours is computed below.
        warnings.simplefilter("ignore")

        def resampled(indices: np.ndarray) -> np.ndarray:
            # scipy calls a non-vectorized statistic once per resample (percentile method).
            progress.update()
            return np.atleast_1d(statistic(indices.astype(np.int64)))

        result = bootstrap(
            (np.arange(size),),
            resampled,
            n_resamples=samples,
            vectorized=False,
            method="percentile",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
        )
    distribution = np.atleast_2d(result.bootstrap_distribution)
    tail = 100 * (1 - confidence) / 2
    lows = np.full(len(distribution), np.nan)
    highs = np.full(len(distribution), np.nan)
    for row, values in enumerate(distribution):
        defined = values[~np.isnan(values)]
        if len(defined):
            lows[row], highs[row] = np.percentile(defined, [tail, 100 - tail])
    return lows, highs


def named_intervals(
    names: Sequence[str], lows: np.ndarray, highs: np.ndarray
) -> dict[str, list[float | None]]:
    """Each figure's [low, high] from bootstrap_intervals, by name; None where it is NaN (JSON)."""
    return {
        name: [None if np.isnan(low) else float(low), None if np.isnan(high) else float(high)]
        for name, low, high in zip(names, lows, highs, strict=True)
    }


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar p-value: whether two models err on different images beyond chance.

    Only the discordant images count (right by one model, wrong by the other); under the null
    hypothesis each of them is a fair coin, so the test is a two-sided binomial test (scipy).
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> pd.DataFrame:
    """Reliability table over `bins` equal-width confidence bins (empty bins left out).

    Columns: confidence (mean in the bin), accuracy (fraction correct), images. The first two
    are sklearn.calibration.calibration_curve's; the counts use its binning.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=int)
    if len(confidence) == 0:
        return pd.DataFrame({"confidence": [], "accuracy": [], "images": []})
    accuracy, mean_confidence = calibration_curve(
        correct, confidence, n_bins=bins, strategy="uniform"
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=bins)
    return pd.DataFrame(
        {"confidence": mean_confidence, "accuracy": accuracy, "images": counts[counts > 0]}
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE: the image-weighted mean gap between confidence and accuracy over `bins` bins."""
    table = calibration_bins(confidence, correct, bins)
    if table.empty:
        return float("nan")
    gaps = np.abs(table["confidence"] - table["accuracy"])
    return float(np.sum(table["images"] * gaps) / table["images"].sum())
