"""MLflow: one store for the workspace and for every DVC experiment, wherever DVC runs it."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

from stages.errors import PipelineError
from stages.paths import workspace_root

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def tracking_uri(cwd: Path, environ: Mapping[str, str]) -> str:
    """MLFLOW_TRACKING_URI when set, else sqlite:///<workspace>/mlflow.db."""
    configured = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    return f"sqlite:///{workspace_root(cwd) / STORE_FILE}"


def artifact_location(uri: str, cwd: Path) -> str | None:
    """Artifacts beside a SQLite store, so temp experiments never write into their copy."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.is_absolute():
            database = cwd / database
        return (database.resolve().parent / ARTIFACTS_DIR).as_uri()
    # A tracking server or other store decides where its artifacts go.
    return None


def use_experiment(name: str, cwd: Path, environ: Mapping[str, str]) -> str:
    """Point MLflow at the project store and return the id of experiment `name` (created if new)."""
    uri = tracking_uri(cwd, environ)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"mlflow_experiment = {name!r}: this experiment was deleted in {uri}; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            "or choose another name"
        )
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location(uri, cwd)))


def git_commit(cwd: Path) -> str:
    """The commit the code was run from, or `unknown` outside git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip()


def run_tags(
    backbone: str, data_fingerprint: str, cwd: Path, environ: Mapping[str, str]
) -> dict[str, str]:
    """Tags that let compare and a person find the run: backbone, data, code and DVC experiment."""
    commit = git_commit(cwd)
    tags = {
        "backbone": backbone,
        "data_fingerprint": data_fingerprint,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
    }
    experiment_name = environ.get("DVC_EXP_NAME")
    if experiment_name:
        tags["dvc_experiment"] = experiment_name
    return tags


def run_exists(run_id: str) -> bool:
    """Whether the current store holds run `run_id`."""
    try:
        MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True
