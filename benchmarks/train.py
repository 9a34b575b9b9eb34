"""Benchmark the train stage on a real dataset: accuracy per model within a time budget, and speed.

    python benchmarks/train.py --models resnet18 mobilenetv2 pixel_svm --minutes 15

1. Accuracy: the pipeline's own ingest, build and split stages run in a temporary project on
   --data (default ../shared/datasets/covid19-dataset: its given test folder is the test split,
   copies across splits removed by split); then each model trains as the train stage does for at
   most --minutes of training (train.time_budget_minutes, beside the params' EarlyStopping) and is
   scored on the test split: accuracy and macro F1. No ImageNet weights (train.weights: none).
2. Throughput, on the first Keras model: (a) training images/second fed by the input pipeline
   (cxr.training.inputs.array_dataset) versus the same model fed one in-memory batch over and over
   (no input cost at all); (b) one frozen-phase epoch on cached "head_pool" features versus end
   to end through the frozen backbone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from cxr.core.params import load_params, run_settings  # noqa: E402
from cxr.core.paths import ProjectPaths  # noqa: E402
from cxr.core.registry import is_baseline, training_rate  # noqa: E402
from cxr.core.tables import label_indices, read_splits  # noqa: E402
from cxr.models.classifier import build_classifier  # noqa: E402
from cxr.models.loading import load_models_dir  # noqa: E402
from cxr.models.pixels import load_split_pixels  # noqa: E402
from cxr.training.features import extract_features, split_at_features  # noqa: E402
from cxr.training.inputs import array_dataset, in_memory, load_training_data  # noqa: E402
from cxr.training.keras_fit import compile_model  # noqa: E402
from cxr.training.run import train_model  # noqa: E402


def set_dotted(params: dict[str, Any], assignment: str) -> None:
    """Apply `train.image_size=96` (YAML value) to a params mapping."""
    key, _, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    section = params
    for parent in parents:
        section = section[parent]
    section[leaf] = yaml.safe_load(value)


def prepare_project(root: Path, data: Path, overrides: list[str]) -> None:
    """params.yaml pointing at `data`, then ingest, build and split as DVC would run them."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(data)
    params["train"]["weights"] = "none"
    for assignment in overrides:
        set_dotted(params, assignment)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("ingest", "build", "split"):
        subprocess.run(
            [sys.executable, "-m", f"stages.{stage}", "--root", str(root)], cwd=REPO, check=True
        )


