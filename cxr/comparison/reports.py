"""What compare writes: reports/compare/ (Markdown, chart, JSON) and metrics/external.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.comparison.crossval import CrossValidation, crossval_json, crossval_markdown
from cxr.comparison.leaderboard import (
    CROSSVAL_MD,
    CROSSVAL_REPORT,
    draw_leaderboard,
    leaderboard_markdown,
)
from cxr.core.outputs import read_json, save_figure, staged_dir, write_json
from cxr.core.params import CompareParams
from cxr.core.paths import ExternalDataPaths

LEADERBOARD_REPORT = "leaderboard.json"  # in reports/compare/, beside leaderboard.md and .png
# The pooled leaderboard of the cross-validation design (cxr.comparison.crossval) beside it.
REPORT_FILES = (
    "leaderboard.md",
    "leaderboard.png",
    LEADERBOARD_REPORT,
    CROSSVAL_MD,
    CROSSVAL_REPORT,
)
# Per external dataset in metrics/external.json; the rest is in metrics/external/<name>.json.
EXTERNAL_HEADLINE = ("images", "accuracy", "f1_macro", "accuracy_drop", "source_shortcut_accuracy")


def write_leaderboard_reports(
    reports_dir: Path,
    board: pd.DataFrame,
    excluded: pd.DataFrame,
    report: Mapping[str, Any],
    settings: CompareParams,
    champion_line: str,
    note: str,
    external: Sequence[str],
    crossval: CrossValidation | None = None,
) -> list[Path]:
    """Write the leaderboard as Markdown, chart and JSON into `reports_dir`, atomically.

    With the pooled leaderboard of the cross-validation design (`crossval`; a line saying
    there is none without one) as crossval.md and crossval.json.
    """
    fingerprint = report["data_fingerprint"]
    with staged_dir(reports_dir) as staging:
        (staging / CROSSVAL_MD).write_text(
            crossval_markdown(crossval, settings.significance), encoding="utf-8"
        )
        write_json(staging / CROSSVAL_REPORT, crossval_json(crossval))
        (staging / "leaderboard.md").write_text(
            leaderboard_markdown(
                board, excluded, fingerprint, settings, champion_line, note, external
            ),
            encoding="utf-8",
        )
        chart = draw_leaderboard(board, settings.rank_by, fingerprint)
        save_figure(chart, staging / "leaderboard.png")
        write_json(staging / LEADERBOARD_REPORT, report)
    return [reports_dir / name for name in REPORT_FILES]


def external_metrics(root: Path, external: Sequence[str]) -> dict[str, Any]:
    """metrics/external.json: the headline of each metrics/external/<name>.json ({}: none)."""
    files = {name: ExternalDataPaths(root, name).external_metrics for name in external}
    return {
        name: {key: scores.get(key) for key in EXTERNAL_HEADLINE}
        for name, path in files.items()
        if path.exists()
        for scores in [read_json(path)]
    }
