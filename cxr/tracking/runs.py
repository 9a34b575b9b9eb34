"""MLflow runs of the stages: tags, opening and reopening, logging results, finding runs."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import ActiveRun
from mlflow.data import get_dataset_source_from_json
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import LoggedModel, RunStatus
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from cxr.core.paths import ProjectPaths, workspace_root
from cxr.core.processes import owner_alive, owner_token
from cxr.core.tables import FoldDesign

# Where evaluate logs its results in a run; compare reads the test predictions back from there.
EVALUATE_ARTIFACTS = "evaluate"
PREDICTIONS_ARTIFACT = f"{EVALUATE_ARTIFACTS}/test_predictions.json"
# The name evaluate gives the MLflow model it logs in a run (the pyfunc); compare finds it so.
LOGGED_MODEL_NAME = "classifier"
# The model tag of compare's ensemble runs: never a single model, never the champion.
ENSEMBLE_MODEL = "ensemble"
# compare's own run holding the leaderboard (table, chart, headline) of one data fingerprint.
LEADERBOARD_MODEL = "leaderboard"
# Tags naming who holds a run open: the checkout, and the process (host+pid+start time), so a
# later train can tell a run left RUNNING by a killed process from one still in progress.
WORKSPACE_TAG = "workspace"
OWNER_TAG = "owner"
# A fold run's cross-validation design (cxr.core.tables.FoldDesign) and its test fold.
CV_DESIGN_TAG = "cv_design"
FOLD_TAG = "fold"
# The split tables a training run logs as its MLflow datasets, by name, with their context.
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


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
    model: str,
    data_fingerprint: str,
    cwd: Path,
    environ: Mapping[str, str],
    design: FoldDesign | None = None,
) -> dict[str, str]:
    """Tags that let compare and a person find the run: model, data, code and DVC experiment.

    A fold of a cross-validation `design` adds cv_design, folds and fold: compare pools the runs
    of one design, whose data fingerprints differ by the test fold.
    """
    commit = git_commit(cwd)
    tags = {
        "model": model,
        "data_fingerprint": data_fingerprint,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
    }
    tags |= design_tags(design)
    experiment_name = environ.get("DVC_EXP_NAME")
    if experiment_name:
        tags["dvc_experiment"] = experiment_name
    return {**tags, **owner_tags(cwd)}


def design_tags(design: FoldDesign | None) -> dict[str, str]:
    """The tags of a fold of cross-validation `design`: cv_design, folds, fold (none without)."""
    if design is None:
        return {}
    return {CV_DESIGN_TAG: design.design, "folds": str(design.folds), FOLD_TAG: str(design.fold)}


def run_name(tags: Mapping[str, str]) -> str | None:
    """The name a run shows in the MLflow UI: its model, and the DVC experiment that ran it."""
    model = tags.get("model")
    if model is None:
        return None  # MLflow picks one
    experiment = tags.get("dvc_experiment")
    return f"{model} ({experiment})" if experiment else model


def owner_tags(cwd: Path) -> dict[str, str]:
    """Tags naming this checkout and this process as the holder of the run it opens."""
    return {WORKSPACE_TAG: str(workspace_root(cwd)), OWNER_TAG: owner_token()}


def open_run(
    experiment_id: str, tags: Mapping[str, str], run_id: str | None, cwd: Path
) -> ActiveRun:
    """Start a new run with `tags`, or reopen `run_id`, in both cases owned by this process.

    A reopened run gets this process's owner tags before it is RUNNING again, so no other train
    ever sees it RUNNING under the (dead) process that held it before.
    """
    owner = owner_tags(cwd)
    if run_id is None:
        return mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name(tags), tags={**tags, **owner}
        )
    client = MlflowClient()
    for key, value in owner.items():
        client.set_tag(run_id, key, value)
    return mlflow.start_run(run_id=run_id)


def end_abandoned_runs(experiment_id: str, cwd: Path, keep: Collection[str] = ()) -> list[str]:
    """Mark KILLED the runs this checkout left RUNNING in processes that have ended; their ids.

    A killed train (or evaluate) cannot end its run; MLflow would show it RUNNING forever. Only
    runs whose owner tags name this checkout and a process of this host that no longer runs
    are ended: runs of live processes (parallel queued experiments) and of other machines are
    left alone, as are the runs in `keep` (the run a resume is about to continue).
    """
    client = MlflowClient()
    workspace = str(workspace_root(cwd))
    running = client.search_runs(
        [experiment_id], f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}'"
    )
    ended = []
    for run in running:
        tags = run.data.tags
        if run.info.run_id in keep or tags.get(WORKSPACE_TAG) != workspace:
            continue
        if OWNER_TAG in tags and not owner_alive(tags[OWNER_TAG]):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            ended.append(run.info.run_id)
    return ended


def run_exists(run_id: str) -> bool:
    """Whether the current store holds run `run_id`."""
    try:
        MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def reopen_run(
    run_id: str, experiment_id: str, tags: Mapping[str, str], cwd: Path | None = None
) -> ActiveRun:
    """Reopen run `run_id`; when this store lacks it, start a new run linked to it instead.

    The new run, in `experiment_id`, carries `tags` and trained_in_run = `run_id`, so compare
    and a person can still tell which training it scores. Either is owned by this process, in
    the checkout of `cwd` (default: the current directory, where DVC runs a stage).
    """
    cwd = Path.cwd() if cwd is None else cwd
    if run_exists(run_id):
        return open_run(experiment_id, tags, run_id, cwd)
    return open_run(experiment_id, {**tags, "trained_in_run": run_id}, None, cwd)


def run_logged_models(
    client: MlflowClient, experiment_id: str, run_id: str, name: str
) -> list[LoggedModel]:
    """The MLflow models named `name` that run `run_id` logged, newest first."""
    return list(
        client.search_logged_models(
            [experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        )
    )


def clear_earlier_results(run_id: str, artifact_path: str, logged_model: str) -> list[str]:
    """Remove what an earlier evaluation logged to run `run_id`; the ids of the models removed.

    MLflow appends: `log_table` adds its rows to a table file already there, `log_model` adds a
    second model of the same name, and a folder logged again keeps the files it no longer has.
    So the run's `artifact_path` folder is deleted, and so are its logged models named
    `logged_model`, except those a registry version points at (the registry serves them).
    """
    client = MlflowClient()
    run = client.get_run(run_id)
    with contextlib.suppress(NotImplementedError):  # a store that cannot delete keeps them
        get_artifact_repository(run.info.artifact_uri).delete_artifacts(artifact_path)
    # A version names its logged model in `source` (models:/<model id>); model_id may be unset.
    registered = {
        str(version.source).removeprefix("models:/")
        for version in client.search_model_versions(f"run_id = '{run_id}'")
    }
    models = run_logged_models(client, run.info.experiment_id, run_id, logged_model)
    removed = []
    for model in models:
        if model.model_id not in registered:
            client.delete_logged_model(model.model_id)
            removed.append(model.model_id)
    return removed


def changed_metrics(metrics: Mapping[str, float], logged: Mapping[str, float]) -> dict[str, float]:
    """The metrics whose value differs from the run's latest `logged` one (all, when new).

    A metric MLflow already holds with the same value is not logged again: each would add a
    second point to its history (MLflow cannot delete one), and a re-evaluation of the same
    model gives the same figures.
    """
    return {
        key: value
        for key, value in metrics.items()
        if key not in logged
        or not (logged[key] == value or math.isnan(logged[key]) and math.isnan(value))
    }


def log_results(
    metrics: Mapping[str, float],
    folders: Mapping[str, Path],
    tables: Mapping[str, pd.DataFrame],
) -> None:
    """Log metrics (the changed ones), folders (artifact path -> folder), tables to the run."""
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.metrics if run else {}
    mlflow.log_metrics(changed_metrics(metrics, logged))
    for artifact_path, folder in folders.items():
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
    for artifact_file, table in tables.items():
        mlflow.log_table(table, artifact_file=artifact_file)


def log_split_datasets(
    paths: ProjectPaths, splits: Mapping[str, pd.DataFrame], fingerprint: str
) -> None:
    """Log the train, val and test tables to the active run as its MLflow datasets.

    Each is named after its split, its digest is the data fingerprint (16 hex digits, within
    MLflow's 36) and its source the table's path in the repository. MLflow keeps the tables'
    schema and size, not their rows; the same dataset logged again (a resumed run) is kept once.
    """
    for split, context in SPLIT_CONTEXTS.items():
        table_path = paths.split_table(split).relative_to(paths.root).as_posix()
        # Built by type: MLflow registers its local-file source twice, so resolving a plain
        # path through its registry warns that the path is ambiguous.
        source = get_dataset_source_from_json(json.dumps({"uri": table_path}), "local")
        with warnings.catch_warnings():
            # Its schema, inferred as log_input logs it, draws MLflow's hint on integer columns
            # (cache_index) in a model's inputs: these tables are no model's inputs.
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column")
            dataset = from_pandas(
                splits[split], source=source, targets="label", name=split, digest=fingerprint
            )
            mlflow.log_input(dataset, context=context)


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
