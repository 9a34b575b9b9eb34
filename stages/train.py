"""Stage train: fit one backbone (params `model`) on the train split, recorded as an MLflow run."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import pandas as pd
import tensorflow as tf
from mlflow.keras import MlflowCallback

from stages.classifier import build_classifier, unfreeze_top_layers
from stages.config import Params, TrainParams, flatten_params, load_params
from stages.devices import apply_plan, plan_accelerators, visible_gpus
from stages.errors import report_errors
from stages.images import image_dataset
from stages.outputs import staged_dir, write_json, write_table
from stages.paths import ProjectPaths, paths_from_argv
from stages.tables import class_names, data_fingerprint, read_splits
from stages.tracking import run_tags, use_experiment


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


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Adam and sparse categorical cross-entropy; labels are class indices."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def make_callbacks(train: TrainParams, staging: Path) -> list[keras.callbacks.Callback]:
    """Early stopping, LR reduction on plateau, best checkpoint and the CSV history log."""
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=train.early_stopping_patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train.reduce_lr_factor, patience=train.reduce_lr_patience
        ),
        keras.callbacks.ModelCheckpoint(
            staging / "best.weights.h5",
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(str(staging / "history.csv"), append=True),
    ]


def split_inputs(
    table: pd.DataFrame, raw_dir: Path, names: list[str]
) -> tuple[list[Path], list[int]]:
    """Image files and class indices of one split."""
    index = {name: position for position, name in enumerate(names)}
    return [raw_dir / path for path in table["path"]], [index[label] for label in table["label"]]


def fit_phases(
    model: keras.Model,
    backbone: keras.Model,
    pretrained: bool,
    train: TrainParams,
    datasets: tuple[tf.data.Dataset, tf.data.Dataset],
    callbacks: list[keras.callbacks.Callback],
) -> int:
    """Fit frozen then fine-tuned when pretrained, else end to end; return the epochs run."""
    train_data, val_data = datasets
    # Freezing random weights would only train the head on noise features, so a backbone
    # without pretrained weights trains end to end in a single phase.
    backbone.trainable = not pretrained
    compile_model(model, train.learning_rate)
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=train.epochs,
        verbose=2,
        callbacks=[*callbacks, EpochMetricsCallback(log_optimizer=True)],
    )
    epochs_run = len(history.epoch)
    if pretrained and train.fine_tune_epochs > 0 and train.fine_tune_layers > 0:
        unfreeze_top_layers(backbone, train.fine_tune_layers)
        compile_model(model, train.fine_tune_learning_rate)
        history = model.fit(
            train_data,
            validation_data=val_data,
            verbose=2,
            initial_epoch=epochs_run,
            epochs=epochs_run + train.fine_tune_epochs,
            callbacks=[*callbacks, EpochMetricsCallback(log_optimizer=False)],
        )
        epochs_run += len(history.epoch)
    return epochs_run


def train_model(params: Params, paths: ProjectPaths, environ: Mapping[str, str]) -> dict[str, Any]:
    """Train, save models/ and the history, and log everything to a new MLflow run."""
    train = params.train
    splits = read_splits(paths)
    names = class_names(splits)
    fingerprint = data_fingerprint(splits)
    seed_everything(params.seed, train.deterministic)
    plan = plan_accelerators(visible_gpus(), train.mixed_precision, environ)
    strategy = apply_plan(plan)
    batch_size = train.batch_size * strategy.num_replicas_in_sync
    datasets = (
        image_dataset(
            *split_inputs(splits["train"], paths.raw_dir, names),
            train.image_size,
            batch_size,
            shuffle_seed=params.seed,
        ),
        image_dataset(
            *split_inputs(splits["val"], paths.raw_dir, names),
            train.image_size,
            batch_size,
            shuffle_seed=None,
        ),
    )
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
    experiment_id = use_experiment(params.mlflow_experiment, paths.root, environ)
    tags = run_tags(params.model, fingerprint, paths.root, environ)
    with (
        staged_dir(paths.models_dir) as staging,
        mlflow.start_run(experiment_id=experiment_id, tags=tags) as run,
    ):
        mlflow.log_params(flatten_params(params))
        started = time.perf_counter()
        with strategy.scope():
            epochs_run = fit_phases(
                model, backbone, pretrained, train, datasets, make_callbacks(train, staging)
            )
        train_seconds = time.perf_counter() - started
        model.load_weights(staging / "best.weights.h5")
        (staging / "best.weights.h5").unlink()
        model.save(staging / "model.keras")
        history = pd.read_csv(staging / "history.csv")
        (staging / "history.csv").unlink()
        metrics = {
            "pretrained": pretrained,
            "parameters": int(model.count_params()),
            "epochs_run": epochs_run,
            "train_seconds": round(train_seconds, 2),
            "best_val_loss": float(history["val_loss"].min()),
            "best_val_accuracy": float(history["val_accuracy"].max()),
            "train_images": len(splits["train"]),
        }
        write_json(
            staging / paths.run_record.name,
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "class_names": names,
                "backbone": params.model,
                "image_size": train.image_size,
                "data_fingerprint": fingerprint,
            },
        )
        mlflow.set_tags(
            {
                "pretrained": str(pretrained).lower(),
                "device": plan.device,
                "strategy": plan.strategy,
                "mixed_precision": str(plan.mixed_precision).lower(),
                "tensorflow_version": tf.__version__,
                "keras_version": keras.__version__,
            }
        )
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
        mlflow.log_artifact(str(staging / "model.keras"), artifact_path="model")
        write_table(paths.history, history)
        mlflow.log_artifact(str(paths.history), artifact_path="plots")
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
        f"in {metrics['epochs_run']} epochs -> {paths.model_file}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
