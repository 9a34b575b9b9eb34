"""Stage train: fit one model (params `model`) on the train split, recorded as an MLflow run.

A Keras backbone trains in one phase from scratch, or frozen then fine-tuned when pretrained;
a scikit-learn baseline (stages/baselines.py) is fitted on flattened downscaled pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.keras import MlflowCallback
from sklearn.metrics import accuracy_score, log_loss
from sklearn.utils.class_weight import compute_class_weight

from stages.baselines import BASELINES, build_baseline, fitted_parameter_count, flatten_pixels
from stages.classifier import (
    GOOGLENET_AUX_LOSS_WEIGHT,
    GOOGLENET_AUX_OUTPUTS,
    auxiliary_targets,
    build_classifier,
    googlenet_training_model,
    unfreeze_top_layers,
)
from stages.config import Params, TrainParams, flatten_params, load_params
from stages.devices import AcceleratorPlan, apply_plan, build_info, plan_accelerators, visible_gpus
from stages.errors import report_errors
from stages.features import extract_features, split_at_features, use_cached_features
from stages.images import array_dataset, load_split_pixels
from stages.outputs import read_json, staged_dir, write_json, write_table
from stages.paths import ProjectPaths, paths_from_argv
from stages.schedules import (
    AdaptiveLearningRate,
    FullModelCheckpoint,
    LearningRateLog,
    MainOutputLogs,
    ResumeState,
    learning_rate_for,
)
from stages.tables import class_names, data_fingerprint, label_indices, read_splits
from stages.tracking import run_exists, run_tags, use_experiment

# Outside models/ (a DVC output, deleted before the stage runs) and ignored by git, so an
# interrupted run's last epoch survives until train.resume picks it up.
BACKUP_DIR = ".train_backup"


class EpochMetricsCallback(MlflowCallback):
    """MLflow's Keras callback for per-epoch metrics; logs the optimizer for the first phase only.

    The second phase recompiles with a lower rate; logging its optimizer config again would try
    to change an MLflow param, which MLflow forbids. Both rates are logged from params.yaml.
    """

    def __init__(self, log_optimizer: bool) -> None:
        super().__init__(log_every_epoch=True)
        self.log_optimizer = log_optimizer

    def on_train_begin(self, logs: Any = None) -> None:
        """Log the optimizer config and model summary for the first phase only."""
        if self.log_optimizer:
            super().on_train_begin(logs)


@dataclass(frozen=True)
class Phase:
    """One fit: frozen/scratch or fine-tune, its base rate and global epoch range."""

    name: str
    learning_rate: float
    first_epoch: int
    epochs: int


@dataclass(frozen=True)
class SplitData:
    """Pixels and class indices of the train and val splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    jit_compile: bool,
    auxiliary: bool = False,
) -> None:
    """Adam and sparse categorical cross-entropy; labels are class indices.

    With GoogLeNet's auxiliary classifiers each output gets the loss, the auxiliary ones
    weighted as in the paper, and accuracy is measured on the main output only.
    """
    if auxiliary:
        loss: Any = {name: "sparse_categorical_crossentropy" for name in model.output_names}
        weights = {name: GOOGLENET_AUX_LOSS_WEIGHT for name in GOOGLENET_AUX_OUTPUTS}
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=loss,
            loss_weights={**weights, "predictions": 1.0},
            metrics={"predictions": ["accuracy"]},
            jit_compile=jit_compile,
        )
        return
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def load_split_data(
    paths: ProjectPaths, splits: Mapping[str, pd.DataFrame], names: list[str], image_size: int
) -> SplitData:
    """Train and val pixels from the build's cache at image_size, with class indices."""

    def labels(split: str) -> np.ndarray:
        return label_indices(splits[split]["label"], names)

    def pixels(split: str) -> np.ndarray:
        return load_split_pixels(paths.pixel_cache, splits[split]["cache_index"], image_size)

    return SplitData(pixels("train"), labels("train"), pixels("val"), labels("val"))


