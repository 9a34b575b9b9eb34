"""A collapsed model: one whose validation answers are one class, or no better than guessing.

A network that stops learning often settles on the largest class (seed 004 published VGG16 at
0.57 and ResNet50 at 0.43 on a binary task that way). Its accuracy still looks like a figure,
so train flags it: one warning line, a `collapsed` tag and reason on the MLflow run, and the
leaderboard shows the flag and never makes such a run champion.

"No better" is a test, not a comparison of two numbers: ResNet50 that answered covid for most
phantoms scored 31 of 62 validation images, one above always answering normal (30 of 62).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

# MLflow run tags: "true" / "false", and the sentence why ("" when not collapsed).
COLLAPSED_TAG = "collapsed"
COLLAPSE_REASON_TAG = "collapse_reason"
# A validation accuracy above the largest class's share is evidence of learning only when the
# one-sided exact binomial test (k correct of n, chance = the share) gives p under this.
COLLAPSE_SIGNIFICANCE = 0.05


def collapse_reason(
    true: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
) -> str | None:
    """Why the validation predictions show a collapsed model, or None when they do not.

    Collapsed: every validation image gets the same class, or the accuracy is no better than
    always answering the largest class of the validation split (its share): at or under the
    share, or above it by no more than chance (one-sided binomial p >= COLLAPSE_SIGNIFICANCE).
    The test applies only where the split is large enough for a perfect score to pass it
    (share ** n < COLLAPSE_SIGNIFICANCE); on a smaller split the plain comparison does. With
    fewer than two classes in the validation split nothing can be told, and None is returned.
    """
    true, predicted = np.asarray(true), np.asarray(predicted)
    present = np.unique(true)
    if len(true) == 0 or len(present) < 2:
        return None
    answered = np.unique(predicted)
    if len(answered) == 1:
        return f"it answers {class_names[int(answered[0])]} for all {len(true)} validation images"
    counts = np.bincount(true, minlength=len(class_names))
    largest = int(counts.argmax())
    share = counts[largest] / len(true)
    correct = int(np.sum(true == predicted))
    accuracy = correct / len(true)
    if accuracy <= share:
        return (
            f"its validation accuracy {accuracy:.3f} is no better than always answering "
            f"{class_names[largest]} ({share:.3f})"
        )
    if share ** len(true) >= COLLAPSE_SIGNIFICANCE:
        return None
    p = binomtest(correct, len(true), share, alternative="greater").pvalue
    if p >= COLLAPSE_SIGNIFICANCE:
        return (
            f"its validation accuracy {accuracy:.3f} ({correct} of {len(true)}) is not "
            f"significantly above always answering {class_names[largest]} ({share:.3f}; "
            f"one-sided binomial p {p:.2g} >= {COLLAPSE_SIGNIFICANCE})"
        )
    return None


def collapse_tags(reason: str | None) -> dict[str, str]:
    """The run tags of a collapse check: collapsed true/false and the reason."""
    return {COLLAPSED_TAG: str(reason is not None).lower(), COLLAPSE_REASON_TAG: reason or ""}
