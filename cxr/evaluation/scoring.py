"""Scoring the test split: the trained model's predictions and every score evaluate records."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cxr.core.params import EvaluateParams
from cxr.evaluation.metrics import (
    Predictions,
    evaluation_metrics,
    known_label_indices,
    per_source_json,
    per_source_scores,
)
from cxr.models.loading import Predictor
from cxr.models.pixels import ImageRows


def score_test_split(
    predictor: Predictor,
    test: pd.DataFrame,
    images: ImageRows,
    settings: EvaluateParams,
    seed: int,
    batch_size: int,
) -> tuple[Predictions, dict[str, Any], pd.DataFrame | None]:
    """Predict the test images: predictions, scores (CIs, speed), per-source table (or None)."""
    names = predictor.record.class_names
    true = known_label_indices(test, names)
    probabilities, images_per_second = predictor.timed_predict_proba(images, batch_size)
    predictions = Predictions(true, probabilities, names)
    metrics = evaluation_metrics(
        predictions, settings.bootstrap_samples, settings.calibration_bins, seed
    )
    metrics["inference_images_per_second"] = round(images_per_second, 1)
    by_source = per_source_scores(test, true, predictions.predicted, names)
    if by_source is not None:
        metrics["per_source"] = per_source_json(by_source)
    return predictions, metrics, by_source
