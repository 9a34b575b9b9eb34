"""Stage compare: leaderboard of every backbone evaluated on the current data, from MLflow."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from stages.config import CompareParams, load_params
from stages.errors import report_errors
from stages.outputs import save_figure, staged_dir, write_json
from stages.paths import ProjectPaths, paths_from_argv
from stages.tables import data_fingerprint, read_splits
from stages.tracking import use_experiment

LEADERBOARD_COLUMNS = {
    "tags.backbone": "backbone",
    "metrics.test_accuracy": "test_accuracy",
    "metrics.test_f1_macro": "test_f1_macro",
    "metrics.test_roc_auc_ovr": "test_roc_auc_ovr",
    "metrics.parameters": "parameters",
    "metrics.train_seconds": "train_seconds",
    "tags.pretrained": "pretrained",
    "run_id": "run_id",
    "start_time": "started",
}


def leaderboard(experiment_id: str, fingerprint: str, rank_by: str) -> pd.DataFrame:
    """The latest evaluated run of each backbone on data `fingerprint`, best first."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.data_fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    if runs.empty or "metrics.test_accuracy" not in runs:
        return pd.DataFrame(columns=[*LEADERBOARD_COLUMNS.values(), "best"])
    runs = runs.dropna(subset=["metrics.test_accuracy"])
    runs = runs.reindex(columns=list(LEADERBOARD_COLUMNS)).rename(columns=LEADERBOARD_COLUMNS)
    board = runs.drop_duplicates("backbone").sort_values(
        rank_by, ascending=False, na_position="last"
    )
    board = board.reset_index(drop=True)
    board["best"] = board.index == 0
    return board


def draw_leaderboard(board: pd.DataFrame, rank_by: str, fingerprint: str) -> Any:
    """Bar chart of the ranking metric per backbone, the best highlighted."""
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(board) + 2), 4))
    colors = ["tab:green" if best else "tab:blue" for best in board["best"]]
    axis.bar(board["backbone"], board[rank_by], color=colors)
    axis.set(title=f"Backbones on data {fingerprint}", ylabel=rank_by, ylim=(0, 1))
    for position, value in enumerate(board[rank_by]):
        axis.annotate(f"{value:.3f}", (position, value), ha="center", va="bottom", fontsize=8)
    return figure


def markdown_table(board: pd.DataFrame) -> str:
    """The leaderboard as a Markdown table, the best marked with a star."""
    table = board.drop(columns=["started"]).copy()
    table["backbone"] = [
        f"**{name}** *" if best else name
        for name, best in zip(table["backbone"], table["best"], strict=True)
    ]
    return table.drop(columns=["best"]).to_markdown(index=False, floatfmt=".4f") + "\n"


def compare(
    compare_params: CompareParams, experiment: str, paths: ProjectPaths, environ: Mapping[str, str]
) -> pd.DataFrame:
    """Write the leaderboard as metrics JSON, Markdown and a bar chart."""
    fingerprint = data_fingerprint(read_splits(paths))
    experiment_id = use_experiment(experiment, paths.root, environ)
    board = leaderboard(experiment_id, fingerprint, compare_params.rank_by)
    with staged_dir(paths.reports("compare")) as reports_dir:
        (reports_dir / "leaderboard.md").write_text(
            f"Leaderboard on data fingerprint `{fingerprint}`, ranked by {compare_params.rank_by}"
            " (* = best)\n\n" + markdown_table(board),
            encoding="utf-8",
        )
        save_figure(
            draw_leaderboard(board, compare_params.rank_by, fingerprint),
            reports_dir / "leaderboard.png",
        )
    numeric = ["test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "parameters", "train_seconds"]
    write_json(
        paths.metrics("compare"),
        {
            "data_fingerprint": fingerprint,
            "models": len(board),
            "best_backbone": board["backbone"].iloc[0] if len(board) else None,
            "leaderboard": {
                row["backbone"]: {
                    key: None if pd.isna(row[key]) else float(row[key]) for key in numeric
                }
                | {"run_id": row["run_id"]}
                for _, row in board.iterrows()
            },
        },
    )
    return board


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the compare stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    board = compare(params.compare, params.mlflow_experiment, paths, dict(os.environ))
    best = f"best {board['backbone'].iloc[0]}" if len(board) else "no evaluated runs yet"
    print(f"compare: {len(board)} backbone(s) on this data, {best} -> {paths.reports('compare')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
