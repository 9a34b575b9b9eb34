"""Tiny trained projects and MLflow runs for the evaluate, compare, predict and serving tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient
from PIL import Image

from cxr.core.paths import SPLITS, ProjectPaths
from cxr.core.tables import data_fingerprint
from cxr.models.run_record import RunRecord, write_run_record
from cxr.tracking.runs import PREDICTIONS_ARTIFACT

NAMES = ["covid", "normal"]
CACHE_SIZE = 32
IMAGE_SIZE = 16


def phantom_pixels(count: int, seed: int, size: int = CACHE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Gray squares: label 0 (covid) carries a bright blob, label 1 (normal) does not."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    pixels = rng.normal(80, 10, (count, size, size))
    for index in np.flatnonzero(labels == 0):
        row, column = rng.integers(2, size - size // 3, size=2)
        pixels[index, row : row + size // 4, column : column + size // 4] += 120
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


def tiny_keras_model(image_size: int = IMAGE_SIZE, classes: int = 2) -> keras.Model:
    """A small CNN with the contract's layer names: image, backbone_input, backbone, head_pool."""
    inputs = keras.Input((image_size, image_size, 1), name="image")
    scaled = keras.layers.Rescaling(1 / 255, name="backbone_input")(inputs)
    backbone = keras.Sequential(
        [
            keras.Input((image_size, image_size, 1)),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
        ],
        name="backbone",
    )
    features = keras.layers.GlobalMaxPooling2D(name="head_pool")(backbone(scaled))
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(features)
    return keras.Model(inputs, outputs, name="cxr_tiny")


def write_project(
    root: Path,
    run_id: str = "0" * 32,
    experiment_id: str = "0",
    sources: tuple[str, ...] = ("",),
    per_split: int = 12,
    epochs: int = 3,
) -> ProjectPaths:
    """A project after build, split and train: pixel cache, split tables, raw PNGs, models/."""
    paths = ProjectPaths(root)
    count = per_split * len(SPLITS)
    pixels, labels = phantom_pixels(count, seed=7)
    paths.pixel_cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(paths.pixel_cache, pixels)
    paths.split_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for position, split in enumerate(SPLITS):
        rows = np.arange(position * per_split, (position + 1) * per_split)
        table = pd.DataFrame(
            {
                "path": [f"{NAMES[labels[row]]}/{row:03d}.png" for row in rows],
                "label": [NAMES[labels[row]] for row in rows],
                "sha256": [f"{row:064x}" for row in rows],
                "group": "",
                "source": [sources[row % len(sources)] for row in rows],
                "cache_index": rows,
            }
        )
        for row in rows:
            file = paths.raw_dir / f"{NAMES[labels[row]]}/{row:03d}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[row]).save(file)
        table.to_parquet(paths.split_table(split))
        splits[split] = table
    keras.utils.set_random_seed(0)
    model = tiny_keras_model()
    train_rows = splits["train"]["cache_index"].to_numpy()
    small = pixels[train_rows].reshape(-1, IMAGE_SIZE, 2, IMAGE_SIZE, 2).mean(axis=(2, 4))
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(small[..., np.newaxis], labels[train_rows], epochs=epochs, verbose=0)
    paths.models_dir.mkdir(parents=True, exist_ok=True)
    model.save(paths.model_file("keras"))
    record = RunRecord(
        run_id=run_id,
        experiment_id=experiment_id,
        class_names=tuple(NAMES),
        model="tiny",
        kind="keras",
        image_size=IMAGE_SIZE,
        cache_size=CACHE_SIZE,
        resize="pad",
        data_fingerprint=data_fingerprint(splits),
    )
    write_run_record(paths.models_dir, record)
    return paths


