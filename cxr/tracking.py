"""MLflow: one store for the workspace and for every DVC experiment, wherever DVC runs it."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow import ActiveRun
from mlflow.tracking import MlflowClient

from cxr.core.errors import PipelineError
from cxr.core.paths import workspace_root

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# Where evaluate logs its results in a run; compare reads the test predictions back from there.
EVALUATE_ARTIFACTS = "evaluate"
PREDICTIONS_ARTIFACT = f"{EVALUATE_ARTIFACTS}/test_predictions.json"
# The model tag of compare's ensemble runs: never a single model, never the champion.
ENSEMBLE_MODEL = "ensemble"


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
    model: str, data_fingerprint: str, cwd: Path, environ: Mapping[str, str]
) -> dict[str, str]:
    """Tags that let compare and a person find the run: model, data, code and DVC experiment."""
    commit = git_commit(cwd)
    tags = {
        "model": model,
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


def reopen_run(run_id: str, experiment_id: str, tags: Mapping[str, str]) -> ActiveRun:
    """Reopen run `run_id`; when this store lacks it, start a new run linked to it instead.

    The new run, in `experiment_id`, carries `tags` and trained_in_run = `run_id`, so compare
    and a person can still tell which training it scores.
    """
    if run_exists(run_id):
        return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(experiment_id=experiment_id, tags={**tags, "trained_in_run": run_id})


def log_results(
    metrics: Mapping[str, float],
    folders: Mapping[str, Path],
    tables: Mapping[str, pd.DataFrame],
) -> None:
    """Log metrics, folders (artifact path -> folder) and tables (file -> table) to the run."""
    mlflow.log_metrics(dict(metrics))
    for artifact_path, folder in folders.items():
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
    for artifact_file, table in tables.items():
        mlflow.log_table(table, artifact_file=artifact_file)


def tag_run(tags: Mapping[str, str]) -> None:
    """Set `tags` on the active run."""
    mlflow.set_tags(dict(tags))


def find_run(experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The newest active run of the experiment carrying all of `tags`, or None."""
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    runs = MlflowClient().search_runs(
        [experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None
