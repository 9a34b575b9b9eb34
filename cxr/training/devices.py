"""Which accelerator setup training uses, decided from the visible devices (testable anywhere).

Every backend-specific line of device set-up is here. The environment says what the machine
offers: the GPUs the backend sees, `CXR_CPU_DEVICES` (split the CPU into that many devices and
train over them: multi-device training without GPUs, to check a distributed setup on a laptop
or in CI) and, for one model trained by several processes on several machines, the cluster
(CXR_COORDINATOR_ADDRESS, CXR_NUM_PROCESSES, CXR_PROCESS_ID: the run settings, JAX only).

- TensorFlow (the default backend): MirroredStrategy over the GPUs (or logical CPU devices) of
  one machine. A multi-worker `TF_CONFIG` is refused: Keras 3 cannot fit under
  MultiWorkerMirroredStrategy (keras-team/keras#20585).
- JAX: keras.distribution.DataParallel over every device JAX sees, on one machine or, with a
  cluster, over the devices of all its processes (jax.distributed; CPU processes talk through
  gloo). Every process runs the same fit; process 0 alone writes what the run leaves.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cxr.core.errors import PipelineError
from cxr.models.backend import JAX, TENSORFLOW, keep_tensorflow_out, keras_backend

StrategyKind = Literal["default", "mirrored", "multi_worker", "data_parallel"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]

CPU_DEVICES_VARIABLE = "CXR_CPU_DEVICES"
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
CLUSTER_VARIABLES = ("CXR_COORDINATOR_ADDRESS", "CXR_NUM_PROCESSES", "CXR_PROCESS_ID")
SCALING_OUT = "docs/scaling.md#scaling-out"

# Keras 3 cannot fit under MultiWorkerMirroredStrategy (keras-team/keras#20585, open; seen
# here with TensorFlow 2.21 and Keras 3.15): its train step reduces each scalar log with
# strategy.reduce("MEAN", value, axis=0), which fails for a scalar, and its first symbolic
# build reduces the input batch, which MultiWorkerMirroredStrategy cannot. Training across
# machines therefore runs on JAX; a TF_CONFIG naming several workers stops at once.
MULTI_WORKER_BLOCKED = (
    "TF_CONFIG names {workers}: Keras 3 cannot train under TensorFlow's "
    "MultiWorkerMirroredStrategy (keras-team/keras#20585); train across machines on JAX: unset "
    "TF_CONFIG, set KERAS_BACKEND=jax and " + ", ".join(CLUSTER_VARIABLES) + f" ({SCALING_OUT})"
)

# float16 runs on tensor cores from Volta (7.0) on; older GPUs emulate it and get slower.
MIXED_PRECISION_CAPABILITY = (7, 0)
# bfloat16 (float32's range: no loss scaling) runs on tensor cores from Ampere (8.0) on.
BFLOAT16_CAPABILITY = (8, 0)
# How long the other processes of a cluster wait for process 0 to write the run's outputs.
WRITER_TIMEOUT_MS = 60 * 60 * 1000


@dataclass(frozen=True)
class Gpu:
    """One visible GPU: its name and CUDA compute capability (when known)."""

    name: str
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Cluster:
    """The processes that train one model together (JAX): coordinator `host:port`, count, rank.

    The default, one process, is every run on one machine.
    """

    coordinator: str = ""
    processes: int = 1
    process_id: int = 0


@dataclass(frozen=True)
class AcceleratorPlan:
    """The distribution strategy, precision policy, XLA choice and a readable device text."""

    strategy: StrategyKind
    precision: Precision
    jit_compile: bool
    device: str
    cpu_devices: int = 1  # logical CPU devices to create (> 1 only when mirroring over the CPU)
    backend: str = TENSORFLOW
    replicas: int = 1  # devices each batch is split over by keras.distribution (JAX)
    processes: int = 1
    process_id: int = 0

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
            "least 1 (2 or more trains over them); unset it for the plain CPU"
        )
    return int(value)


def check_cluster(cluster: Cluster, backend: str) -> None:
    """Fail in one line unless the cluster can run: JAX, a coordinator, a rank below the count."""
    if cluster.processes == 1:
        return
    if backend != JAX:
        raise PipelineError(
            f"CXR_NUM_PROCESSES = {cluster.processes}: training one model in several processes "
            f"runs on JAX; set KERAS_BACKEND=jax on every host ({SCALING_OUT})"
        )
    if not cluster.coordinator:
        raise PipelineError(
            f"CXR_NUM_PROCESSES = {cluster.processes} without CXR_COORDINATOR_ADDRESS: set it "
            "to host:port of process 0, the same on every host"
        )
    if cluster.process_id >= cluster.processes:
        raise PipelineError(
            f"CXR_PROCESS_ID = {cluster.process_id}: one of 0 .. {cluster.processes - 1} "
            f"(CXR_NUM_PROCESSES = {cluster.processes}), a different one on each host"
        )


def _describe(gpu: Gpu) -> str:
    """`name (compute 8.0)`, or the bare name when the capability is unknown."""
    if gpu.compute_capability is None:
        return gpu.name
    return f"{gpu.name} (compute {gpu.compute_capability[0]}.{gpu.compute_capability[1]})"


def _all_at_least(gpus: Sequence[Gpu], capability: tuple[int, int]) -> bool:
    """Whether there are GPUs and every one has at least this compute capability."""
    return bool(gpus) and all(
        gpu.compute_capability is not None and gpu.compute_capability >= capability for gpu in gpus
    )


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
    gpus: Sequence[Gpu],
    mixed_precision: str,
    jit_compile: str,
    environ: Mapping[str, str],
    backend: str = TENSORFLOW,
    devices: int = 1,
    cluster: Cluster = Cluster(),
) -> AcceleratorPlan:
    """Decide strategy, precision and XLA from the GPUs, train.* switches and the environment.

    `devices` is how many devices JAX sees in all (every process's), GPUs or CPU devices;
    TensorFlow's CPU devices come from CXR_CPU_DEVICES.
    """
    workers = cluster_workers(environ.get("TF_CONFIG", ""))
    on_jax = backend == JAX
    logical_cpus = 1 if gpus or on_jax else cpu_devices(environ)
    if workers > 1:
        strategy: StrategyKind = "multi_worker"
    elif on_jax and devices > 1:
        strategy = "data_parallel"
    elif not on_jax and (len(gpus) > 1 or logical_cpus > 1):
        strategy = "mirrored"
    else:
        strategy = "default"
    precision: Precision = "float32"
    if mixed_precision == "bfloat16" or (
        mixed_precision == "auto" and on_jax and _all_at_least(gpus, BFLOAT16_CAPABILITY)
    ):
        precision = "mixed_bfloat16"
    elif mixed_precision == "float16" or (
        mixed_precision == "auto" and _all_at_least(gpus, MIXED_PRECISION_CAPABILITY)
    ):
        precision = "mixed_float16"
    if on_jax:
        # JAX runs every step through XLA; `off` means Keras' eager steps (for debugging).
        use_jit = jit_compile != "off"
    else:
        # XLA compiles per device; keras turns it off under tf.distribute, and on a CPU the
        # compile time outweighs the gain for these models.
        use_jit = jit_compile == "on" or (
            jit_compile == "auto" and bool(gpus) and strategy == "default"
        )
    if gpus:
        device = f"{len(gpus)} GPU ({', '.join(_describe(gpu) for gpu in gpus)})"
    elif on_jax:
        device = f"CPU ({devices} devices)" if devices > 1 else "CPU"
    else:
        device = f"CPU ({logical_cpus} logical devices)" if logical_cpus > 1 else "CPU"
    if workers > 1:
        device += f", {workers} workers"
    if cluster.processes > 1:
        device += f", {cluster.processes} processes"
    return AcceleratorPlan(
        strategy=strategy,
        precision=precision,
        jit_compile=use_jit,
        device=device,
        cpu_devices=logical_cpus,
        backend=backend,
        replicas=devices if strategy == "data_parallel" else 1,
        processes=cluster.processes,
        process_id=cluster.process_id,
    )


def visible_gpus(backend: str = TENSORFLOW) -> list[Gpu]:
    """The GPUs the backend can see (JAX: every process's), with their compute capability."""
    if backend == JAX:
        import jax

        return [
            Gpu(
                name=str(device.device_kind),
                compute_capability=_capability(getattr(device, "compute_capability", "")),
            )
            for device in jax.devices()
            if device.platform == "gpu"
        ]
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


def _capability(text: str) -> tuple[int, int] | None:
    """`"9.0"` as (9, 0); None when it is not `major.minor`."""
    major, _, minor = str(text).partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def build_info(gpu_used: bool, backend: str = TENSORFLOW) -> dict[str, str]:
    """Backend and Keras versions as MLflow tags, and the GPU stack's only when a GPU ran.

    TensorFlow reports the CUDA it was built against even on a machine without a GPU; a
    `cuda_version` tag on a CPU run would say the run used CUDA when it did not.
    """
    import keras

    tags = {"keras_backend": backend, "keras_version": keras.__version__}
    if backend == JAX:
        import jax
        import jaxlib

        tags |= {"jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__}
        if gpu_used:
            tags["gpu_platform_version"] = str(jax.devices()[0].client.platform_version)
        return tags
    import tensorflow as tf

    tags["tensorflow_version"] = tf.__version__
    if gpu_used:
        info = tf.sysconfig.get_build_info()
        tags["cuda_version"] = str(info.get("cuda_version", ""))
        tags["cudnn_version"] = str(info.get("cudnn_version", ""))
    return tags


def apply_plan(plan: AcceleratorPlan, deterministic: bool = False) -> Any:
    """Set up devices, precision policy and op determinism; return the strategy the plan names.

    TensorFlow: a tf.distribute strategy; JAX: a keras.distribution.DataParallel, or None on one
    device. Call it before the backend runs anything: TensorFlow's logical devices and a
    multi-worker strategy can only be set up before its runtime starts.
    """
    import keras

    keras.mixed_precision.set_global_policy(plan.precision)
    if plan.backend == JAX:
        if plan.strategy != "data_parallel":
            return None
        import jax

        # Batches come from cxr.training.inputs already split per process (its Shards).
        return keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
    import tensorflow as tf

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    cpu_names: list[str] = []
    if plan.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(plan.cpu_devices)]
        )
        cpu_names = [device.name for device in tf.config.list_logical_devices("CPU")]
    if plan.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if plan.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(cpu_names or None)
    return tf.distribute.get_strategy()


def start_jax(
    cluster: Cluster, cpu_count: int, deterministic: bool, environ: MutableMapping[str, str]
) -> None:
    """Configure JAX before its runtime starts: CPU devices, GPU determinism, the cluster.

    Only the first call in a process starts the cluster (jax.distributed allows one).
    """
    import jax

    if deterministic and "xla_gpu_deterministic_ops" not in environ.get("XLA_FLAGS", ""):
        # Read when the GPU client starts: same params, same metrics on a GPU too.
        flags = environ.get("XLA_FLAGS", "")
        environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()
    if cpu_count > 1:
        jax.config.update("jax_num_cpu_devices", cpu_count)
    if cluster.processes > 1 and not jax.distributed.is_initialized():
        if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in environ:
            # CPU processes exchange gradients through gloo (TCP); the default of jax 0.10,
            # set here so that another jax version's default cannot leave them unconnected.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator,
            num_processes=cluster.processes,
            process_id=cluster.process_id,
        )


