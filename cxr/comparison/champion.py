"""The registry's champion: the alias that names the best model on the current data.

Whenever compare runs, update_champion puts the alias on the leaderboard's best eligible run by
compare.rank_by, whichever run the workspace holds and in whatever order experiments finished.
Eligible: one model (not the ensemble row), not collapsed (cxr.training.collapse), scored on
`rank_by`, with a logged model. Its `action` is `promoted` (the alias moves to that run),
`kept` (the alias already names it, or the champion was scored on other data or in another
store and cannot be compared) or `not_eligible` (no run of the leaderboard can be champion).
`reason` says which and why, with the figures compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr.comparison.leaderboard import is_collapsed, recipe_label
from cxr.core.params import is_pooled
from cxr.core.tables import FoldDesign
from cxr.tracking.runs import CV_DESIGN_TAG, ENSEMBLE_MODEL, LOGGED_MODEL_NAME, run_logged_models

CHAMPION_ALIAS = "champion"
# The test metrics a registry version carries as tags (its run holds them all).
VERSION_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "test_balanced_accuracy")
# How long a run id is shown: as on the leaderboard's run column.
SHORT_RUN_ID = 8


def tagged_model(tags: Mapping[str, str]) -> str:
    """A run's model tag ('' without one)."""
    # Runs logged before the `model` tag was introduced call it `backbone`.
    return tags.get("model") or tags.get("backbone") or ""


def run_label(run_id: str, run: Run | None) -> str:
    """`vgg16 run 1a2b3c4d`: a run as the leaderboard shows it, after its model tag."""
    model = tagged_model(run.data.tags) if run is not None else ""
    return (f"{model} " if model else "") + f"run {run_id[:SHORT_RUN_ID]}"


def update_champion(
    name: str,
    board: pd.DataFrame,
    rank_by: str,
    fingerprint: str,
    experiment_id: str,
    design: FoldDesign | None = None,
    by: Sequence[str] = (),
) -> dict[str, Any]:
    """Put the champion alias of registered model `name` on the best eligible run of `board`.

    `board` is the leaderboard of data `fingerprint` (cxr.comparison.leaderboard), in
    experiment `experiment_id`. A champion scored on other data, or whose run is not in this
    store, cannot be compared and is kept; another fold of the same cross-validation `design`
    can, by a pooled rank_by (cv_...), whose rows are recipes of the `by` params (compare.by).
    Returns `action`, `reason` (one sentence) and the runs, versions and figures behind them.
    """
    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    held = _get_run(client, champion.run_id) if champion is not None and champion.run_id else None
    status: dict[str, Any] = {}
    stays, held_label = "no champion yet", ""
    if champion is not None:
        held_label = run_label(champion.run_id or "", held)
        status |= {"champion_run": champion.run_id, "champion_version": int(champion.version)}
        stays = f"version {champion.version} ({held_label}) stays champion"
    chosen, passed_over = best_eligible(client, board, rank_by, experiment_id)
    skipped = f" ({'; '.join(passed_over)})" if passed_over else ""
    if chosen is None:
        why = f"no run of the leaderboard can be champion{skipped}"
        return status | {"action": "not_eligible", "reason": f"not eligible: {why}; {stays}"}
    run_id, model_uri, score = chosen
    candidate = client.get_run(run_id)
    label = run_label(run_id, candidate)
    status |= {"candidate_run": run_id, rank_by: score}
    best = f"the leaderboard's best by {rank_by} ({score:.4f}){skipped}"
    if champion is not None:
        kept = f"kept version {champion.version} ({held_label})"
        held_score = held_figure(held, board, rank_by, design, by) if held is not None else None
        if held_score is not None:
            status[f"champion_{rank_by}"] = held_score
        if champion.run_id == run_id:
            return status | {"action": "kept", "reason": f"{kept}: it is {best}"}
        if held is None:
            return status | {
                "action": "kept",
                "reason": f"{kept}: its run is not in this MLflow store, so {label}, {best}, "
                "cannot be compared with it; move the alias by hand "
                "(MlflowClient().set_registered_model_alias) if it should win",
            }
        held_tags = held.data.tags
        # A pooled figure ranks models, not runs: another fold of the same model stays.
        same_design = (
            is_pooled(rank_by)
            and design is not None
            and held_tags.get(CV_DESIGN_TAG) == design.design
        )
        if same_design and run_recipe(held, by) == run_recipe(candidate, by):
            return status | {
                "action": "kept",
                "reason": f"{kept}: its model is {best}, pooled over the folds of this "
                "cross-validation design",
            }
        held_data = held_tags.get("data_fingerprint")
        if held_data != fingerprint and not same_design:
            return status | {
                "action": "kept",
                "reason": f"{kept}: it was scored on other data (fingerprint "
                f"{held_data or 'unknown'}, the current data is {fingerprint}), so {label} at "
                f"{rank_by} {score:.4f} cannot be compared with it; move the alias by hand "
                "(MlflowClient().set_registered_model_alias) if the new data should win",
            }
    version = _version_of(client, name, run_id) or mlflow.register_model(
        model_uri, name, tags=version_tags(candidate, fingerprint)
    )
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    promoted = f"promoted {label} as version {version.version}"
    if champion is None:
        reason = f"{promoted}, the first champion: {best}"
    else:
        before = status.get(f"champion_{rank_by}")
        figure = f"{before:.4f}" if before is not None else f"no {rank_by}"
        reason = f"{promoted}: {best}; version {champion.version} ({held_label}) had {figure}"
    return status | {"action": "promoted", "version": int(version.version), "reason": reason}


