"""External validation: another source's images, read as the training data was, and scored.

An external dataset (evaluate.external.<name>) goes through the training data's own code:
ingest (cxr.data.ingestion) copies its source into data/external/<name>/raw and labels its
files, cxr.data.pixel_cache decodes them at the model's cache size and resize mode, and the
trained model scores them on the classes they share with it, its probabilities renormalised over
those classes. Beside the scores: the drop from the internal test figure on the same classes,
and a source-shortcut check (can a pixel classifier tell the two sources apart?).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from cxr.core.errors import PipelineError
from cxr.core.outputs import read_json, staged_dir, staged_file, write_json, write_table
from cxr.core.params import (
    BaselineParams,
    DataParams,
    ExternalDataParams,
    Params,
    external_metric,
)
from cxr.core.paths import SPLITS, ExternalDataPaths, ProjectPaths
from cxr.core.tables import label_indices, read_table
from cxr.core.warnings import DataWarnings
from cxr.data.ingestion import ingest, ingest_metrics
from cxr.data.pixel_cache import decode_into_cache
from cxr.data.pixels import load_split_pixels
from cxr.evaluation.figures import draw_confusion, draw_curves
from cxr.evaluation.metrics import (
    SCREENING_CLASS,
    Predictions,
    evaluation_metrics,
    prediction_table,
    score_predictions,
    sensitivity_specificity,
)
from cxr.evaluation.statistics import bootstrap_intervals
from cxr.evaluation.tta import with_tta
from cxr.models.baselines import build_baseline, flatten_pixels
from cxr.serving.predictors import Predictor, load_models_dir
from cxr.tracking import log_results, reopen_run, tag_run, use_experiment

# The figures compared between the internal test split and an external dataset.
SCORED = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "covid_sensitivity")
# The shortcut check: images drawn per class and source (bounds its time on a large dataset),
# cross-validation folds, and the accuracies read as "hard to tell apart" and "a trap".
SHORTCUT_IMAGES_PER_CLASS = 500
SHORTCUT_FOLDS = 5
SHORTCUT_HARD = 0.6
SHORTCUT_TRAP = 0.9
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


def shared_classes(
    name: str, counts: Mapping[str, int], model_classes: Sequence[str]
) -> tuple[str, ...]:
    """The model's classes the dataset holds, in the model's order; fail on a class it lacks."""
    unknown = sorted(set(counts) - set(model_classes))
    if unknown:
        listed = ", ".join(f"{label!r} ({counts[label]} images)" for label in unknown)
        raise PipelineError(
            f"evaluate.external.{name}: class {listed} unknown to the model (classes "
            f"{', '.join(model_classes)}); map it with evaluate.external.{name}.label_map or "
            f"leave it out with evaluate.external.{name}.classes"
        )
    shared = tuple(label for label in model_classes if counts.get(label, 0) > 0)
    if len(shared) < 2:
        raise PipelineError(
            f"evaluate.external.{name}: images of {len(shared)} of the model's classes "
            f"({', '.join(shared) or 'none'}); scoring needs two or more"
        )
    return shared


def on_shared_classes(
    probabilities: np.ndarray, model_classes: Sequence[str], shared: Sequence[str]
) -> np.ndarray:
    """The probabilities of the `shared` classes only, renormalised to sum to 1 per image."""
    columns = [list(model_classes).index(label) for label in shared]
    kept = np.asarray(probabilities, dtype=np.float64)[:, columns]
    totals = kept.sum(axis=1, keepdims=True)
    # An image given ~0 on every shared class is spread evenly over them rather than 0 / 0.
    even = np.full_like(kept, 1.0 / len(columns))
    return np.divide(kept, totals, out=even, where=totals > 0)


def class_note(shared: Sequence[str], model_classes: Sequence[str]) -> str:
    """What the scores are over: every class of the model, or the shared ones, renormalised."""
    if len(shared) == len(model_classes):
        return f"scored on all {len(shared)} classes of the model"
    return (
        f"scored on {len(shared)} of the model's {len(model_classes)} classes "
        f"({', '.join(shared)}), probabilities renormalised over them"
    )


def rate_intervals(predictions: Predictions, samples: int, seed: int) -> dict[str, list[Any]]:
    """Bootstrap 95% intervals of balanced accuracy and covid sensitivity (None: undefined, off)."""
    names = list(predictions.class_names)
    keys = ("balanced_accuracy", "covid_sensitivity")
    if samples == 0:
        return {key: [None, None] for key in keys}
    true, predicted = predictions.true, predictions.predicted
    covid = names.index(SCREENING_CLASS) if SCREENING_CLASS in names else None

    def statistic(indices: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            # A resample may miss a class; sklearn warns, the interval takes it as it is.
            warnings.simplefilter("ignore", UserWarning)
            balanced = balanced_accuracy_score(true[indices], predicted[indices])
        rates = sensitivity_specificity(true[indices], predicted[indices], len(names))
        sensitivity = None if covid is None else rates[covid][0]
        return np.array([balanced, np.nan if sensitivity is None else sensitivity])

    lows, highs = bootstrap_intervals(statistic, len(true), samples, seed)
    return {
        key: [None if np.isnan(low) else float(low), None if np.isnan(high) else float(high)]
        for key, low, high in zip(keys, lows, highs, strict=True)
    }


def external_scores(
    predictions: Predictions, samples: int, calibration_bins: int, seed: int
) -> dict[str, Any]:
    """Scores as evaluate computes them, named without `test_`, with CIs of all five SCORED."""
    scores = evaluation_metrics(predictions, samples, calibration_bins, seed)
    intervals = {
        key.removeprefix("test_"): value
        for key, value in scores.pop("confidence_intervals").items()
    } | rate_intervals(predictions, samples, seed)
    metrics = {key.removeprefix("test_"): value for key, value in scores.items()}
    metrics.setdefault("covid_sensitivity", None)
    for key, (low, high) in intervals.items():
        metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = low, high
    return metrics | {"confidence_intervals": intervals}


def internal_reference(
    evaluated: Mapping[str, Any],
    test_predictions: pd.DataFrame,
    model_classes: Sequence[str],
    shared: Sequence[str],
) -> dict[str, float | None]:
    """The internal test figures to compare with, on the same classes as the external ones.

    With every class shared they are metrics/summary/evaluate.json's; otherwise the test images
    of the shared classes are scored again from metrics/test_predictions.csv, renormalised the
    same way.
    """
    if len(shared) == len(model_classes):
        return {key: evaluated.get(f"test_{key}") for key in SCORED}
    rows = test_predictions[test_predictions["actual"].isin(shared)]
    if rows.empty:
        return dict.fromkeys(SCORED)
    probabilities = rows[[f"p_{label}" for label in model_classes]].to_numpy()
    scores = score_predictions(
        label_indices(rows["actual"], shared),
        on_shared_classes(probabilities, model_classes, shared),
        shared,
    )
    return {key: scores.get(f"test_{key}") for key in SCORED}


def drops(internal: Mapping[str, float | None], external: Mapping[str, Any]) -> dict[str, Any]:
    """Internal minus external figure per score: how much is lost on the other source."""
    return {
        f"{key}_drop": None
        if internal.get(key) is None or external.get(key) is None
        else float(internal[key]) - float(external[key])  # type: ignore[arg-type]
        for key in SCORED
    }


def shortcut_sample(
    internal: pd.DataFrame, external: pd.DataFrame, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of both sources for the shortcut check: per shared class, as many from each.

    With the classes in equal numbers on both sides, what class an image shows says nothing
    about its source, so chance is 0.5 and anything above it comes from the source itself.
    """
    rng = np.random.default_rng(seed)
    chosen: tuple[list[int], list[int]] = ([], [])
    for label in sorted(set(internal["label"]) & set(external["label"])):
        sides = [
            np.flatnonzero(table["label"].to_numpy() == label) for table in (internal, external)
        ]
        count = min(len(sides[0]), len(sides[1]), SHORTCUT_IMAGES_PER_CLASS)
        for rows, side in zip(chosen, sides, strict=True):
            rows.extend(sorted(rng.choice(side, count, replace=False).tolist()))
    return internal.iloc[chosen[0]], external.iloc[chosen[1]]