@dataclass(frozen=True)
class Accelerators:
    """The plan and the strategy it set up, for one training process."""

    plan: AcceleratorPlan
    strategy: Any = field(default=None)

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """The context models are built, compiled and fitted in (the strategy's, if any)."""
        if self.strategy is None:
            return contextlib.nullcontext()
        return self.strategy.scope()

    @property
    def writes_outputs(self) -> bool:
        """Whether this process writes what the run leaves (process 0; every single process)."""
        return self.plan.process_id == 0

    def agree(self, decision: bool) -> bool:
        """Process 0's decision, on every process (each must stop an epoch loop together)."""
        if self.plan.processes == 1:
            return decision
        import numpy as np
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.array(decision)))

    def check_same(self, what: str, value: str) -> None:
        """Fail in one line unless every process holds the same `value` (data, params)."""
        if self.plan.processes == 1:
            return
        import numpy as np
        from jax.experimental import multihost_utils

        digest = np.array(zlib.crc32(value.encode()), dtype=np.uint32)
        gathered = np.asarray(multihost_utils.process_allgather(digest)).ravel()
        if len(set(gathered.tolist())) > 1:
            raise PipelineError(
                f"process {self.plan.process_id} of {self.plan.processes}: the processes hold "
                f"different {what}; give every host the same checkout, params.yaml and data "
                "(`dvc pull`, or the same build and split)"
            )

    def wait_for_writer(self) -> None:
        """Hold every process until process 0 has written the run, then let all exit together.

        A process that exits ends its part of the cluster; one that left while process 0 still
        wrote would, after JAX's shutdown timeout, take process 0 down with it.
        """
        if self.plan.processes == 1:
            return
        from jax._src import distributed

        client = distributed.global_state.client
        if client is not None:
            client.wait_at_barrier("cxr_train_written", timeout_in_ms=WRITER_TIMEOUT_MS)


