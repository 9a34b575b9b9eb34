"""The leaderboard's ensemble row: the mean probabilities of the top models on their shared images.

No model is loaded: each member's per-image test probabilities are read back from its MLflow run
(the table evaluate logs), so an ensemble costs compare a few table reads. The mean is scored
exactly as evaluate scores a model, and logged as a run of its own tagged model=ensemble, which
the leaderboard and the champion never take for a single model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from cxr.comparison.leaderboard import ensemble_name, run_predictions
from cxr.core.params import CompareParams, EvaluateParams
from cxr.core.tables import label_indices
from cxr.evaluation.metrics import Predictions, evaluation_metrics, flat_metrics, prediction_table
from cxr.tracking.runs import ENSEMBLE_MODEL, PREDICTIONS_ARTIFACT, find_run, log_results, tag_run

IMAGE_KEYS = ["path", "sha256"]  # one test image: where it is and what it holds
PROBABILITY_PREFIX = "p_"
MEMBERS_TAG = "ensemble_members"  # the members' run ids, sorted: the ensemble's identity
PREDICTIONS_TAG = "ensemble_predictions"  # hash of the mean predictions logged in the run


@dataclass(frozen=True)
class Ensemble:
    """Some leaderboard rows averaged: the members, the per-image predictions and their scores."""

    members: pd.DataFrame  # the members' leaderboard rows, best first
    per_image: pd.DataFrame  # prediction_table of the mean probabilities
    metrics: dict[str, Any]  # evaluation_metrics of the mean, as evaluate scores a model
    left_out: tuple[str, ...] = ()  # top models without logged test probabilities

    @property
    def name(self) -> str:
        """ensemble(<model>+<model>+...)."""
        return ensemble_name(self.members["model"])


def class_columns(table: pd.DataFrame) -> list[str]:
    """The p_<class> probability columns of a logged prediction table, in its class order."""
    return [column for column in table.columns if column.startswith(PROBABILITY_PREFIX)]


def has_probabilities(table: pd.DataFrame | None) -> bool:
    """Whether a run's logged prediction table holds class probabilities to average."""
    return table is not None and bool(class_columns(table))


