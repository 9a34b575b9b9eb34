"""One training run: fit the model params name, save models/, record it as an MLflow run."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_dir, write_table
from cxr.core.params import Params, RunSettings, flatten_params
from cxr.core.paths import ProjectPaths
from cxr.core.processes import available_cores
from cxr.core.registry import is_baseline
from cxr.core.tables import read_fold_design
from cxr.models.pretrain_record import PretrainedEncoder, pretrained_encoder
from cxr.models.run_record import RunRecord, write_run_record
from cxr.tracking.runs import end_abandoned_runs, log_split_datasets, run_tags
from cxr.tracking.store import use_experiment
from cxr.training.collapse import collapse_reason, collapse_tags
from cxr.training.devices import Accelerators, Cluster, setup_accelerators
from cxr.training.inputs import TrainingData, load_training_data
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
) -> dict[str, Any] | None:
    """Fit `params.model` on the train split; write models/ and the history; return the metrics.

    `runtime` says how: the memory cache's size, whether to resume an interrupted run, and the
    processes that train together (JAX). models/ (model file and run record) appears only when
    the whole run succeeded. Of several processes only process 0 writes anything and returns
    the metrics; the others return None (train_share).
    """
    baseline = is_baseline(params.model)
    image_size = params.train.baseline.image_size if baseline else params.train.image_size
    cluster = Cluster(runtime.coordinator_address, runtime.num_processes, runtime.process_id)
    if cluster.processes > 1 and runtime.resume:
        raise PipelineError(
            f"CXR_RESUME = 1 with CXR_NUM_PROCESSES = {cluster.processes}: a run of several "
            "processes cannot be resumed (only process 0 keeps a backup); unset CXR_RESUME"
        )
    if cluster.processes > 1 and baseline and cluster.process_id > 0:
        print(f"train: {params.model} fits in one process; process 0 fits it")
        return None
    # Devices first: logical CPU devices and JAX's cluster can only be set up before the
    # backend runs anything.
    accelerators = None
    if not baseline:
        train = params.train
        accelerators = setup_accelerators(
            train.mixed_precision, train.jit_compile, environ, cluster, train.deterministic
        )
    memory = None if baseline else runtime.memory_cache_mb  # baselines fit on arrays
    readers = runtime.workers or available_cores()
    data = load_training_data(paths, image_size, memory, readers)
    encoder = None
    if params.pretrain.enabled and not baseline:
        # The backbone starts from the pretrain stage's encoder, refused when stale.
        encoder = pretrained_encoder(
            paths.pretrained_dir, params.model, image_size, data.fingerprint
        )
    init_weights = encoder.weights if encoder is not None else None
    if accelerators is not None:
        # What decides the fit: the same seed, model, train params and data on every host.
        fitted = params.model_dump_json(include={"seed", "model", "train"})
        accelerators.check_same(
            "params (seed, model, train) or data", f"{fitted} {data.fingerprint}"
        )
        if not accelerators.writes_outputs:
            train_share(params, data, accelerators, init_weights)
            return None
    experiment_id = use_experiment(params.mlflow_experiment, paths.root, environ)
    tags = run_tags(params.model, data.fingerprint, paths.root, environ, read_fold_design(paths))
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
            result = fit_keras(
                params, data, accelerators, work, staging, extra_callbacks, init_weights
            )
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
            pretrain_run_id=encoder.run_id if encoder is not None else "",
        )
        write_run_record(staging, record)
        log_fit(result, paths, encoder)
        collapsed = collapse_reason(data.val_labels, result.val_predicted, data.class_names)
        mlflow.set_tags(collapse_tags(collapsed))
    shutil.rmtree(work, ignore_errors=True)  # a finished run has nothing to resume
    if accelerators is not None:
        accelerators.wait_for_writer()
    if collapsed is not None:
        print(f"warning: train: {params.model} collapsed: {collapsed}", file=sys.stderr)
    return result.metrics | {"collapsed": collapsed is not None, "collapse_reason": collapsed}


def train_share(
    params: Params,
    data: TrainingData,
    accelerators: Accelerators,
    init_weights: Path | None = None,
) -> None:
    """Process k > 0 of a run: the same fit as process 0, its files in a temporary folder.

    Every process runs every step of the fit (each is a collective), writing its checkpoints
    where process 0 writes its own; here they go to a folder outside the workspace, deleted at
    the end, and no MLflow run is opened. Then it waits for process 0 to have written the run.
    """
    plan = accelerators.plan
    with tempfile.TemporaryDirectory(prefix="cxr-train-share-") as scratch:
        work, out_dir = Path(scratch) / "work", Path(scratch) / "models"
        work.mkdir()
        out_dir.mkdir()
        fit_keras(params, data, accelerators, work, out_dir, init_weights=init_weights)
    accelerators.wait_for_writer()
    print(
        f"train: process {plan.process_id} of {plan.processes} trained its share of "
        f"{params.model}; process 0 wrote the model, the metrics and the MLflow run"
    )


def log_fit(
    result: FitResult, paths: ProjectPaths, encoder: PretrainedEncoder | None = None
) -> None:
    """Write the epoch history; log tags, metrics, the model file and the history to MLflow.

    A backbone started from a pre-training (`encoder`) names its MLflow run: pretrain_run_id.
    """
    pretraining = {"pretrain_run_id": encoder.run_id} if encoder is not None else {}
    mlflow.set_tags({"kind": result.kind, **result.tags, **pretraining})
    # None is a figure that does not exist (best_val_loss of a diverged run): not logged.
    numbers = {key: float(value) for key, value in result.metrics.items() if value is not None}
    mlflow.log_metrics(numbers)
    mlflow.log_artifact(str(result.model_file), artifact_path="model")
    write_table(paths.history, result.history)
    mlflow.log_artifact(str(paths.history), artifact_path="plots")