def cache_size(paths: ProjectPaths) -> int:
    """Side length of the build's pixel cache."""
    return int(np.load(paths.pixel_cache, mmap_mode="r").shape[1])


def class_weights(mode: str, labels: np.ndarray, class_count: int) -> dict[int, float] | None:
    """Loss weight per class index: `balanced` = n / (classes * count); None when off."""
    if mode == "none":
        return None
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    by_class = {int(label): float(weight) for label, weight in zip(present, weights, strict=True)}
    return {label: by_class.get(label, 1.0) for label in range(class_count)}


def backup_dir(paths: ProjectPaths, params: Params, fingerprint: str) -> Path:
    """Where this run keeps its last-epoch state: one folder per params and data."""
    settings = params.model_dump(mode="json")
    settings["train"].pop("resume")
    key = json.dumps({"params": settings, "data": fingerprint}, sort_keys=True)
    return paths.root / BACKUP_DIR / hashlib.sha256(key.encode()).hexdigest()[:16]


def phase_callbacks(
    train: TrainParams,
    phase: Phase,
    full_model: keras.Model,
    work: Path,
    extra: Sequence[keras.callbacks.Callback],
) -> list[keras.callbacks.Callback]:
    """Rate schedule, early stopping, best checkpoint, history, MLflow and resume callbacks."""
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=train.early_stopping_patience
    )
    checkpoint = FullModelCheckpoint(
        full_model,
        work / "best.weights.h5",
        monitor="val_loss",
        save_best_only=True,
        save_weights_only=True,
    )
    tracked: dict[str, tuple[keras.callbacks.Callback, Sequence[str]]] = {
        "early_stopping": (early_stopping, ("wait", "best", "best_epoch")),
        "checkpoint": (checkpoint, ("best",)),
    }
    schedule: list[keras.callbacks.Callback] = []
    if train.schedule == "constant":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train.reduce_lr_factor, patience=train.reduce_lr_patience
        )
        schedule.append(plateau)
        tracked["plateau"] = (plateau, ("wait", "best", "cooldown_counter"))
    elif train.schedule == "adaptive":
        # The best val-loss checkpoint is restored after every phase anyway.
        adaptive = AdaptiveLearningRate(train.adaptive, restore_best_weights=False)
        schedule.append(adaptive)
        tracked["adaptive"] = (adaptive, ("best_accuracy", "best_val_loss", "wait", "reductions"))
    callbacks = [
        MainOutputLogs(),
        *schedule,
        LearningRateLog(),
        early_stopping,
        checkpoint,
        keras.callbacks.CSVLogger(str(work / "history.csv"), append=True),
        EpochMetricsCallback(log_optimizer=phase.first_epoch == 0),
        *extra,
    ]
    if train.resume:
        callbacks += [
            keras.callbacks.BackupAndRestore(
                str(work / phase.name / "backup"), delete_checkpoint=False
            ),
            ResumeState(work / phase.name / "state", tracked),
        ]
    return callbacks


def completed_epochs(work: Path, phase: Phase) -> int:
    """Epochs of `phase` an interrupted run finished (BackupAndRestore's record), else 0."""
    record = work / phase.name / "backup" / "training_metadata.json"
    if not record.exists():
        return 0
    return int(json.loads(record.read_text(encoding="utf-8"))["epoch"]) - phase.first_epoch