def score_model(root: Path, model_name: str, minutes: float) -> dict[str, Any]:
    """Train `model_name` through the train stage within the budget; test accuracy and F1."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["model"] = model_name
    raw["train"]["time_budget_minutes"] = minutes
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    started = time.perf_counter()
    metrics = train_model(params, run_settings(os.environ), paths, dict(os.environ))
    seconds = time.perf_counter() - started
    assert metrics is not None, "one process trains and writes (CXR_NUM_PROCESSES unset)"
    predictor = load_models_dir(paths.models_dir)
    test = read_splits(paths)["test"]
    truth = label_indices(test["label"], predictor.class_names)
    pixels = load_split_pixels(paths.pixel_cache, test["cache_index"], predictor.image_size)
    predicted = predictor.predict_proba(pixels).argmax(axis=1)
    return {
        "model": model_name,
        "image_size": predictor.image_size,
        "epochs": metrics["epochs_run"],
        "train_seconds": round(seconds, 1),
        "test_accuracy": round(float(accuracy_score(truth, predicted)), 3),
        "test_f1_macro": round(float(f1_score(truth, predicted, average="macro")), 3),
        "test_images": len(truth),
    }


def images_per_second(
    model: keras.Model, dataset: tf.data.Dataset, images: int, epochs: int
) -> float:
    """Training throughput over `epochs` epochs after one warm-up epoch (tracing excluded)."""
    model.fit(dataset, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(dataset, epochs=epochs, verbose=0)
    return images * epochs / (time.perf_counter() - started)


def throughput(root: Path, model_name: str, epochs: int) -> dict[str, float]:
    """(a) input pipeline vs in-memory batch, (b) cached-feature vs end-to-end frozen epoch."""
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    train_params = params.train
    # As train loads it: in memory, or streamed above CXR_MEMORY_CACHE_MB (set it to 0).
    memory_cache_mb = run_settings(os.environ).memory_cache_mb
    data = load_training_data(paths, train_params.image_size, memory_cache_mb)
    names = data.class_names
    count, batch = len(data.train_labels), train_params.batch_size
    steps = math.ceil(count / batch)
    results: dict[str, float] = {}

    def fresh(weights: str) -> tuple[keras.Model, keras.Model]:
        keras.utils.set_random_seed(params.seed)
        model, backbone, _ = build_classifier(
            model_name,
            train_params.image_size,
            names,
            weights,
            train_params.head,
            train_params.augment,
            params.seed,
        )
        return model, backbone

    # (a) the same model and steps, fed by array_dataset or by one batch already in memory
    model, _ = fresh("none")
    compile_model(model, training_rate(train_params.learning_rate, "adam"), jit_compile=False)
    pipeline = array_dataset(data.train_images, data.train_labels.tolist(), batch, params.seed)
    first = in_memory(data.train_images)[:batch]  # streamed: read whole, once, for this only
    resident_batch = tf.data.Dataset.from_tensors(
        (tf.constant(first), tf.constant(data.train_labels[:batch]))
    ).repeat(steps)
    fed = images_per_second(model, pipeline, count, epochs)
    resident = images_per_second(model, resident_batch, steps * batch, epochs)
    results.update(pipeline_images_per_s=fed, in_memory_images_per_s=resident)
    results["pipeline_cost_percent"] = 100 * (1 - fed / resident)

    # (b) a frozen "pretrained" backbone (random weights from a file: speed does not depend on
    # the values) without augmentation: one epoch end to end versus on cached features
    with tempfile.TemporaryDirectory() as scratch:
        weights_file = Path(scratch) / "backbone.weights.h5"
        _, backbone = fresh("none")
        backbone.save_weights(weights_file)
        model, backbone = fresh(str(weights_file))
    backbone.trainable = False
    compile_model(model, training_rate(train_params.learning_rate, "adam"), jit_compile=False)
    batches = array_dataset(data.train_images, data.train_labels.tolist(), batch, params.seed)
    results["frozen_end_to_end_images_per_s"] = images_per_second(model, batches, count, epochs)
    extractor, head = split_at_features(model)
    started = time.perf_counter()
    features = extract_features(extractor, data.train_images, batch)  # streams when streamed
    results["feature_extraction_seconds"] = time.perf_counter() - started
    compile_model(head, training_rate(train_params.learning_rate, "adam"), jit_compile=False)
    cached = array_dataset(features, data.train_labels.tolist(), batch, params.seed)
    results["frozen_cached_images_per_s"] = images_per_second(head, cached, count, epochs)
    results["cached_speedup"] = (
        results["frozen_cached_images_per_s"] / results["frozen_end_to_end_images_per_s"]
    )
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per part."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2", "pixel_svm"])
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "datasets" / "covid19-dataset"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="params override"
    )
    parser.add_argument("--throughput-epochs", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--project", type=Path, help="keep the temporary project here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as scratch:
        root = args.project or Path(scratch) / "project"
        prepare_project(root, args.data, ["train.epochs=1000", *args.set])
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        split_counts = json.loads((root / "metrics" / "summary" / "split.json").read_text())
        print("split:", {key: split_counts[key]["images"] for key in ("train", "val", "test")})
        if not args.skip_accuracy:
            rows = [score_model(root, name, args.minutes) for name in args.models]
            print(f"\naccuracy ({args.minutes:g} min budget per model, CPU, no ImageNet weights)")
            for row in rows:
                print(json.dumps(row))
        keras_models = [name for name in args.models if not is_baseline(name)]
        if not args.skip_throughput and keras_models:
            figures = throughput(root, keras_models[0], args.throughput_epochs)
            print(f"\nthroughput ({keras_models[0]}, images/second)")
            for key, value in figures.items():
                print(f"{key}: {value:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