def sklearn_models_dir(models_dir: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    """models/ holding a fitted pixel logistic regression (kind sklearn) and its run.json."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    small = pixels.reshape(-1, IMAGE_SIZE, 2, IMAGE_SIZE, 2).mean(axis=(2, 4))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(small.reshape(len(small), -1).round().astype(np.uint8), labels)
    models_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(
        run_id="1" * 32,
        experiment_id="0",
        class_names=tuple(NAMES),
        model="pixel_logreg",
        kind="sklearn",
        image_size=IMAGE_SIZE,
        cache_size=CACHE_SIZE,
        resize="pad",
        data_fingerprint="none",
    )
    joblib.dump(model, models_dir / record.model_file)
    write_run_record(models_dir, record)
    return models_dir


class Constant(PythonModel):  # type: ignore[misc]
    """A stand-in servable model: registering needs a logged MLflow model, not a good one."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input


def log_run(
    experiment_id: str,
    model: str,
    fingerprint: str,
    accuracy: float | None,
    correct: list[bool] | None = None,
    with_model: bool = False,
    model_tag: str = "model",
) -> tuple[str, str | None]:
    """A real MLflow run shaped like one made by train + evaluate; (run id, model URI).

    `model_tag` is the tag naming the model: `backbone` makes a run logged before the rename.
    """
    model_uri = None
    with mlflow.start_run(
        experiment_id=experiment_id,
        tags={model_tag: model, "data_fingerprint": fingerprint, "pretrained": "false"},
    ) as run:
        mlflow.log_metrics({"parameters": 1234.0, "train_seconds": 12.0})
        if accuracy is not None:
            mlflow.log_metrics(
                {
                    "test_accuracy": accuracy,
                    "test_accuracy_ci_low": accuracy - 0.1,
                    "test_accuracy_ci_high": min(1.0, accuracy + 0.1),
                    "test_f1_macro": accuracy - 0.1,
                    "test_roc_auc_ovr": 0.9,
                    "test_balanced_accuracy": accuracy - 0.05,
                    "test_covid_sensitivity": 0.8,
                    "inference_images_per_second": 250.0,
                }
            )
        if correct is not None:
            table = pd.DataFrame(
                {
                    "path": [f"covid/{i}.png" for i in range(len(correct))],
                    "sha256": [f"{i:064x}" for i in range(len(correct))],
                    "actual": "covid",
                    "predicted": ["covid" if right else "normal" for right in correct],
                }
            )
            mlflow.log_table(table.sample(frac=1, random_state=0), PREDICTIONS_ARTIFACT)
        if with_model:
            model_uri = mlflow.pyfunc.log_model(
                name="classifier", python_model=Constant(), pip_requirements=["mlflow"]
            ).model_uri
    return run.info.run_id, model_uri


def log_scored_run(
    experiment_id: str,
    model: str,
    fingerprint: str,
    actual: list[str],
    p_covid: list[float],
    first_image: int = 0,
    with_model: bool = False,
) -> str:
    """A log_run whose logged test predictions carry probabilities (p_covid, p_normal); its id.

    Image i is `img/<first_image + i>.png`, so runs given the same `first_image` share images.
    """
    probabilities = np.column_stack([p_covid, 1 - np.asarray(p_covid)])
    predicted = [NAMES[index] for index in probabilities.argmax(axis=1)]
    correct = [guess == truth for guess, truth in zip(predicted, actual, strict=True)]
    accuracy = float(np.mean(correct))
    run_id, _ = log_run(experiment_id, model, fingerprint, accuracy, with_model=with_model)
    images = range(first_image, first_image + len(actual))
    table = pd.DataFrame(
        {
            "path": [f"img/{i}.png" for i in images],
            "sha256": [f"{i:064x}" for i in images],
            "source": "",
            "actual": actual,
            "predicted": predicted,
            "correct": correct,
            "confidence": probabilities.max(axis=1),
            **{f"p_{name}": probabilities[:, i] for i, name in enumerate(NAMES)},
        }
    )
    MlflowClient().log_table(run_id, table.sample(frac=1, random_state=0), PREDICTIONS_ARTIFACT)
    return run_id


def run_cxr_predict(args: list[str], cwd: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Run the installed `cxr-predict` command quietly (no CXR_VERBOSE); its output lines.

    stdout and stderr are read together, in the order the command wrote them.
    """
    command = Path(sys.executable).with_name("cxr-predict")
    env = {key: value for key, value in os.environ.items() if key != "CXR_VERBOSE"}
    result = subprocess.run(
        [str(command), *args],
        cwd=cwd,
        env={**env, **(environ or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    return result.stdout.splitlines()