def fit_phase(
    model: keras.Model,
    phase: Phase,
    data: SplitData,
    cached: bool,
    train: TrainParams,
    seed: int,
    plan: AcceleratorPlan,
    work: Path,
    extra: Sequence[keras.callbacks.Callback],
) -> int:
    """Fit one phase, resuming it when asked, end on its best weights; return epochs run."""
    done = work / f"{phase.name}.done.json"
    if train.resume and done.exists():
        model.load_weights(work / f"{phase.name}.weights.h5")
        return int(read_json(done)["epochs_run"])
    fitted, inputs = model, (data.train_images, data.val_images)
    if cached:
        extractor, fitted = split_at_features(model)
        inputs = (
            extract_features(extractor, data.train_images, train.batch_size),
            extract_features(extractor, data.val_images, train.batch_size),
        )
    steps_per_epoch = math.ceil(len(data.train_labels) / train.batch_size)
    rate = learning_rate_for(
        train.schedule, train.cosine, phase.learning_rate, phase.epochs, steps_per_epoch
    )
    auxiliary = train.head.googlenet_aux and not cached
    if auxiliary:
        fitted = googlenet_training_model(model, seed)
    compile_model(fitted, rate, plan.jit_compile, auxiliary)
    train_batches = array_dataset(
        inputs[0], data.train_labels.tolist(), train.batch_size, shuffle_seed=seed
    )
    val_batches = array_dataset(inputs[1], data.val_labels.tolist(), train.batch_size, None)
    if auxiliary:
        train_batches = train_batches.map(auxiliary_targets)
        val_batches = val_batches.map(auxiliary_targets)
    # A resumed phase must see the shuffles the interrupted one would have: every pass over the
    # dataset draws the next order, and keras opens two passes per epoch (it opens the next one
    # when an epoch ends), so those already drawn are drawn again here and dropped. The resume
    # test in tests/test_train.py checks this against an uninterrupted run.
    for _ in range(2 * completed_epochs(work, phase) if train.resume else 0):
        iter(train_batches)
    history = fitted.fit(
        train_batches,
        validation_data=val_batches,
        shuffle=False,  # array_dataset shuffles
        initial_epoch=phase.first_epoch,
        epochs=phase.first_epoch + phase.epochs,
        class_weight=class_weights(train.class_weight, data.train_labels, model.output_shape[-1]),
        verbose=2,
        callbacks=phase_callbacks(train, phase, model, work, extra),
    )
    if (work / "best.weights.h5").exists():
        model.load_weights(work / "best.weights.h5")
    if history.epoch:
        epochs_run = int(history.epoch[-1]) + 1 - phase.first_epoch
    else:  # the interrupted run had finished every epoch of this phase
        epochs_run = completed_epochs(work, phase)
    if train.resume:
        model.save_weights(work / f"{phase.name}.weights.h5")
        write_json(done, {"epochs_run": epochs_run})
    return epochs_run


def fit_phases(
    model: keras.Model,
    backbone: keras.Model,
    pretrained: bool,
    params: Params,
    data: SplitData,
    plan: AcceleratorPlan,
    work: Path,
    extra: Sequence[keras.callbacks.Callback],
) -> tuple[int, bool]:
    """Fit frozen then fine-tuned when pretrained, else end to end; return epochs, cached."""
    train = params.train
    # Freezing random weights would only train the head on noise features, so a backbone
    # without pretrained weights trains end to end in a single phase.
    backbone.trainable = not pretrained
    cached = use_cached_features(train.cache_features, pretrained, model)
    first = Phase("frozen" if pretrained else "scratch", train.learning_rate, 0, train.epochs)
    epochs_run = fit_phase(model, first, data, cached, train, params.seed, plan, work, extra)
    if pretrained and train.fine_tune_epochs > 0 and train.fine_tune_layers > 0:
        unfreeze_top_layers(backbone, train.fine_tune_layers)
        second = Phase(
            "fine_tune", train.fine_tune_learning_rate, epochs_run, train.fine_tune_epochs
        )
        epochs_run += fit_phase(model, second, data, False, train, params.seed, plan, work, extra)
    return epochs_run, cached


def start_run(work: Path, resume: bool, experiment_id: str, tags: dict[str, str]) -> Any:
    """A new MLflow run, or the interrupted run's when resuming, its id kept in `work`."""
    record = work / "mlflow_run.json"
    if resume and record.exists():
        run_id = str(read_json(record)["run_id"])
        if run_exists(run_id):
            return mlflow.start_run(run_id=run_id)
    run = mlflow.start_run(experiment_id=experiment_id, tags=tags)
    if resume:
        write_json(record, {"run_id": run.info.run_id})
    return run


