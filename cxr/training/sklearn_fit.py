"""Fitting a scikit-learn baseline (cxr.models.baselines) on flattened downscaled pixels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import accuracy_score, log_loss

from cxr.core.params import Params
from cxr.core.paths import MODEL_FILES
from cxr.models.baselines import build_baseline, fitted_parameter_count, flatten_pixels
from cxr.training.inputs import TrainingData, in_memory
from cxr.training.result import FitResult

# The columns of a Keras epoch log. A baseline fits in one go, without epochs: its log holds
# them and no row, which `dvc plots show` draws as no curve (a row would be a lone dot).
HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")


def full_probabilities(pipeline: Any, rows: np.ndarray, class_count: int) -> np.ndarray:
    """predict_proba with a column for every class, also one absent from the train split."""
    probabilities = np.zeros((len(rows), class_count))
    probabilities[:, pipeline.classes_] = pipeline.predict_proba(rows)
    return probabilities


def split_scores(pipeline: Any, data: TrainingData) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy and log loss on train and val, named like Keras' epoch log; val predictions."""
    classes = list(range(len(data.class_names)))
    scores = {}
    predicted = np.zeros(0, dtype=np.int64)
    for prefix, images, labels in (
        ("", data.train_images, data.train_labels),
        ("val_", data.val_images, data.val_labels),
    ):
        probabilities = full_probabilities(
            pipeline, flatten_pixels(in_memory(images)), len(classes)
        )
        predicted = probabilities.argmax(axis=1)
        scores[f"{prefix}accuracy"] = float(accuracy_score(labels, predicted))
        scores[f"{prefix}loss"] = float(log_loss(labels, probabilities, labels=classes))
    return scores, predicted


def fit_baseline(params: Params, data: TrainingData, out_dir: Path) -> FitResult:
    """Fit baseline `params.model`; save it as <out_dir>/model.joblib."""
    baseline = params.train.baseline
    pipeline = build_baseline(params.model, baseline, params.seed)
    started = time.perf_counter()
    pipeline.fit(flatten_pixels(in_memory(data.train_images)), data.train_labels)
    train_seconds = time.perf_counter() - started
    scores, val_predicted = split_scores(pipeline, data)
    metrics = {
        "pretrained": False,
        "parameters": fitted_parameter_count(pipeline),
        "epochs_run": 0,
        "train_seconds": round(train_seconds, 2),
        "best_val_loss": scores["val_loss"],
        "best_val_accuracy": scores["val_accuracy"],
        # What a Keras run's epoch log holds of the train split, kept here without the log.
        "train_loss": scores["loss"],
        "train_accuracy": scores["accuracy"],
        "train_images": len(data.train_labels),
    }
    model_file = out_dir / MODEL_FILES["sklearn"]
    joblib.dump(pipeline, model_file)
    tags = {"pretrained": "false", "device": "CPU", "sklearn_version": sklearn.__version__}
    history = pd.DataFrame(columns=list(HISTORY_COLUMNS))
    return FitResult(
        "sklearn", baseline.image_size, model_file, metrics, history, tags, val_predicted
    )
