"""External validation: another source's images, read as the training data was, and scored.

An external dataset (evaluate.external.<name>) goes through the training data's own code:
ingest (cxr.ingestion.ingest) copies its source into data/external/<name>/raw and labels its
files, cxr.images.pixel_cache decodes them at the model's cache size and resize mode, and the
trained model scores them on the classes they share with it, its probabilities renormalised over
those classes. Beside the scores: the drop from the internal test figure on the same classes,
and a source-shortcut check (can a pixel classifier tell the two sources apart?).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TextIO

import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.outputs import read_json, staged_dir, staged_file, write_json, write_table
from cxr.core.params import (
    DataParams,
    ExternalDataParams,
    Params,
    RunSettings,
    external_metric,
)
from cxr.core.paths import SPLITS, ExternalDataPaths, ProjectPaths
from cxr.core.tables import label_indices, read_table
from cxr.core.warnings import DataWarnings
from cxr.evaluation.figures import draw_confusion, draw_curves
from cxr.evaluation.metrics import (
    Predictions,
    prediction_table,
)
from cxr.evaluation.operating_point import with_evaluated_decision
from cxr.evaluation.tta import with_tta
from cxr.external.reports import mlflow_metrics, summary_markdown
from cxr.external.scores import (
    class_note,
    drops,
    external_scores,
    internal_reference,
    on_shared_classes,
    shared_classes,
)
from cxr.external.shortcut import (
    shortcut_sample,
    source_shortcut,
)
from cxr.images.pixel_cache import decode_into_cache
from cxr.ingestion.ingest import ingest, ingest_metrics
from cxr.models.loading import Predictor, load_models_dir
from cxr.models.pixels import load_split_pixels
from cxr.tracking.runs import log_results, reopen_run, tag_run
from cxr.tracking.store import use_experiment

# Where the external figures go in the model's MLflow run: external/<name>/.
EXTERNAL_ARTIFACTS = "external"

# Kept out of metrics/external/<name>.json, where `dvc exp show` prints a column per key: lists
# and sentences. summary.md and the printed lines say them, the MLflow tag
# external_<name>_classes names the classes scored, and the source is in params.yaml.
NOT_METRICS = (
    "confidence_intervals",
    "classes_scored",
    "model_classes",
    "class_note",
    "source_shortcut_note",
    "source",
)


def external_dataset(params: Params, name: str) -> ExternalDataParams:
    """The options of evaluate.external.<name>, or one line listing the names there are."""
    if name not in params.evaluate.external:
        names = ", ".join(sorted(params.evaluate.external)) or "none"
        raise PipelineError(f"evaluate.external.{name}: not in params.yaml (datasets: {names})")
    return params.evaluate.external[name]


def as_external_keys(text: str, name: str) -> str:
    """`text` with each data.<option> named evaluate.external.<name>.<option>: what was set."""
    options = "|".join(DataParams.model_fields)
    return re.sub(rf"\bdata\.(?=(?:{options})\b)", f"evaluate.external.{name}.", text)


class ExternalWarnings(DataWarnings):
    """Ingest's warnings about an external dataset, naming its evaluate.external.<name> keys."""

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.name = name

    def warn(self, kind: str, message: str) -> None:
        """Print and count the warning, its data.<option> keys renamed (as_external_keys)."""
        super().warn(kind, as_external_keys(message, self.name))


def without_internal_copies(
    images: pd.DataFrame, splits: Mapping[str, pd.DataFrame], name: str, warned: DataWarnings
) -> tuple[pd.DataFrame, int]:
    """The external images less byte-identical copies of internal ones (the model saw them)."""
    internal = set().union(*(set(table["sha256"]) for table in splits.values()))
    copies = images["sha256"].isin(internal).to_numpy()
    if copies.any():
        warned.warn(
            "copies_of_internal_images",
            f"evaluate.external.{name}: {int(copies.sum())} image(s) are byte-identical to "
            f"images of the training data (e.g. {images.loc[copies, 'path'].iloc[0]}); left out "
            "of its scores",
        )
    return images[~copies].reset_index(drop=True), int(copies.sum())


