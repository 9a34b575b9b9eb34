"""The registry's champion: the alias that names the best model on the current data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr.tracking import ENSEMBLE_MODEL

CHAMPION_ALIAS = "champion"


def update_champion(
    name: str, evaluated: Mapping[str, Any], rank_by: str, fingerprint: str
) -> dict[str, Any]:
    """Register the just-evaluated model and move the champion alias to it if it is better.

    Better means a strictly higher `rank_by` on the same data; a champion scored on other data
    cannot be compared and is left alone, and an ensemble run never becomes champion (the
    registry serves one model). Returns what happened and why.
    """
    run_id, model_uri = evaluated.get("mlflow_run_id"), evaluated.get("model_uri")
    if not run_id or not model_uri:
        return {"action": "none", "reason": "metrics/evaluate.json names no logged model"}
    client = MlflowClient()
    candidate = client.get_run(run_id)
    if candidate.data.tags.get("model") == ENSEMBLE_MODEL:
        return {"action": "none", "reason": f"run {run_id} is an ensemble, not a single model"}
    score = candidate.data.metrics.get(rank_by)
    if candidate.data.tags.get("data_fingerprint") != fingerprint or score is None:
        return {"action": "none", "reason": f"run {run_id} has no {rank_by} on the current data"}
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    status: dict[str, Any] = {"candidate_run": run_id, rank_by: score}
    if champion is not None:
        held = client.get_run(champion.run_id) if champion.run_id else None
        held_score = held.data.metrics.get(rank_by) if held else None
        status |= {"champion_run": champion.run_id, "champion_version": int(champion.version)}
        if champion.run_id == run_id:
            return status | {"action": "none", "reason": "the current model is the champion"}
        if held is None or held.data.tags.get("data_fingerprint") != fingerprint:
            return status | {
                "action": "none",
                "reason": "the champion was scored on other data; move the alias by hand "
                "(MlflowClient().set_registered_model_alias) if the new data should win",
            }
        if held_score is not None and score <= held_score:
            return status | {
                "action": "none",
                "reason": f"{rank_by} {score:.4f} does not beat the champion's {held_score:.4f}",
            }
    version = mlflow.register_model(
        model_uri,
        name,
        tags={"data_fingerprint": fingerprint, rank_by: f"{score:.6f}"},
    )
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    return status | {
        "action": "promoted",
        "version": int(version.version),
        "reason": "first champion" if champion is None else "beats the champion",
    }


def champion_summary(name: str, status: Mapping[str, Any]) -> str:
    """One line: which alias, what update_champion did and why."""
    return f"Champion `{name}@{CHAMPION_ALIAS}`: {status['action']} ({status['reason']})"
