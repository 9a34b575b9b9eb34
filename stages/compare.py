"""Stage compare: leaderboard of every model evaluated on the current data, from MLflow.

With an ensemble row (the top models' mean probabilities, a run of its own) and a column per
external dataset; on a fold of a cross-validation, the pooled leaderboard of its design too
(crossval.md, .json). reports/compare/ holds both, metrics/summary/compare.json their headline,
metrics/compare.json (a DVC metric) only the best model's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from cxr.comparison.champion import champion_summary, update_champion
from cxr.comparison.crossval import (
    crossval_line,
    crossval_metrics,
    pooled_leaderboard,
    ranked_by_pooled,
)
from cxr.comparison.ensemble import add_ensemble_row
from cxr.comparison.leaderboard import (
    CROSSVAL_REPORT,
    board_line,
    compare_metrics,
    evaluated_runs,
    excluded_runs,
    leaderboard,
    leaderboard_json,
    log_leaderboard,
    with_mcnemar,
    with_recipes,
)
from cxr.comparison.reports import LEADERBOARD_REPORT, external_metrics, write_leaderboard_reports
from cxr.core.errors import report_errors
from cxr.core.outputs import read_json, write_json, write_results
from cxr.core.params import POOLED_PREFIX, CompareParams, EvaluateParams, load_params
from cxr.core.paths import ProjectPaths, paths_from_argv
from cxr.core.tables import data_fingerprint, read_fold_design, read_splits
from cxr.tracking.runs import ENSEMBLE_MODEL, LEADERBOARD_MODEL, run_tags
from cxr.tracking.store import store_lock, tracking_uri, use_experiment

# The MLflow experiment of the leaderboards: mlflow_experiment + this (cxr-pipeline-leaderboard).
LEADERBOARD_SUFFIX = "-leaderboard"
# The DVC metrics of compare: the leaderboard's figures are evaluate's metrics of each experiment.
COMPARE_HEADLINE = ("best_model",)


def compare(
    settings: CompareParams,
    scoring: EvaluateParams,
    seed: int,
    experiment: str,
    paths: ProjectPaths,
    environ: Mapping[str, str],
    external: Sequence[str] = (),
) -> pd.DataFrame:
    """Write the leaderboard (JSON, Markdown, chart) and its headline metrics; update the champion.

    The ensemble is scored as evaluate scores a model (`scoring`, `seed`: same bootstrap);
    `external` names the external datasets whose columns the leaderboard shows.
    """
    fingerprint, design = data_fingerprint(read_splits(paths)), read_fold_design(paths)
    experiment_id = use_experiment(experiment, paths.root, environ)
    runs = with_recipes(evaluated_runs(experiment_id), settings.by)
    pooled = pooled_leaderboard(runs, design, experiment_id, settings, scoring, seed)
    board = leaderboard(runs, fingerprint, settings.rank_by.removeprefix(POOLED_PREFIX), external)
    board = ranked_by_pooled(board, pooled, settings.rank_by)
    tags = run_tags(ENSEMBLE_MODEL, fingerprint, paths.root, environ, design)
    board, note = add_ensemble_row(board, settings, experiment_id, scoring, seed, tags)
    board = with_mcnemar(board, experiment_id, settings.significance)
    excluded = excluded_runs(runs, fingerprint, design)
    lock = (tracking_uri(paths.root, environ), paths.root)
    # Read the champion, compare, register, move the alias: one step for parallel experiments,
    # or two of them could each find no champion and the alias end on the lower-ranked one.
    with store_lock(*lock):
        champion = update_champion(
            settings.registered_model,
            board,
            settings.rank_by,
            fingerprint,
            experiment_id,
            design,
            settings.by,
        )
    summary = champion_summary(settings.registered_model, champion)
    report = leaderboard_json(board, excluded, fingerprint, champion, note, external)
    reports = write_leaderboard_reports(
        paths.reports("compare"), board, excluded, report, settings, summary, note, external, pooled
    )
    headline = compare_metrics(report) | crossval_metrics(pooled)
    write_results(paths.summary("compare"), paths.metrics("compare"), headline, COMPARE_HEADLINE)
    write_json(paths.metrics("external"), external_metrics(paths.root, external))
    if len(board):
        tags = run_tags(LEADERBOARD_MODEL, fingerprint, paths.root, environ, design)
        # Its own experiment: the training experiment lists models, not reports about them.
        boards = use_experiment(f"{experiment}{LEADERBOARD_SUFFIX}", paths.root, environ)
        # Under the lock: a parallel experiment's compare replaces the same run of this data.
        with store_lock(*lock):
            log_leaderboard(boards, tags, headline, reports, board)
    return board


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the compare stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    settings, scoring, external = params.compare, params.evaluate, tuple(params.evaluate.external)
    board = compare(
        settings, scoring, params.seed, params.mlflow_experiment, paths, dict(os.environ), external
    )
    reports = paths.reports("compare")
    print(f"compare: {board_line(board)} -> {reports}")
    if pooled := crossval_line(read_json(reports / CROSSVAL_REPORT)):
        print(pooled)
    champion = read_json(reports / LEADERBOARD_REPORT)["champion"]
    print(f"compare: {champion_summary(settings.registered_model, champion)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
