"""The MLflow store: one for the workspace and for every DVC experiment, wherever DVC runs it."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from cxr.core.errors import PipelineError
from cxr.core.paths import workspace_root

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# MLflow 3's UI opens an experiment on its GenAI overview (traces) unless this tag says it holds
# model training runs; then it opens on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def tracking_uri(cwd: Path, environ: Mapping[str, str]) -> str:
    """MLFLOW_TRACKING_URI when set, else sqlite:///<workspace>/mlflow.db."""
    configured = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    return f"sqlite:///{workspace_root(cwd) / STORE_FILE}"


def sqlite_database(uri: str, cwd: Path) -> Path | None:
    """The database file of a SQLite store URI (relative to `cwd`), None for any other store."""
    if urlparse(uri).scheme != "sqlite" or not uri.startswith("sqlite:///"):
        return None  # another store, or sqlite:// (a database in memory)
    location = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if location in ("", ":memory:"):
        return None
    database = Path(location)
    return (database if database.is_absolute() else cwd / database).resolve()


def artifact_location(uri: str, cwd: Path) -> str | None:
    """Artifacts beside a SQLite store, so temp experiments never write into their copy."""
    database = sqlite_database(uri, cwd)
    if database is not None:
        return (database.parent / ARTIFACTS_DIR).as_uri()
    # A tracking server or other store decides where its artifacts go.
    return None


@contextlib.contextmanager
def store_lock(uri: str, cwd: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<database>.lock` beside a SQLite store (no-op for other stores).

    MLflow creates a new database's tables in the first process that opens it; two processes
    doing so at once (two queued experiments, two workers of one run) both create them and one
    fails with `table ... already exists`. Under this lock one creates them, the others wait.
    compare also holds it while it moves the registry's champion alias (read, compare, promote).
    """
    database = sqlite_database(uri, cwd)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def use_experiment(name: str, cwd: Path, environ: Mapping[str, str]) -> str:
    """Point MLflow at the project store and return the id of experiment `name` (created if new).

    The store's tables and the experiment are created under store_lock, so processes starting
    at once on a fresh store all find one complete store and one experiment.
    """
    uri = tracking_uri(cwd, environ)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri, cwd):
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)  # creates a new store's tables
        if sqlite_database(uri, cwd) is not None:
            client.search_registered_models(max_results=1)  # opens the registry's side too
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise PipelineError(
                f"mlflow_experiment = {name!r}: this experiment was deleted in {uri}; restore it "
                f"with `mlflow experiments restore --experiment-id {experiment.experiment_id}` "
                "or choose another name"
            )
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag was set
                client.set_experiment_tag(
                    experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND
                )
            return str(experiment.experiment_id)
        try:
            return str(
                client.create_experiment(
                    name, artifact_location(uri, cwd), tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
                )
            )
        except MlflowException as error:
            # A tracking server has no lock of ours: another process may have just created it.
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        created = client.get_experiment_by_name(name)
        if created is None:
            raise PipelineError(f"mlflow_experiment = {name!r}: could not be created in {uri}")
        return str(created.experiment_id)
