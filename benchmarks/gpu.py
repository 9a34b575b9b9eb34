"""Benchmark training throughput: images/second for resnet50 and efficientnetb0 at 224 px.

    KERAS_BACKEND=jax python3 benchmarks/gpu.py                  # both models, as planned here
    KERAS_BACKEND=jax python3 benchmarks/gpu.py --models resnet50 --batch-size 256 --steps 50
    KERAS_BACKEND=jax python3 benchmarks/gpu.py --steps 3 --warmup 1 --batch-size 8   # on a CPU
    KERAS_BACKEND=jax python3 benchmarks/gpu.py --train-stage     # + train on the shared CT data

Each model is built as the train stage builds it (cxr.models.classifier.build_classifier: raw
grayscale pixels in, augmentation off, random weights, here a softmax on average-pooled
features as head) under the plan the train stage would make on this machine
(cxr.training.devices: under JAX bfloat16 on GPUs of compute capability >= 8.0, Ampere and
Hopper, float16 on 7.x, float32 on a CPU; XLA always; every visible GPU data-parallel),
compiled as train compiles the default recipe (Adam, cross-entropy, accuracy), and fed one
batch of random pixels over and over, so the figure is the model's own training speed. The
first --warmup steps (tracing, XLA compilation, autotuning) are not timed.

It runs on any Keras backend; on JAX it needs nothing but numpy, Keras (and what Keras itself
imports), JAX and this checkout's cxr/: no TensorFlow, pydantic, pandas or MLflow, which an
accelerator machine may lack. --train-stage runs the pipeline's own ingest, build, split and
train on ../shared/datasets/covid-ct-cropped (when present) in a temporary folder: that needs
every package of requirements.lock but TensorFlow; where one is missing it says so and skips.

NVIDIA's published figure for comparison: ResNet-50 training on one A100 80GB, mixed precision
(AMP) and XLA, TensorFlow: about 2,375 images/s (NVIDIA Deep Learning Examples,
TensorFlow2/Classification/ConvNets, "Training performance"). That model takes 3-channel
images; ours takes 1-channel X-rays and repeats the channel, which costs little.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cxr.models.backend import keep_tensorflow_out  # noqa: E402
from cxr.models.classifier import build_classifier  # noqa: E402
from cxr.training.devices import Accelerators, setup_accelerators  # noqa: E402

PUBLISHED = {"resnet50": ("ResNet-50, 1x A100 80GB, AMP + XLA (NVIDIA)", 2375.0)}
CLASSES = ["covid", "normal", "viral_pneumonia"]
CT_DATA = REPO.parent / "shared" / "datasets" / "covid-ct-cropped"
# What --train-stage needs beside JAX: every stage's imports (requirements.lock).
STAGE_MODULES = ("yaml", "pydantic", "pandas", "pyarrow", "sklearn", "mlflow", "PIL", "scipy")


@dataclass(frozen=True)
class Head:
    """train.head as build_classifier reads it: a softmax on average-pooled features."""

    pooling: str = "avg"
    dense_units: list[int] = field(default_factory=list)
    batch_norm: bool = False
    dropout: float = 0.0
    l2: float = 0.0
    googlenet_aux: bool = False


@dataclass(frozen=True)
class NoAugmentation:
    """train.augment with every augmentation off."""

    horizontal_flip: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0


class OneBatch(keras.utils.PyDataset):
    """The same batch of random gray pixels and labels, `steps` times (no input cost)."""

    def __init__(self, batch_size: int, image_size: int, steps: int) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (batch_size, image_size, image_size, 1), np.uint8)
        self.labels = rng.integers(0, len(CLASSES), batch_size)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images, self.labels


def benchmark(
    model_name: str,
    accelerators: Accelerators,
    image_size: int,
    batch_size: int,
    steps: int,
    warmup: int,
) -> float:
    """Training images/second of `model_name` on one repeated batch."""
    plan = accelerators.plan
    keras.utils.set_random_seed(0)
    with accelerators.scope():
        model, _, _ = build_classifier(
            model_name,
            image_size,
            CLASSES,
            "none",
            Head(),
            NoAugmentation(),
            0,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(0.001),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=plan.jit_compile,
        )
        model.fit(OneBatch(batch_size, image_size, warmup), epochs=1, verbose=0)
        started = time.perf_counter()
        # fit ends by reading the epoch's logs, so every step has run when it returns.
        model.fit(OneBatch(batch_size, image_size, steps), epochs=1, verbose=0)
        seconds = time.perf_counter() - started
    print(
        f"{model_name}: {plan.backend}, {plan.device}, {plan.precision}, XLA {plan.jit_compile}, "
        f"batch {batch_size}, {image_size} px, {steps} timed steps in {seconds:.1f} s"
    )
    keras.backend.clear_session()
    return steps * batch_size / seconds


def train_stage(args: argparse.Namespace) -> None:
    """The pipeline's train stage on the shared CT data, here: its figures, or why not."""
    missing = [name for name in STAGE_MODULES if importlib.util.find_spec(name) is None]
    if not CT_DATA.is_dir() or missing:
        reason = f"{CT_DATA} absent" if not CT_DATA.is_dir() else f"missing {', '.join(missing)}"
        print(f"train stage on covid-ct-cropped: skipped ({reason})")
        return
    import yaml

    with tempfile.TemporaryDirectory(prefix="cxr-gpu-") as folder:
        root = Path(folder)
        params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        params["data"]["source"] = str(CT_DATA)
        params["model"] = args.train_model
        params["train"].update(
            image_size=args.image_size,
            batch_size=args.batch_size,
            epochs=args.train_epochs,
            fine_tune_epochs=0,
            weights="none",  # an accelerator machine reaches no download server
        )
        (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        # The run's MLflow store is the temporary folder's own (no MLFLOW_TRACKING_URI).
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        env["PYTHONPATH"] = str(REPO)
        started = time.perf_counter()
        for stage in ("ingest", "build", "split", "train"):
            done = subprocess.run(
                [sys.executable, "-m", f"stages.{stage}", "--root", str(root)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(f"train stage on covid-ct-cropped: {stage} failed:\n{done.stderr[-2000:]}")
                return
        summary = json.loads((root / "metrics" / "summary" / "train.json").read_text())
    rate = summary["train_images"] * summary["epochs_run"] / summary["train_seconds"]
    print(
        f"train stage on covid-ct-cropped: {args.train_model} at {args.image_size} px, "
        f"{summary['train_images']} training images, {summary['epochs_run']} epochs in "
        f"{summary['train_seconds']:.1f} s of fitting ({rate:,.1f} images/s with validation, "
        f"first-epoch compilation included), best val accuracy "
        f"{summary['best_val_accuracy']:.3f}; {time.perf_counter() - started:.0f} s in all"
    )


def main(argv: list[str] | None = None) -> None:
    """Print images/second per model beside the published figure where there is one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnetb0"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--mixed-precision", default="auto", help="train.mixed_precision")
    parser.add_argument(
        "--train-stage", action="store_true", help="also train on the shared CT data"
    )
    parser.add_argument("--train-model", default="resnet50")
    parser.add_argument("--train-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    keep_tensorflow_out()
    # Once per process, as in the train stage: devices are fixed when the backend starts.
    accelerators = setup_accelerators(args.mixed_precision, "auto", os.environ)
    rows = ["| model | images/s | published figure | ratio |", "|---|---|---|---|"]
    for name in args.models:
        rate = benchmark(
            name, accelerators, args.image_size, args.batch_size, args.steps, args.warmup
        )
        if name in PUBLISHED:
            reference, figure = PUBLISHED[name]
            rows.append(
                f"| {name} | {rate:,.1f} | {figure:,.0f} ({reference}) | {rate / figure:.2f} |"
            )
        else:
            rows.append(f"| {name} | {rate:,.1f} | none | |")
    print("\n".join(rows))
    print(f"tensorflow imported: {'tensorflow' in sys.modules}")
    if args.train_stage:
        train_stage(args)


if __name__ == "__main__":
    main()