def read_history(csv: Path) -> pd.DataFrame:
    """The epoch log; an epoch repeated after a resume keeps its last row."""
    history = pd.read_csv(csv)
    return history.drop_duplicates("epoch", keep="last").reset_index(drop=True)


def train_keras(
    params: Params,
    paths: ProjectPaths,
    environ: Mapping[str, str],
    extra: Sequence[keras.callbacks.Callback],
) -> dict[str, Any]:
    """Train a Keras classifier, save models/ and the history, log it to MLflow."""
    train = params.train
    splits = read_splits(paths)
    names = class_names(splits)
    fingerprint = data_fingerprint(splits)
    seed_everything(params.seed, train.deterministic)
    plan = plan_accelerators(visible_gpus(), train.mixed_precision, train.jit_compile, environ)
    strategy = apply_plan(plan)
    data = load_split_data(paths, splits, names, train.image_size)
    with strategy.scope():
        model, backbone, pretrained = build_classifier(
            params.model,
            train.image_size,
            names,
            train.weights,
            train.head,
            train.augment,
            params.seed,
        )
    work = backup_dir(paths, params, fingerprint)
    if work.parent.exists():
        # Only this params/data state may be resumed; older states are stale.
        for stale in work.parent.iterdir():
            if stale != work or not train.resume:
                shutil.rmtree(stale)
    work.mkdir(parents=True, exist_ok=True)
    experiment_id = use_experiment(params.mlflow_experiment, paths.root, environ)
    tags = run_tags(params.model, fingerprint, paths.root, environ)
    with (
        staged_dir(paths.models_dir) as staging,
        start_run(work, train.resume, experiment_id, tags) as run,
    ):
        mlflow.log_params(flatten_params(params))
        started = time.perf_counter()
        with strategy.scope():
            epochs_run, cached = fit_phases(
                model, backbone, pretrained, params, data, plan, work, extra
            )
        train_seconds = time.perf_counter() - started
        model.save(staging / paths.model_file.name)
        history = read_history(work / "history.csv")
        metrics = {
            "pretrained": pretrained,
            "parameters": int(model.count_params()),
            "epochs_run": epochs_run,
            "train_seconds": round(train_seconds, 2),
            "best_val_loss": float(history["val_loss"].min()),
            "best_val_accuracy": float(history["val_accuracy"].max()),
            "train_images": len(splits["train"]),
        }
        save_results(
            paths,
            staging / paths.model_file.name,
            run_record(
                run, experiment_id, names, params, "keras", train.image_size, paths, fingerprint
            ),
            {
                "kind": "keras",
                "pretrained": str(pretrained).lower(),
                "cached_features": str(cached).lower(),
                "device": plan.device,
                "strategy": plan.strategy,
                "mixed_precision": str(plan.mixed_precision).lower(),
                "jit_compile": str(plan.jit_compile).lower(),
                **build_info(),
            },
            metrics,
            history,
        )
    shutil.rmtree(work, ignore_errors=True)  # a finished run has nothing to resume
    return metrics


def run_record(
    run: Any,
    experiment_id: str,
    names: list[str],
    params: Params,
    kind: str,
    image_size: int,
    paths: ProjectPaths,
    fingerprint: str,
) -> dict[str, Any]:
    """models/run.json: what evaluate and predict need to load and feed the model."""
    return {
        "run_id": run.info.run_id,
        "experiment_id": experiment_id,
        "class_names": names,
        "backbone": params.model,
        "kind": kind,
        "image_size": image_size,
        "cache_size": cache_size(paths),
        "data_fingerprint": fingerprint,
    }


