"""Tests for the data warnings of a stage (cxr/core/warnings.py)."""

from __future__ import annotations

import io

from cxr.core.warnings import DataWarnings


def test_each_warning_is_one_printed_line_and_counted_by_kind() -> None:
    # given a stage's warnings
    stream = io.StringIO()
    warnings = DataWarnings(stream)
    # when two kinds are raised, one twice and one over several lines
    warnings.warn("blank_label", "3 rows of metadata.csv have no label; dropped")
    warnings.warn("blank_label", "1 row of other.csv has no label; dropped")
    warnings.warn("class_missing", "class covid has no image in val\n  (only 4 images)")
    # then each printed one line and the metrics count them by kind
    assert stream.getvalue().splitlines() == [
        "warning: 3 rows of metadata.csv have no label; dropped",
        "warning: 1 row of other.csv has no label; dropped",
        "warning: class covid has no image in val (only 4 images)",
    ]
    assert warnings.to_metrics() == {"blank_label": 2, "class_missing": 1}


def test_no_warnings_give_empty_metrics() -> None:
    assert DataWarnings(io.StringIO()).to_metrics() == {}