def mean_probabilities(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The images all `tables` hold (same path and hash), with the mean of their p_ columns.

    A run evaluated twice before evaluate cleared its earlier results (older runs) holds its
    table twice, since MLflow appends; its latest rows count.
    """
    columns = class_columns(tables[0])
    indexed = [
        table.drop_duplicates(IMAGE_KEYS, keep="last").set_index(IMAGE_KEYS) for table in tables
    ]
    shared = indexed[0].index
    for table in indexed[1:]:
        shared = shared.intersection(table.index, sort=False)
    mean = np.mean([table.loc[shared, columns].to_numpy(float) for table in indexed], axis=0)
    # Logged probabilities are rounded to 4 decimals, so a row of means may miss 1 by ~1e-4.
    mean /= np.maximum(mean.sum(axis=1, keepdims=True), np.finfo(float).tiny)
    first = indexed[0].loc[shared].reindex(columns=["source", "actual"]).reset_index()
    return first.fillna({"source": ""}).assign(**dict(zip(columns, mean.T, strict=True)))


def score_mean(
    joined: pd.DataFrame, scoring: EvaluateParams, seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(prediction_table, evaluation_metrics) of mean probabilities, scored as evaluate does."""
    columns = class_columns(joined)
    names = tuple(column.removeprefix(PROBABILITY_PREFIX) for column in columns)
    true = label_indices(joined["actual"], names)
    predictions = Predictions(true, joined[columns].to_numpy(float), names)
    metrics = evaluation_metrics(
        predictions, scoring.bootstrap_samples, scoring.calibration_bins, seed
    )
    return prediction_table(joined, predictions), metrics


def build_ensemble(
    board: pd.DataFrame, size: int, experiment_id: str, scoring: EvaluateParams, seed: int
) -> Ensemble | str:
    """The ensemble of the top `size` rows of the single-model `board`, or why there is none.

    A collapsed model (train's collapse check) adds nothing but its one class: it is left out.
    """
    return average_top(
        board, size, lambda run_id: run_predictions(experiment_id, run_id), scoring, seed
    )


def average_top(
    board: pd.DataFrame,
    size: int,
    predictions: Callable[[str], pd.DataFrame | None],
    scoring: EvaluateParams,
    seed: int,
) -> Ensemble | str:
    """build_ensemble on prediction tables read by `predictions(row's run_id)` (None: none).

    The cross-validated leaderboard passes its pooled tables (cxr.comparison.crossval).
    """
    if size == 0:
        return "no ensemble row (compare.ensemble_size = 0)"
    learned = board[~board["collapsed"]] if "collapsed" in board else board
    top = learned.head(size)
    if len(top) < 2:
        return f"no ensemble row: {len(top)} model(s) on this data, an ensemble needs 2"
    tables = {run_id: predictions(run_id) for run_id in top["run_id"]}
    logged = top["run_id"].map(lambda run_id: has_probabilities(tables[run_id])).astype(bool)
    members, left_out = top[logged], tuple(top.loc[~logged, "model"])
    if len(members) < 2:
        return (
            f"no ensemble row: of the top {len(top)} models only {len(members)} logged its "
            f"test probabilities ({', '.join(left_out)} did not: re-run their evaluate)"
        )
    member_tables = [tables[run_id] for run_id in members["run_id"]]
    if len({tuple(sorted(class_columns(table))) for table in member_tables}) > 1:
        return f"no ensemble row: {', '.join(members['model'])} predict different classes"
    joined = mean_probabilities(member_tables)
    if joined.empty:
        return f"no ensemble row: {', '.join(members['model'])} share no test image"
    per_image, metrics = score_mean(joined, scoring, seed)
    return Ensemble(members.reset_index(drop=True), per_image, metrics, left_out)


def member_costs(members: pd.DataFrame) -> dict[str, float | None]:
    """Parameters and training seconds add up over the members; their speeds combine in series."""

    def total(column: str) -> float | None:
        """The members' sum, or None when one of them did not log it."""
        values = pd.to_numeric(members[column], errors="coerce")
        return None if values.isna().any() else float(values.sum())

    speeds = pd.to_numeric(members["inference_images_per_second"], errors="coerce")
    usable = not speeds.isna().any() and bool((speeds > 0).all())
    return {
        "parameters": total("parameters"),
        "train_seconds": total("train_seconds"),
        "inference_images_per_second": float(1 / (1 / speeds).sum()) if usable else None,
    }


def predictions_digest(per_image: pd.DataFrame) -> str:
    """A short hash of a prediction table: whether a logged ensemble still matches its members."""
    hashed = pd.util.hash_pandas_object(per_image, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def log_ensemble(ensemble: Ensemble, experiment_id: str, tags: Mapping[str, str]) -> str:
    """Log the ensemble as its own run (model=ensemble); return its run id.

    The run of the same members on the same data is reused, so compare run again adds no run.
    When a member was evaluated again since, its predictions differ: that run is deleted and
    replaced, since MLflow would append the new table to the old one.
    """
    identity = {
        "model": ENSEMBLE_MODEL,
        "data_fingerprint": tags["data_fingerprint"],
        MEMBERS_TAG: ",".join(sorted(ensemble.members["run_id"])),
    }
    digest = predictions_digest(ensemble.per_image)
    client = MlflowClient()
    previous = find_run(experiment_id, identity)
    if previous is not None and client.get_run(previous).data.tags.get(PREDICTIONS_TAG) != digest:
        client.delete_run(previous)
        previous = None
    with mlflow.start_run(previous, experiment_id, run_name=ensemble.name) as run:
        tag_run({**tags, **identity, PREDICTIONS_TAG: digest})
        log_results(
            flat_metrics(ensemble.metrics | member_costs(ensemble.members)),
            {},
            {} if previous else {PREDICTIONS_ARTIFACT: ensemble.per_image},
        )
    return str(run.info.run_id)


def with_ensemble(board: pd.DataFrame, ensemble: Ensemble, run_id: str) -> pd.DataFrame:
    """`board` with the ensemble's row appended last, whatever its score: never the best."""
    row: dict[str, Any] = {
        "model": ENSEMBLE_MODEL,
        **{name: ensemble.metrics.get(name) for name in board.columns if name.startswith("test_")},
        **member_costs(ensemble.members),
        "run_id": run_id,
        "best": False,
        "members": tuple(ensemble.members["model"]),
        "member_run_ids": tuple(ensemble.members["run_id"]),
        "test_images": ensemble.metrics["test_images"],
    }
    return pd.concat([board, pd.DataFrame([row])], ignore_index=True)


def add_ensemble_row(
    board: pd.DataFrame,
    settings: CompareParams,
    experiment_id: str,
    scoring: EvaluateParams,
    seed: int,
    tags: Mapping[str, str],
) -> tuple[pd.DataFrame, str]:
    """`board` with the row of its top compare.ensemble_size models, logged with `tags`; the note.

    The note is ensemble_note's: what the row averages, or why there is none.
    """
    ensemble = build_ensemble(board, settings.ensemble_size, experiment_id, scoring, seed)
    if isinstance(ensemble, Ensemble):
        board = with_ensemble(board, ensemble, log_ensemble(ensemble, experiment_id, tags))
    return board, ensemble_note(ensemble)


def ensemble_note(ensemble: Ensemble | str) -> str:
    """One line for leaderboard.md: what the ensemble row averages, or why there is none."""
    if isinstance(ensemble, str):
        return ensemble[0].upper() + ensemble[1:] + "."
    left_out = (
        f"; left out for lack of logged test probabilities: {', '.join(ensemble.left_out)}"
        if ensemble.left_out
        else ""
    )
    return (
        f"Ensemble row (last, never ranked best nor made champion): the mean probabilities of "
        f"{', '.join(ensemble.members['model'])} on the {ensemble.metrics['test_images']} test "
        f"images they share{left_out}."
    )
