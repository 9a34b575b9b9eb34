"""Benchmark training throughput on a GPU: images/second for resnet50 and efficientnetb0 at 224 px.

    python benchmarks/gpu.py                      # both models, mixed precision and XLA as planned
    python benchmarks/gpu.py --models resnet50 --batch-size 256 --steps 50

Each model is built as the train stage builds it (cxr.models.classifier.build_classifier: raw
grayscale pixels in, augmentation off, random weights) under the plan the train stage would make
on this machine (cxr.training.devices: float16 on GPUs of compute capability >= 7.0, XLA on one
GPU, MirroredStrategy over several), compiled as train compiles it, and fed one batch of random
pixels that stays on the device, so the figure is the model's own training speed. The first
--warmup steps (tracing, XLA compilation, autotuning) are not timed.

NVIDIA's published figure for comparison: ResNet-50 training on one A100 80GB, mixed precision
(AMP) and XLA, TensorFlow: about 2,375 images/s (NVIDIA Deep Learning Examples,
TensorFlow2/Classification/ConvNets, "Training performance"). That model takes 3-channel
images; ours takes 1-channel X-rays and repeats the channel, which costs little.

On a CPU it runs too (slowly; use --steps 3), which is how it is checked here: no GPU has been
available to this project, so no GPU figure is quoted in README.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from cxr.core.params import Params, parse_params  # noqa: E402
from cxr.models.classifier import build_classifier  # noqa: E402
from cxr.training.devices import Accelerators, setup_accelerators  # noqa: E402
from cxr.training.keras_fit import compile_model  # noqa: E402

PUBLISHED = {"resnet50": ("ResNet-50, 1x A100 80GB, AMP + XLA (NVIDIA)", 2375.0)}
CLASSES = ["covid", "normal", "viral_pneumonia"]


def benchmark_params(image_size: int, batch_size: int) -> Params:
    """The repository's params at `image_size`, random weights, augmentation off."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(image_size=image_size, batch_size=batch_size, weights="none")
    augment = raw["train"]["augment"]
    raw["train"]["augment"] = {key: False if key == "horizontal_flip" else 0.0 for key in augment}
    return parse_params(raw)


def benchmark(
    model_name: str, params: Params, accelerators: Accelerators, steps: int, warmup: int
) -> float:
    """Training images/second of `model_name` on one repeated device batch."""
    train = params.train
    image_size, batch_size = train.image_size, train.batch_size
    with accelerators.strategy.scope():
        model, _, _ = build_classifier(
            model_name, image_size, CLASSES, "none", train.head, train.augment, params.seed
        )
        compile_model(model, train.learning_rate, accelerators.plan.jit_compile)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 1), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), batch_size)
    batch = tf.data.Dataset.from_tensors((images, labels)).cache().repeat()
    model.fit(batch, steps_per_epoch=warmup, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(batch, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    print(
        f"{model_name}: {accelerators.plan.device}, {accelerators.plan.precision}, "
        f"XLA {accelerators.plan.jit_compile}, batch {batch_size}, {image_size} px"
    )
    return steps * batch_size / seconds


def main() -> None:
    """Print images/second per model beside the published figure where there is one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnetb0"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    params = benchmark_params(args.image_size, args.batch_size)
    train = params.train
    # Once per process, as in the train stage: devices can be set up only before TF runs.
    accelerators = setup_accelerators(train.mixed_precision, train.jit_compile, os.environ)
    rows = ["| model | images/s | published figure | ratio |", "|---|---|---|---|"]
    for name in args.models:
        rate = benchmark(name, params, accelerators, args.steps, args.warmup)
        if name in PUBLISHED:
            reference, figure = PUBLISHED[name]
            rows.append(
                f"| {name} | {rate:,.1f} | {figure:,.0f} ({reference}) | {rate / figure:.2f} |"
            )
        else:
            rows.append(f"| {name} | {rate:,.1f} | none | |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
