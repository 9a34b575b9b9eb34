"""Which accelerator setup training uses, decided from the visible devices (testable anywhere).

The environment says what the machine offers: the GPUs TensorFlow sees, `TF_CONFIG` (the
workers of a multi-machine run, TensorFlow's own variable) and `CXR_CPU_DEVICES` (split the CPU
into that many logical devices and mirror over them: multi-device training without GPUs, to
check a distributed setup on a laptop or in CI).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cxr.core.errors import PipelineError

StrategyKind = Literal["default", "mirrored", "multi_worker"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]

CPU_DEVICES_VARIABLE = "CXR_CPU_DEVICES"
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"

# Keras 3 cannot fit under MultiWorkerMirroredStrategy (keras-team/keras#20585, open; seen
# here with TensorFlow 2.21 and Keras 3.15): its train step reduces each scalar log with
# strategy.reduce("MEAN", value, axis=0), which fails for a scalar, and its first symbolic
# build reduces the input batch, which MultiWorkerMirroredStrategy cannot. Training across
# machines therefore stops at once with this message instead of a traceback mid-fit;
# tests/stages/test_train_distributed.py notices when a Keras release fixes it.
MULTI_WORKER_BLOCKED = (
    "TF_CONFIG names {workers}: Keras 3 cannot train under MultiWorkerMirroredStrategy yet "
    "(keras-team/keras#20585); train on one machine (all its GPUs are mirrored) and unset "
    "TF_CONFIG, or run several experiments at once with `dvc queue start -j N`"
)

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
    precision: Precision
    jit_compile: bool
    device: str
    cpu_devices: int = 1  # logical CPU devices to create (> 1 only when mirroring over the CPU)

    @property
    def mixed_precision(self) -> bool:
        """Whether compute runs in a 16-bit float (float16 or bfloat16)."""
        return self.precision != "float32"


def cluster_workers(tf_config: str) -> int:
    """Number of workers TF_CONFIG declares, the chief included (0 when unset)."""
    if not tf_config.strip():
        return 0
    try:
        spec = json.loads(tf_config)
        if not isinstance(spec, dict) or not isinstance(spec.get("cluster", {}), dict):
            raise TypeError
    except (json.JSONDecodeError, TypeError):
        raise PipelineError(
            f"TF_CONFIG = {tf_config[:60]!r}: not a JSON object with a cluster.worker list; "
            "fix it or unset it to train on this machine only"
        ) from None
    cluster = spec.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def cpu_devices(environ: Mapping[str, str]) -> int:
    """Logical CPU devices CXR_CPU_DEVICES asks for (1 when unset)."""
    value = environ.get(CPU_DEVICES_VARIABLE, "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise PipelineError(
            f"{CPU_DEVICES_VARIABLE} = {value!r}: a whole number of logical CPU devices, at "
            "least 1 (2 or more mirrors training over them); unset it for the plain CPU"
        )
    return int(value)


def _describe(gpu: Gpu) -> str:
    """`name (compute 8.0)`, or the bare name when the capability is unknown."""
    if gpu.compute_capability is None:
        return gpu.name
    return f"{gpu.name} (compute {gpu.compute_capability[0]}.{gpu.compute_capability[1]})"


def avoid_empty_replica_batches(environ: MutableMapping[str, str]) -> bool:
    """Turn TensorFlow's oneDNN CPU kernels off when mirroring over CPU devices; True if it did.

    A batch smaller than the number of replicas (the last of an epoch) leaves a replica an empty
    batch, and TensorFlow 2.21's oneDNN Conv2D returns its input unchanged for an empty batch
    (shape (0, h, w, 3) instead of (0, h, w, filters)), so the next layer fails with "input
    depth must be evenly divisible by filter depth". TensorFlow's own kernels are right. The
    switch is read when TensorFlow loads, so this must run before it is imported; a value the
    user set is left alone. GPUs do their convolutions in cuDNN and are unaffected. (Found by
    running CXR_CPU_DEVICES=2 through the train stage: tests/stages/test_train_distributed.py.)
    """
    if ONEDNN_VARIABLE in environ or cpu_devices(environ) < 2:
        return False
    environ[ONEDNN_VARIABLE] = "0"
    return True


def plan_accelerators(
    gpus: Sequence[Gpu], mixed_precision: str, jit_compile: str, environ: Mapping[str, str]
) -> AcceleratorPlan:
    """Decide strategy, precision and XLA from the GPUs, train.* switches and the environment."""
    workers = cluster_workers(environ.get("TF_CONFIG", ""))
    logical_cpus = 1 if gpus else cpu_devices(environ)
    if workers > 1:
        strategy: StrategyKind = "multi_worker"
    elif len(gpus) > 1 or logical_cpus > 1:
        strategy = "mirrored"
    else:
        strategy = "default"
    tensor_cores = bool(gpus) and all(
        gpu.compute_capability is not None and gpu.compute_capability >= MIXED_PRECISION_CAPABILITY
        for gpu in gpus
    )
    precision: Precision = "float32"
    if mixed_precision == "bfloat16":
        precision = "mixed_bfloat16"
    elif mixed_precision == "float16" or (mixed_precision == "auto" and tensor_cores):
        precision = "mixed_float16"
    # XLA compiles per device; keras turns it off under tf.distribute, and on a CPU the
    # compile time outweighs the gain for these models.
    use_jit = jit_compile == "on" or (
        jit_compile == "auto" and bool(gpus) and strategy == "default"
    )
    if gpus:
        device = f"{len(gpus)} GPU ({', '.join(_describe(gpu) for gpu in gpus)})"
    else:
        device = f"CPU ({logical_cpus} logical devices)" if logical_cpus > 1 else "CPU"
    if workers > 1:
        device += f", {workers} workers"
    return AcceleratorPlan(
        strategy=strategy,
        precision=precision,
        jit_compile=use_jit,
        device=device,
        cpu_devices=logical_cpus,
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
    """Set up the logical devices and precision policy; return the strategy the plan names.

    Call it before TensorFlow runs anything: logical devices and a multi-worker strategy can
    only be set up before its runtime starts.
    """
    import keras
    import tensorflow as tf

    cpu_names: list[str] = []
    if plan.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(plan.cpu_devices)]
        )
        cpu_names = [device.name for device in tf.config.list_logical_devices("CPU")]
    keras.mixed_precision.set_global_policy(plan.precision)
    if plan.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if plan.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(cpu_names or None)
    return tf.distribute.get_strategy()


@dataclass(frozen=True)
class Accelerators:
    """The plan and the tf.distribute strategy it set up, for one training process."""

    plan: AcceleratorPlan
    strategy: Any


def setup_accelerators(
    mixed_precision: str, jit_compile: str, environ: Mapping[str, str]
) -> Accelerators:
    """Plan from the visible GPUs and the environment, then set it up: first thing in train.

    Loading the training pixels already runs TensorFlow (resizing), so this comes before it.
    """
    plan = plan_accelerators(visible_gpus(), mixed_precision, jit_compile, environ)
    if plan.strategy == "multi_worker":
        workers = cluster_workers(environ.get("TF_CONFIG", ""))
        raise PipelineError(MULTI_WORKER_BLOCKED.format(workers=f"{workers} workers"))
    return Accelerators(plan, apply_plan(plan))