def run_recipe(run: Run, by: Sequence[str]) -> str:
    """The board row a run belongs to: its model and `by` params (recipe_label)."""
    return recipe_label(tagged_model(run.data.tags), run.data.params, by)


def held_figure(
    held: Run,
    board: pd.DataFrame,
    rank_by: str,
    design: FoldDesign | None,
    by: Sequence[str] = (),
) -> float | None:
    """The held champion's `rank_by`: its run's metric, or a pooled figure from the board.

    A pooled figure (cv_...) belongs to every fold of the model, not to one run: it is read
    from the board's row of the champion's model (recipe, with `by`) when the champion is a
    fold of `design`.
    """
    if not is_pooled(rank_by):
        return held.data.metrics.get(rank_by)
    if design is None or held.data.tags.get(CV_DESIGN_TAG) != design.design:
        return None
    if rank_by not in board:
        return None
    rows = board[(board["model"] == run_recipe(held, by)) & board[rank_by].notna()]
    return float(rows[rank_by].iloc[0]) if len(rows) else None


def best_eligible(
    client: MlflowClient, board: pd.DataFrame, rank_by: str, experiment_id: str
) -> tuple[tuple[str, str, float] | None, list[str]]:
    """The best run of `board` that can be champion (run id, model URI, score); why others not.

    Only the runs ranked above the chosen one are explained: those are the ones a reader of the
    leaderboard would expect to see crowned.
    """
    passed_over: list[str] = []
    ranked = board.sort_values(rank_by, ascending=False, na_position="last", kind="stable")
    for _, row in ranked.iterrows():
        label = f"{row['model']} run {str(row['run_id'])[:SHORT_RUN_ID]}"
        score = row.get(rank_by)
        if row["model"] == ENSEMBLE_MODEL or score is None or pd.isna(score):
            continue  # the ensemble row is not one model; an unscored run ranks nowhere
        if is_collapsed(row):
            passed_over.append(f"{label} collapsed")
            continue
        model_uri = logged_model_uri(client, str(row["run_id"]), experiment_id)
        if model_uri is None:
            passed_over.append(f"{label} has no logged model (re-run its evaluate)")
            continue
        return (str(row["run_id"]), model_uri, float(score)), passed_over
    return None, passed_over


def logged_model_uri(client: MlflowClient, run_id: str, experiment_id: str) -> str | None:
    """The URI of the classifier evaluate logged for run `run_id` (the latest), or None."""
    models = run_logged_models(client, experiment_id, run_id, LOGGED_MODEL_NAME)
    return models[0].model_uri if models else None


def _version_of(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The newest version of `name` already registered from run `run_id`, if any."""
    try:
        versions = client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda version: int(version.version), default=None)


def version_tags(run: Run, fingerprint: str) -> dict[str, str]:
    """What a registry version says about itself: model, data, run and headline test metrics."""
    tags = {
        "model": run.data.tags.get("model", ""),
        "data_fingerprint": fingerprint,
        "run_id": run.info.run_id,
    }
    for metric in VERSION_METRICS:
        if metric in run.data.metrics:
            tags[metric] = f"{run.data.metrics[metric]:.4f}"
    return tags


def _get_run(client: MlflowClient, run_id: str) -> Run | None:
    """The run, or None when this store does not have it."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def champion_summary(name: str, status: Mapping[str, Any]) -> str:
    """One line: which alias, and what update_champion did and why."""
    return f"Champion `{name}@{CHAMPION_ALIAS}`: {status['reason']}"
