"""The registry's champion: the alias that names the best model on the current data.

update_champion ends in one of three outcomes, its `action`: `promoted` (the evaluated run is
registered and the alias moves to it), `kept` (the registered champion stays: it scores at least
as high, it is the evaluated run, or it was scored on other data and cannot be compared), or
`not_eligible` (the evaluated run cannot be champion: no logged model, an ensemble, another
store, other data, no ranking metric). `reason` says which and why, with the figures compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr.tracking.runs import ENSEMBLE_MODEL

CHAMPION_ALIAS = "champion"
# The test metrics a registry version carries as tags (its run holds them all).
VERSION_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "test_balanced_accuracy")
# How long a run id is shown: as on the leaderboard's run column.
SHORT_RUN_ID = 8


def run_label(run_id: str, run: Run | None) -> str:
    """`vgg16 run 1a2b3c4d`: a run as the leaderboard shows it, after its model tag."""
    tags = run.data.tags if run is not None else {}
    # Runs logged before the `model` tag was introduced call it `backbone`.
    model = tags.get("model") or tags.get("backbone")
    return (f"{model} " if model else "") + f"run {run_id[:SHORT_RUN_ID]}"


def update_champion(
    name: str, evaluated: Mapping[str, Any], rank_by: str, fingerprint: str
) -> dict[str, Any]:
    """Register the just-evaluated model and move the champion alias to it if it is better.

    Better means a strictly higher `rank_by` on the same data; a champion scored on other data
    cannot be compared and is kept, and an ensemble run never becomes champion (the registry
    serves one model). Returns `action` (promoted, kept or not_eligible), `reason` (one
    sentence) and the runs, versions and figures behind them.
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

    def not_eligible(why: str) -> dict[str, Any]:
        return status | {"action": "not_eligible", "reason": f"not eligible: {why}; {stays}"}

    run_id, model_uri = evaluated.get("mlflow_run_id"), evaluated.get("model_uri")
    if not run_id or not model_uri:
        return not_eligible(
            "metrics/summary/evaluate.json names no logged model (run evaluate first)"
        )
    candidate = _get_run(client, run_id)
    label = run_label(run_id, candidate)
    status["candidate_run"] = run_id
    if candidate is None:
        return not_eligible(f"{label} is not in this MLflow store (check MLFLOW_TRACKING_URI)")
    if candidate.data.tags.get("model") == ENSEMBLE_MODEL:
        return not_eligible(f"{label} averages several models; the registry serves one model")
    candidate_data = candidate.data.tags.get("data_fingerprint")
    if candidate_data != fingerprint:
        return not_eligible(
            f"{label} was evaluated on other data (fingerprint {candidate_data or 'none'}, "
            f"the current data is {fingerprint})"
        )
    score = candidate.data.metrics.get(rank_by)
    if score is None:
        return not_eligible(f"{label} has no {rank_by} (compare.rank_by)")
    status[rank_by] = score
    if champion is not None:
        held_score = held.data.metrics.get(rank_by) if held is not None else None
        held_data = held.data.tags.get("data_fingerprint") if held is not None else None
        kept = f"kept version {champion.version} ({held_label})"
        if held_score is not None:
            status[f"champion_{rank_by}"] = held_score
        if champion.run_id == run_id:
            return status | {
                "action": "kept",
                "reason": f"{kept}: it is the run just evaluated ({rank_by} {score:.4f})",
            }
        if held is None:
            return status | {
                "action": "kept",
                "reason": f"{kept}: its run is not in this MLflow store, so {label} at {rank_by} "
                f"{score:.4f} cannot be compared with it; move the alias by hand "
                "(MlflowClient().set_registered_model_alias) if it should win",
            }
        if held_data != fingerprint:
            return status | {
                "action": "kept",
                "reason": f"{kept}: it was scored on other data (fingerprint "
                f"{held_data or 'unknown'}, the current data is {fingerprint}), so {label} at "
                f"{rank_by} {score:.4f} cannot be compared with it; move the alias by hand "
                "(MlflowClient().set_registered_model_alias) if the new data should win",
            }
        if held_score is not None and score <= held_score:
            return status | {
                "action": "kept",
                "reason": f"{kept}: its {rank_by} {held_score:.4f} is not beaten by {label} "
                f"at {score:.4f}",
            }
    version = mlflow.register_model(model_uri, name, tags=version_tags(candidate, fingerprint))
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    promoted = f"promoted {label} as version {version.version}"
    if champion is None:
        reason = f"{promoted}, the first champion ({rank_by} {score:.4f})"
    else:
        before = status.get(f"champion_{rank_by}")
        figure = f"{before:.4f}" if before is not None else f"no {rank_by}"
        reason = (
            f"{promoted}: {rank_by} {score:.4f} beats version {champion.version}'s {figure} "
            f"({held_label})"
        )
    return status | {"action": "promoted", "version": int(version.version), "reason": reason}


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