def _ingest_and_decode(
    dataset: ExternalDataParams,
    params: Params,
    paths: ExternalDataPaths,
    model: Predictor,
    workers: int,
) -> tuple[pd.DataFrame, dict[str, Any], ExternalWarnings]:
    """Ingest and decode the dataset as the training data was (on `workers`); images and counts."""
    name, record = paths.name, model.record
    warned = ExternalWarnings(name)
    try:
        ingested = ingest(dataset, paths, warned, workers)
    except PipelineError as error:
        raise PipelineError(as_external_keys(str(error), name)) from None
    shared_classes(name, ingested.counts, record.class_names)  # fail before decoding
    # The model's own cache size, resize mode and DICOM window: its images met it so.
    build = params.build.model_copy(
        update={
            "cache_size": record.cache_size,
            "resize": record.resize,
            "dicom": params.build.dicom.model_copy(update={"window": record.dicom_window}),
        }
    )
    with staged_file(paths.pixel_cache) as staging:
        images, rejected = decode_into_cache(
            ingested.manifest, paths.raw_dir, build, staging, workers
        )
    write_table(paths.images_table, images)
    write_table(paths.rejected_table, rejected)
    counts = ingest_metrics(ingested)
    summary = {
        "layout": counts["layout"],
        "files": counts["files"],
        "rejected_files": len(rejected),
        "dropped_rows": counts["dropped_rows"],
        "skipped_files": counts["skipped_files"],
    }
    return images, summary, warned


def evaluate_external(
    params: Params, runtime: RunSettings, paths: ExternalDataPaths, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Ingest, decode and score evaluate.external.<name>; write its metrics, figures, MLflow.

    `runtime` sets the decoding processes and the prediction batch, never the results.
    """
    name, settings = paths.name, params.evaluate
    dataset = external_dataset(params, name)
    project = ProjectPaths(paths.root)
    model, tta = with_tta(load_models_dir(project.models_dir), settings.tta)
    evaluated = read_json(project.summary("evaluate"))
    model, decision = with_evaluated_decision(model, evaluated)
    model_classes = model.record.class_names
    images, ingested, warned = _ingest_and_decode(dataset, params, paths, model, runtime.workers)
    splits = {split: read_table(project.split_table(split)) for split in SPLITS}
    images, copies = without_internal_copies(images, splits, name, warned)
    shared = shared_classes(name, images["label"].value_counts().to_dict(), model_classes)
    pixels = load_split_pixels(paths.pixel_cache, images["cache_index"], model.image_size)
    predictions = Predictions(
        label_indices(images["label"], shared),
        on_shared_classes(
            model.predict_proba(pixels, runtime.inference_batch_size), model_classes, shared
        ),
        shared,
    )
    metrics = external_scores(
        predictions, settings.bootstrap_samples, settings.calibration_bins, params.seed
    )
    internal = internal_reference(
        evaluated, pd.read_csv(project.predictions), model_classes, shared
    )
    internal_rows, external_rows = shortcut_sample(splits["train"], images, params.seed)
    size = params.train.baseline.image_size
    shortcut = source_shortcut(
        load_split_pixels(project.pixel_cache, internal_rows["cache_index"], size),
        load_split_pixels(paths.pixel_cache, external_rows["cache_index"], size),
        params.train.baseline,
        settings.bootstrap_samples,
        params.seed,
    )
    metrics |= drops(internal, metrics) | shortcut | tta | decision | ingested
    metrics |= {
        "dataset": name,
        "source": dataset.source,
        "classes": images["label"].value_counts().sort_index().to_dict(),
        "classes_scored": list(shared),
        "model_classes": list(model_classes),
        "renormalised": len(shared) < len(model_classes),
        "class_note": class_note(shared, model_classes),
        "copies_of_internal_images": copies,
        "internal": internal,
        "warnings": warned.to_metrics(),
    }
    with staged_dir(paths.external_reports) as figures_dir:
        label = f"External ({name})"
        confusion = figures_dir / "confusion_matrix.png"
        draw_confusion(predictions.true, predictions.predicted, list(shared), confusion, label)
        draw_curves(predictions.true, predictions.probabilities, list(shared), figures_dir, label)
        write_table(figures_dir / "predictions.csv", prediction_table(images, predictions))
        (figures_dir / "summary.md").write_text(summary_markdown(name, metrics), encoding="utf-8")
        experiment_id = use_experiment(params.mlflow_experiment, paths.root, environ)
        run_id = str(evaluated.get("mlflow_run_id") or model.record.run_id)
        linked = {"model": model.record.model, "data_fingerprint": model.record.data_fingerprint}
        with reopen_run(run_id, experiment_id, linked, paths.root) as run:
            tag_run({external_metric(name, "classes"): ",".join(shared)})
            log_results(
                mlflow_metrics(name, metrics), {f"{EXTERNAL_ARTIFACTS}/{name}": figures_dir}, {}
            )
    metrics["mlflow_run_id"] = run.info.run_id
    write_json(
        paths.external_metrics,
        {key: value for key, value in metrics.items() if key not in NOT_METRICS},
    )
    return metrics