def save_results(
    paths: ProjectPaths,
    model_file: Path,
    record: dict[str, Any],
    tags: dict[str, str],
    metrics: dict[str, Any],
    history: pd.DataFrame,
) -> None:
    """Write models/run.json and the history; log tags, metrics, model and history to MLflow."""
    write_json(model_file.parent / paths.run_record.name, record)
    mlflow.set_tags(tags)
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
    mlflow.log_artifact(str(model_file), artifact_path="model")
    write_table(paths.history, history)
    mlflow.log_artifact(str(paths.history), artifact_path="plots")


def train_baseline(
    params: Params, paths: ProjectPaths, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Fit a scikit-learn baseline on flattened pixels, save models/ and log it to MLflow."""
    baseline = params.train.baseline
    splits = read_splits(paths)
    names = class_names(splits)
    fingerprint = data_fingerprint(splits)
    data = load_split_data(paths, splits, names, baseline.image_size)
    pipeline = build_baseline(params.model, baseline, params.seed)
    experiment_id = use_experiment(params.mlflow_experiment, paths.root, environ)
    tags = run_tags(params.model, fingerprint, paths.root, environ)
    with (
        staged_dir(paths.models_dir) as staging,
        mlflow.start_run(experiment_id=experiment_id, tags=tags) as run,
    ):
        mlflow.log_params(flatten_params(params))
        started = time.perf_counter()
        pipeline.fit(flatten_pixels(data.train_images), data.train_labels)
        train_seconds = time.perf_counter() - started
        classes = list(range(len(names)))
        scores = {}
        for split, images, labels in (
            ("", data.train_images, data.train_labels),
            ("val_", data.val_images, data.val_labels),
        ):
            probabilities = full_probabilities(pipeline, flatten_pixels(images), len(names))
            scores[f"{split}accuracy"] = accuracy_score(labels, probabilities.argmax(axis=1))
            scores[f"{split}loss"] = log_loss(labels, probabilities, labels=classes)
        # One row in the epoch log keeps the history plot and metrics file of every model.
        history = pd.DataFrame([{"epoch": 0, **scores, "learning_rate": 0.0}])
        metrics = {
            "pretrained": False,
            "parameters": fitted_parameter_count(pipeline),
            "epochs_run": 1,
            "train_seconds": round(train_seconds, 2),
            "best_val_loss": float(scores["val_loss"]),
            "best_val_accuracy": float(scores["val_accuracy"]),
            "train_images": len(splits["train"]),
        }
        joblib.dump(pipeline, staging / paths.sklearn_model_file.name)
        save_results(
            paths,
            staging / paths.sklearn_model_file.name,
            run_record(
                run,
                experiment_id,
                names,
                params,
                "sklearn",
                baseline.image_size,
                paths,
                fingerprint,
            ),
            {"kind": "sklearn", "pretrained": "false", "device": "CPU", **sklearn_info()},
            metrics,
            history,
        )
    return metrics


def full_probabilities(pipeline: Any, rows: np.ndarray, class_count: int) -> np.ndarray:
    """predict_proba with a column for every class, also one absent from the train split."""
    probabilities = np.zeros((len(rows), class_count))
    probabilities[:, pipeline.classes_] = pipeline.predict_proba(rows)
    return probabilities


def sklearn_info() -> dict[str, str]:
    """The scikit-learn version as an MLflow tag."""
    import sklearn

    return {"sklearn_version": sklearn.__version__}


def train_model(
    params: Params,
    paths: ProjectPaths,
    environ: Mapping[str, str],
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Train the model `model` names, write models/ and the metrics; return the metrics."""
    if params.model in BASELINES:
        metrics = train_baseline(params, paths, environ)
    else:
        metrics = train_keras(params, paths, environ, extra_callbacks)
    write_json(paths.metrics("train"), {"backbone": params.model, **metrics})
    return metrics


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the train stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    metrics = train_model(params, paths, dict(os.environ))
    print(
        f"train: {params.model} best val accuracy {metrics['best_val_accuracy']:.3f} "
        f"in {metrics['epochs_run']} epochs -> {paths.models_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