def setup_accelerators(
    mixed_precision: str,
    jit_compile: str,
    environ: Mapping[str, str],
    cluster: Cluster = Cluster(),
    deterministic: bool = False,
) -> Accelerators:
    """Plan from the visible devices and the environment, then set it up: first thing in train.

    Loading the training pixels touches no backend, but building a model does, so this comes
    first: TensorFlow's logical devices and JAX's devices and cluster are fixed when their
    runtimes start.
    """
    backend = keep_tensorflow_out()
    check_cluster(cluster, backend)
    workers = cluster_workers(environ.get("TF_CONFIG", ""))
    if workers > 1:
        raise PipelineError(MULTI_WORKER_BLOCKED.format(workers=f"{workers} workers"))
    if backend == JAX:
        import jax

        start_jax(cluster, cpu_devices(environ), deterministic, os.environ)
        devices = jax.device_count()
    else:
        devices = 1
    gpus = visible_gpus(backend)
    plan = plan_accelerators(gpus, mixed_precision, jit_compile, environ, backend, devices, cluster)
    return Accelerators(plan, apply_plan(plan, deterministic))


@contextlib.contextmanager
def outside_distribution() -> Iterator[None]:
    """No keras.distribution inside: a model loaded here lives on this process's devices alone."""
    import keras

    if keras_backend() != JAX:
        yield
        return
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)
