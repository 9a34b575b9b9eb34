"""One training run: fit the model params name, save models/, record it as an MLflow run."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import mlflow

from cxr.core.outputs import staged_dir, write_table
from cxr.core.params import Params, RunSettings, flatten_params
from cxr.core.paths import ProjectPaths
from cxr.core.registry import is_baseline
from cxr.models.run_record import RunRecord, write_run_record
from cxr.tracking.runs import end_abandoned_runs, log_split_datasets, run_tags
from cxr.tracking.store import use_experiment
from cxr.training.collapse import collapse_reason, collapse_tags
from cxr.training.devices import setup_accelerators
from cxr.training.inputs import load_training_data
from cxr.training.keras_fit import fit_keras
from cxr.training.result import FitResult
from cxr.training.resume import fresh_backup_dir, interrupted_run, start_resumable_run
from cxr.training.sklearn_fit import fit_baseline


def train_model(
    params: Params,
    runtime: RunSettings,
    paths: ProjectPaths,
    environ: Mapping[str, str],
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Fit `params.model` on the train split; write models/ and the history; return the metrics.

    `runtime` says how: the memory cache's size, and whether to resume an interrupted run.
    models/ (model file and run record) appears only when the whole run succeeded.
    """
    baseline = is_baseline(params.model)
    image_size = params.train.baseline.image_size if baseline else params.train.image_size
    # Devices first: logical CPU devices can only be set up before TensorFlow runs, and
    # loading the pixels already runs it (resizing).
    accelerators = None
    if not baseline:
        train = params.train
        accelerators = setup_accelerators(train.mixed_precision, train.jit_compile, environ)
    memory = None if baseline else runtime.memory_cache_mb  # baselines fit on arrays
    data = load_training_data(paths, image_size, memory)
    experiment_id = use_experiment(params.mlflow_experiment, paths.root, environ)
    tags = run_tags(params.model, data.fingerprint, paths.root, environ)
    work = fresh_backup_dir(paths, params, data.fingerprint, runtime.resume)
    # A baseline fits in one go; only Keras runs keep per-epoch state to resume from.
    resumed = interrupted_run(work) if runtime.resume and not baseline else None
    for run_id in end_abandoned_runs(experiment_id, paths.root, keep=[resumed] if resumed else []):
        print(f"train: MLflow run {run_id} was left RUNNING by a process that ended; now KILLED")
    with (
        staged_dir(paths.models_dir) as staging,
        start_resumable_run(work, resumed, experiment_id, tags, paths.root) as run,
    ):
        if resumed is not None:
            print(f"train: resuming MLflow run {resumed} from {work}")
        # A resumed run keeps the params it logged (MLflow refuses to log one twice with
        # another value); they are the same, since the backup folder is keyed by all of them.
        logged = run.data.params
        mlflow.log_params({k: v for k, v in flatten_params(params).items() if k not in logged})
        log_split_datasets(paths, data.splits, data.fingerprint)
        if accelerators is None:
            result = fit_baseline(params, data, staging)
        else:
            result = fit_keras(params, data, accelerators, work, staging, extra_callbacks)
        record = RunRecord(
            run_id=run.info.run_id,
            experiment_id=experiment_id,
            class_names=tuple(data.class_names),
            model=params.model,
            kind=result.kind,
            image_size=result.image_size,
            cache_size=data.cache_size,
            resize=params.build.resize,
            dicom_window=params.build.dicom.decoding_window,
            data_fingerprint=data.fingerprint,
        )
        write_run_record(staging, record)
        log_fit(result, paths)
        collapsed = collapse_reason(data.val_labels, result.val_predicted, data.class_names)
        mlflow.set_tags(collapse_tags(collapsed))
    shutil.rmtree(work, ignore_errors=True)  # a finished run has nothing to resume
    if collapsed is not None:
        print(f"warning: train: {params.model} collapsed: {collapsed}", file=sys.stderr)
    return result.metrics | {"collapsed": collapsed is not None, "collapse_reason": collapsed}


def log_fit(result: FitResult, paths: ProjectPaths) -> None:
    """Write the epoch history; log tags, metrics, the model file and the history to MLflow."""
    mlflow.set_tags({"kind": result.kind, **result.tags})
    # None is a figure that does not exist (best_val_loss of a diverged run): not logged.
    numbers = {key: float(value) for key, value in result.metrics.items() if value is not None}
    mlflow.log_metrics(numbers)
    mlflow.log_artifact(str(result.model_file), artifact_path="model")
    write_table(paths.history, result.history)
    mlflow.log_artifact(str(paths.history), artifact_path="plots")
