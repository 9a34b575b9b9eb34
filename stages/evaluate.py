"""Stage evaluate: score the trained model on the test split, log the results to its MLflow run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr.core.errors import report_errors
from cxr.core.outputs import staged_dir, write_results, write_table
from cxr.core.params import EvaluateParams, load_params, run_settings
from cxr.core.paths import ProjectPaths, paths_from_argv
from cxr.core.tables import read_fold_design, read_table
from cxr.evaluation.figures import draw_evaluation_figures, write_plots_data
from cxr.evaluation.metrics import (
    ARGMAX,
    evaluation_line,
    flat_metrics,
    known_label_indices,
    prediction_table,
)
from cxr.evaluation.operating_point import ARGMAX_RECORD, with_decision
from cxr.evaluation.scoring import score_test_split
from cxr.evaluation.tta import with_tta
from cxr.models.loading import Predictor, load_models_dir
from cxr.models.pixels import CachedImages
from cxr.serving.pyfunc import log_classifier
from cxr.tracking.runs import (
    EVALUATE_ARTIFACTS,
    LOGGED_MODEL_NAME,
    PREDICTIONS_ARTIFACT,
    clear_earlier_results,
    design_tags,
    log_results,
    reopen_run,
    tag_run,
)
from cxr.tracking.store import use_experiment

# Kept out of metrics/summary/evaluate.json: the interval pairs (also written as <name>_ci_low /
# _ci_high) and the Grad-CAM sentence (printed, and tagged on the MLflow run).
NOT_METRICS = ("confidence_intervals", "gradcam")
# The DVC metrics of evaluate (metrics/evaluate.json): `dvc metrics show` and `dvc exp show` print
# one column per key, so the per-class scores, intervals and ids stay in the summary.
EVALUATE_HEADLINE = (
    "test_accuracy",
    "test_f1_macro",
    "test_roc_auc_ovr",
    "test_balanced_accuracy",
    "test_covid_sensitivity",
)


def decided(
    predictor: Predictor, settings: EvaluateParams, paths: ProjectPaths, batch_size: int
) -> tuple[Predictor, dict[str, Any]]:
    """`predictor` deciding by evaluate.decision, fit on the validation split's predictions."""
    if settings.decision == ARGMAX:
        return predictor, dict(ARGMAX_RECORD)
    val = read_table(paths.split_table("val"))
    images = CachedImages(paths.pixel_cache, val["cache_index"], predictor.image_size)
    true = known_label_indices(val, predictor.class_names)
    probabilities, _ = predictor.timed_predict_proba(images, batch_size)
    return with_decision(
        predictor, settings.decision, settings.target_sensitivity, true, probabilities
    )


def evaluate(
    settings: EvaluateParams,
    seed: int,
    max_pixels: int,
    experiment: str,
    paths: ProjectPaths,
    environ: Mapping[str, str],
    batch_size: int,
) -> dict[str, Any]:
    """Predict the test split, write metrics, plots and figures, and log them to the train run."""
    predictor, tta = with_tta(load_models_dir(paths.models_dir), settings.tta)
    record = predictor.record
    predictor, decision = decided(predictor, settings, paths, batch_size)
    test = read_table(paths.split_table("test"))
    # Read a chunk at a time while predicting, and again only for the images the figures show.
    images = CachedImages(paths.pixel_cache, test["cache_index"], record.image_size)
    predictions, metrics, by_source = score_test_split(
        predictor, test, images, settings, seed, batch_size
    )
    metrics |= tta | decision
    per_image = prediction_table(test, predictions)
    with (
        staged_dir(paths.evaluate_plots) as plots_dir,
        staged_dir(paths.reports("evaluate")) as figures_dir,
    ):
        write_plots_data(plots_dir, predictions, settings.calibration_bins)
        metrics |= draw_evaluation_figures(
            figures_dir, predictor.model, images, predictions, per_image, settings, seed
        )
        if by_source is not None:
            write_table(figures_dir / "per_source.csv", by_source)
        experiment_id = use_experiment(experiment, paths.root, environ)
        # A new run (the train run is not in this store) is pooled like its fold's train run.
        linked = {
            "model": record.model,
            "data_fingerprint": record.data_fingerprint,
            **design_tags(read_fold_design(paths)),
        }
        with reopen_run(record.run_id, experiment_id, linked, paths.root) as run:
            tag_run(
                {
                    "tta": str(settings.tta).lower(),
                    "decision": settings.decision,
                    "gradcam": metrics["gradcam"],
                }
            )
            # Evaluated before (evaluate params or code changed, or `dvc repro -f`): replace.
            clear_earlier_results(run.info.run_id, EVALUATE_ARTIFACTS, LOGGED_MODEL_NAME)
            log_results(
                flat_metrics(metrics),
                {EVALUATE_ARTIFACTS: figures_dir, f"{EVALUATE_ARTIFACTS}/plots": plots_dir},
                {PREDICTIONS_ARTIFACT: per_image},
            )
            example = images[0] if len(images) else np.zeros((8, 8), np.uint8)
            model_uri = log_classifier(paths.models_dir, record, example, max_pixels)
    if run.info.run_id != record.run_id:
        print(f"evaluate: MLflow run {record.run_id} is not in this store; logged to a new run")
    metrics["mlflow_run_id"], metrics["model_uri"] = run.info.run_id, model_uri
    write_table(paths.predictions, per_image)
    recorded = {key: value for key, value in metrics.items() if key not in NOT_METRICS}
    write_results(paths.summary("evaluate"), paths.metrics("evaluate"), recorded, EVALUATE_HEADLINE)
    return metrics


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluate stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    metrics = evaluate(
        params.evaluate,
        params.seed,
        params.build.max_pixels,
        params.mlflow_experiment,
        paths,
        dict(os.environ),
        run_settings(os.environ).inference_batch_size,
    )
    print(f"evaluate: {evaluation_line(metrics)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
