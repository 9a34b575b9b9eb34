"""Which accelerator setup training uses, decided from the visible devices (testable anywhere)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cxr.core.errors import PipelineError

StrategyKind = Literal["default", "mirrored", "multi_worker"]

# float16 runs on tensor cores from Volta (7.0) on; older GPUs emulate it and get slower.
MIXED_PRECISION_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Gpu:
    """One visible GPU: its TensorFlow device name and CUDA compute capability (when known)."""

    name: str
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class AcceleratorPlan:
    """The distribution strategy, precision policy, XLA choice and a readable device text."""

    strategy: StrategyKind
    mixed_precision: bool
    jit_compile: bool
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


def _describe(gpu: Gpu) -> str:
    """`name (compute 8.0)`, or the bare name when the capability is unknown."""
    if gpu.compute_capability is None:
        return gpu.name
    return f"{gpu.name} (compute {gpu.compute_capability[0]}.{gpu.compute_capability[1]})"


def plan_accelerators(
    gpus: Sequence[Gpu], mixed_precision: str, jit_compile: str, environ: Mapping[str, str]
) -> AcceleratorPlan:
    """Decide strategy, precision and XLA from the GPUs, train.* switches and TF_CONFIG."""
    workers = cluster_workers(environ.get("TF_CONFIG", ""))
    if workers > 1:
        strategy: StrategyKind = "multi_worker"
    elif len(gpus) > 1:
        strategy = "mirrored"
    else:
        strategy = "default"
    tensor_cores = bool(gpus) and all(
        gpu.compute_capability is not None and gpu.compute_capability >= MIXED_PRECISION_CAPABILITY
        for gpu in gpus
    )
    use_mixed = mixed_precision == "on" or (mixed_precision == "auto" and tensor_cores)
    # XLA compiles per device; keras turns it off under tf.distribute, and on a CPU the
    # compile time outweighs the gain for these models.
    use_jit = jit_compile == "on" or (
        jit_compile == "auto" and bool(gpus) and strategy == "default"
    )
    device = f"{len(gpus)} GPU ({', '.join(_describe(gpu) for gpu in gpus)})" if gpus else "CPU"
    if workers > 1:
        device += f", {workers} workers"
    return AcceleratorPlan(
        strategy=strategy, mixed_precision=use_mixed, jit_compile=use_jit, device=device
    )


def visible_gpus() -> list[Gpu]:
    """The GPUs TensorFlow can see, with their compute capability."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        gpus.append(
            Gpu(
                name=str(details.get("device_name", device.name)),
                compute_capability=tuple(capability) if capability else None,
            )
        )
    return gpus


def build_info(gpu_used: bool) -> dict[str, str]:
    """TensorFlow and Keras versions as MLflow tags, and CUDA / cuDNN only when a GPU ran.

    TensorFlow reports the CUDA it was built against even on a machine without a GPU; a
    `cuda_version` tag on a CPU run would say the run used CUDA when it did not.
    """
    import keras
    import tensorflow as tf

    tags = {"tensorflow_version": tf.__version__, "keras_version": keras.__version__}
    if gpu_used:
        info = tf.sysconfig.get_build_info()
        tags["cuda_version"] = str(info.get("cuda_version", ""))
        tags["cudnn_version"] = str(info.get("cudnn_version", ""))
    return tags


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
