"""Which accelerator setup training uses, decided from the visible devices (testable anywhere)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stages.errors import PipelineError

StrategyKind = Literal["default", "mirrored", "multi_worker"]


@dataclass(frozen=True)
class AcceleratorPlan:
    """The distribution strategy, precision policy and a readable device description."""

    strategy: StrategyKind
    mixed_precision: bool
    device: str


def cluster_workers(tf_config: str) -> int:
    """Number of workers TF_CONFIG declares (0 when unset)."""
    if not tf_config.strip():
        return 0
    try:
        cluster = json.loads(tf_config).get("cluster", {})
        return len(cluster.get("worker", []))
    except (json.JSONDecodeError, AttributeError):
        raise PipelineError(
            f"TF_CONFIG = {tf_config[:60]!r}: not a JSON object with a cluster.worker list; "
            "fix it or unset it to train on this machine only"
        ) from None


def plan_accelerators(
    gpu_names: Sequence[str], mixed_precision: str, environ: Mapping[str, str]
) -> AcceleratorPlan:
    """Decide strategy and precision from the visible GPUs, train.mixed_precision and TF_CONFIG."""
    workers = cluster_workers(environ.get("TF_CONFIG", ""))
    if workers > 1:
        strategy: StrategyKind = "multi_worker"
    elif len(gpu_names) > 1:
        strategy = "mirrored"
    else:
        strategy = "default"
    # float16 compute only pays off on GPUs with tensor cores; on a CPU it is slower.
    use_mixed = mixed_precision == "on" or (mixed_precision == "auto" and len(gpu_names) > 0)
    device = f"{len(gpu_names)} GPU ({', '.join(gpu_names)})" if gpu_names else "CPU"
    if workers > 1:
        device += f", {workers} workers"
    return AcceleratorPlan(strategy=strategy, mixed_precision=use_mixed, device=device)


def visible_gpus() -> list[str]:
    """Names of the GPUs TensorFlow can see."""
    import tensorflow as tf

    return [gpu.name for gpu in tf.config.list_physical_devices("GPU")]


def apply_plan(plan: AcceleratorPlan) -> Any:
    """Set the precision policy and return the tf.distribute strategy the plan names."""
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy("mixed_float16" if plan.mixed_precision else "float32")
    if plan.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if plan.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