def shortcut_note(accuracy: float | None) -> str:
    """One line reading the shortcut accuracy for a person."""
    if accuracy is None:
        return "not computed: too few images of the shared classes in one of the sources"
    if accuracy >= SHORTCUT_TRAP:
        return (
            f"a shortcut trap: pixels alone tell the two sources apart ({accuracy:.2f}; 0.5 = "
            "chance), so a model can score by recognising the source instead of the lungs; "
            "trust the external figures over the internal ones"
        )
    if accuracy <= SHORTCUT_HARD:
        return (
            f"the sources are hard to tell apart from pixels ({accuracy:.2f}; 0.5 = chance): "
            "little room for a source shortcut"
        )
    return (
        f"the sources are partly told apart from pixels ({accuracy:.2f}; 0.5 = chance, 1.0 = "
        "always): some room for a source shortcut"
    )


def source_shortcut(
    internal: np.ndarray,
    external: np.ndarray,
    baseline: BaselineParams,
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """Cross-validated accuracy (95% CI) of pixel_logreg telling internal from external images.

    `internal` and `external` are uint8 (N, S, S, 1) images at train.baseline.image_size, as
    many from each source (shortcut_sample). Near 0.5: the sources are hard to tell apart;
    near 1.0: a shortcut trap, the source is written all over the pixels.
    """
    per_source = min(len(internal), len(external))
    folds = min(SHORTCUT_FOLDS, per_source)
    result: dict[str, Any] = {
        "source_shortcut_accuracy": None,
        "source_shortcut_accuracy_ci_low": None,
        "source_shortcut_accuracy_ci_high": None,
        "source_shortcut_images_per_source": per_source,
        "source_shortcut_folds": folds,
    }
    if folds < 2:
        return result | {"source_shortcut_note": shortcut_note(None)}
    pixels = flatten_pixels(np.concatenate([internal[:per_source], external[:per_source]]))
    source = np.repeat([0, 1], per_source)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A fold that stops at max_iter still scores; the check needs no converged optimum.
        warnings.simplefilter("ignore")
        guessed = cross_val_predict(
            build_baseline("pixel_logreg", baseline, seed), pixels, source, cv=splitter
        )
    correct = (guessed == source).astype(np.float64)
    accuracy = float(correct.mean())
    if samples:
        lows, highs = bootstrap_intervals(
            lambda indices: np.array([correct[indices].mean()]), len(correct), samples, seed
        )
        result["source_shortcut_accuracy_ci_low"] = float(lows[0])
        result["source_shortcut_accuracy_ci_high"] = float(highs[0])
    return result | {
        "source_shortcut_accuracy": accuracy,
        "source_shortcut_note": shortcut_note(accuracy),
    }


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


def summary_markdown(name: str, metrics: Mapping[str, Any]) -> str:
    """reports/external/<name>/summary.md: the scores, the drop and the shortcut, for a person."""

    def cell(key: str) -> str:
        value = metrics.get(key)
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        if value is None:
            return "-"
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        return f"{value:.3f}{interval}"

    def number(value: Any, sign: str = "") -> str:
        return "-" if value is None else f"{value:{sign}.3f}"

    rows = "\n".join(
        f"| {key} | {cell(key)} | {number(metrics['internal'].get(key))} "
        f"| {number(metrics.get(f'{key}_drop'), '+')} |"
        for key in SCORED
    )
    shortcut = cell("source_shortcut_accuracy")
    return (
        f"# External dataset `{name}`\n\n"
        f"{metrics['images']} images from `{metrics['source']}`, {metrics['class_note']}.\n\n"
        "| score | external [95% CI] | internal test | drop (internal - external) |\n"
        "|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Source shortcut accuracy (pixel_logreg telling the training source's images from "
        f"these, {metrics['source_shortcut_folds']}-fold cross-validated, "
        f"{metrics['source_shortcut_images_per_source']} images per source): {shortcut}: "
        f"{metrics['source_shortcut_note']}.\n"
    )


def _ingest_and_decode(
    dataset: ExternalDataParams, params: Params, paths: ExternalDataPaths, model: Predictor
) -> tuple[pd.DataFrame, dict[str, Any], ExternalWarnings]:
    """Ingest and decode the dataset as the training data was; its images table and counts."""
    name, record = paths.name, model.record
    warned = ExternalWarnings(name)
    try:
        ingested = ingest(dataset, paths, warned)
    except PipelineError as error:
        raise PipelineError(as_external_keys(str(error), name)) from None
    shared_classes(name, ingested.counts, record.class_names)  # fail before decoding
    # The model's own cache size and resize mode: its images met it squared exactly so.
    build = params.build.model_copy(
        update={"cache_size": record.cache_size, "resize": record.resize}
    )
    with staged_file(paths.pixel_cache) as staging:
        images, rejected = decode_into_cache(ingested.manifest, paths.raw_dir, build, staging)
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
    params: Params, paths: ExternalDataPaths, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Ingest, decode and score evaluate.external.<name>; write its metrics, figures, MLflow."""
    name, settings = paths.name, params.evaluate
    dataset = external_dataset(params, name)
    project = ProjectPaths(paths.root)
    model, tta = with_tta(load_models_dir(project.models_dir), settings.tta)
    model_classes = model.record.class_names
    images, ingested, warned = _ingest_and_decode(dataset, params, paths, model)
    splits = {split: read_table(project.split_table(split)) for split in SPLITS}
    images, copies = without_internal_copies(images, splits, name, warned)
    shared = shared_classes(name, images["label"].value_counts().to_dict(), model_classes)
    pixels = load_split_pixels(paths.pixel_cache, images["cache_index"], model.image_size)
    predictions = Predictions(
        label_indices(images["label"], shared),
        on_shared_classes(model.predict_proba(pixels, settings.batch_size), model_classes, shared),
        shared,
    )
    metrics = external_scores(
        predictions, settings.bootstrap_samples, settings.calibration_bins, params.seed
    )
    evaluated = read_json(project.summary("evaluate"))
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
    metrics |= drops(internal, metrics) | shortcut | tta | ingested
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


def mlflow_metrics(name: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric top-level metrics as external_<name>_<key> (accuracy, drops, shortcut ...)."""
    return {
        external_metric(name, key): float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    }


def external_summary(metrics: Mapping[str, Any]) -> list[str]:
    """The stage's printed lines: the scores with the class note, and the shortcut check."""

    def interval(key: str) -> str:
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        return f" (95% CI {low:.3f}-{high:.3f})" if low is not None and high is not None else ""

    drop = metrics.get("accuracy_drop")
    internal = metrics["internal"].get("accuracy")
    versus = ""
    if drop is not None and internal is not None:
        direction = "below" if drop >= 0 else "above"
        versus = f", {abs(drop):.3f} {direction} the internal test accuracy {internal:.3f}"
    shortcut = metrics.get("source_shortcut_accuracy")
    shortcut_text = "n/a" if shortcut is None else f"{shortcut:.3f}"
    return [
        f"external {metrics['dataset']}: accuracy {metrics['accuracy']:.3f}"
        f"{interval('accuracy')}, macro F1 {metrics['f1_macro']:.3f} on {metrics['images']} "
        f"images{versus}; {metrics['class_note']}",
        f"  source shortcut accuracy {shortcut_text}{interval('source_shortcut_accuracy')}: "
        f"{metrics['source_shortcut_note']}",
    ]
