"""Tests for the per-class counts of the metrics JSON (cxr/core/tables.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.core.tables import label_counts


def test_label_counts_are_sorted_plain_str_and_int() -> None:
    # Given labels in no order
    labels = pd.Series(["normal", "covid", "normal", "viral_pneumonia", "normal"])

    # When they are counted
    counts = label_counts(labels)

    # Then each label appears once, sorted by name, with plain Python types JSON can write
    assert counts == {"covid": 1, "normal": 3, "viral_pneumonia": 1}
    assert list(counts) == ["covid", "normal", "viral_pneumonia"]
    assert all(type(key) is str and type(value) is int for key, value in counts.items())


def test_label_counts_of_no_labels_or_numeric_labels() -> None:
    assert label_counts(pd.Series([], dtype=object)) == {}
    assert label_counts(pd.Series(np.array([1, 0, 1]))) == {"0": 1, "1": 2}
