"""Tests for the accelerator plan (cxr/training/devices.py): pure planning, no backend runs."""

from __future__ import annotations

import json

import pytest

from cxr.core.errors import PipelineError
from cxr.core.params import run_settings
from cxr.training.devices import (
    CPU_DEVICES_VARIABLE,
    ONEDNN_VARIABLE,
    AcceleratorPlan,
    Cluster,
    Gpu,
    avoid_empty_replica_batches,
    check_cluster,
    plan_accelerators,
    setup_accelerators,
)

ONE_GPU = [Gpu("NVIDIA H100", (9, 0))]
VOLTA = [Gpu("Tesla V100", (7, 0))]
TWO_GPUS = [Gpu("NVIDIA A100", (8, 0)), Gpu("NVIDIA A100", (8, 0))]
OLD_GPU = [Gpu("Tesla P100", (6, 0))]


def _tf_config(workers: int) -> dict[str, str]:
    """An environment with a TF_CONFIG naming `workers` workers, this process being the first."""
    cluster = {"worker": [f"host{index}:12345" for index in range(workers)]}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})}


@pytest.mark.parametrize(
    ("mixed_precision", "expected"),
    [
        ("auto", "float32"),
        ("float16", "mixed_float16"),
        ("bfloat16", "mixed_bfloat16"),
        ("off", "float32"),
    ],
)
def test_no_gpu_trains_on_cpu_with_the_default_strategy(
    mixed_precision: str, expected: str
) -> None:
    # Given no visible GPU and no cluster
    # When the accelerators are planned
    plan = plan_accelerators([], mixed_precision, "auto", {})

    # Then training uses the CPU with the default strategy, 16-bit floats only when asked
    assert plan == AcceleratorPlan(
        strategy="default", precision=expected, jit_compile=False, device="CPU"
    )


@pytest.mark.parametrize(
    ("mixed_precision", "expected"), [("auto", True), ("float16", True), ("off", False)]
)
def test_one_gpu_uses_the_default_strategy_and_mixed_precision_under_auto(
    mixed_precision: str, expected: bool
) -> None:
    # Given one visible GPU
    # When the accelerators are planned
    plan = plan_accelerators(ONE_GPU, mixed_precision, "auto", {})

    # Then the default strategy is used, with mixed precision unless switched off
    assert plan.strategy == "default"
    assert plan.mixed_precision is expected
    assert plan.device.startswith("1 GPU")
    assert "NVIDIA H100 (compute 9.0)" in plan.device
    assert plan.jit_compile is True


def test_two_gpus_are_mirrored() -> None:
    # Given two visible GPUs
    # When the accelerators are planned
    plan = plan_accelerators(TWO_GPUS, "auto", "auto", {})

    # Then training is mirrored over both with mixed precision, and the device says so
    assert plan.strategy == "mirrored"
    assert plan.mixed_precision is True
    assert plan.device.startswith("2 GPU")
    assert plan.device.count("NVIDIA A100 (compute 8.0)") == 2
    # keras turns XLA off under tf.distribute, so auto does not ask for it
    assert plan.jit_compile is False


@pytest.mark.parametrize("gpus", [[], ONE_GPU, TWO_GPUS])
def test_tf_config_with_two_workers_is_multi_worker(gpus: list[str]) -> None:
    # Given a TF_CONFIG describing a cluster of two workers
    environ = _tf_config(2)

    # When the accelerators are planned
    plan = plan_accelerators(gpus, "auto", "auto", environ)

    # Then the multi-worker strategy is used and the device names the workers
    assert plan.strategy == "multi_worker"
    assert plan.device.endswith(", 2 workers")
    assert plan.mixed_precision is bool(gpus)


@pytest.mark.parametrize("environ", [_tf_config(1), {"TF_CONFIG": "  "}, {"OTHER": "x"}])
def test_a_single_worker_or_no_tf_config_is_not_multi_worker(environ: dict[str, str]) -> None:
    # Given a cluster of one worker, a blank TF_CONFIG or none at all
    # When the accelerators are planned with two GPUs
    plan = plan_accelerators(TWO_GPUS, "auto", "auto", environ)

    # Then the GPUs decide: mirrored, and no workers are mentioned
    assert plan.strategy == "mirrored"
    assert "workers" not in plan.device


def test_malformed_tf_config_is_a_one_line_pipeline_error() -> None:
    # Given a TF_CONFIG that is not JSON
    environ = {"TF_CONFIG": "{cluster: worker"}

    # When the accelerators are planned
    with pytest.raises(PipelineError) as error:
        plan_accelerators(ONE_GPU, "auto", "auto", environ)

    # Then one line names TF_CONFIG
    assert "TF_CONFIG" in str(error.value)
    assert "\n" not in str(error.value)


def test_mixed_precision_auto_needs_tensor_cores_on_every_gpu() -> None:
    # Given a pre-Volta GPU, a GPU of unknown capability, and a mix of old and new
    # When the accelerators are planned with mixed precision on auto
    plans = [
        plan_accelerators(gpus, "auto", "auto", {})
        for gpus in (OLD_GPU, [Gpu("GPU:0")], [*OLD_GPU, *ONE_GPU])
    ]

    # Then float16 is not used (it would be emulated and slower), unless forced on
    assert [plan.mixed_precision for plan in plans] == [False, False, False]
    assert plan_accelerators(OLD_GPU, "float16", "auto", {}).precision == "mixed_float16"
    assert "Tesla P100 (compute 6.0)" in plans[0].device


@pytest.mark.parametrize(
    ("gpus", "jit_compile", "expected"),
    [([], "auto", False), ([], "on", True), (ONE_GPU, "auto", True), (ONE_GPU, "off", False)],
)
def test_xla_is_on_for_one_gpu_under_auto_and_follows_on_off(
    gpus: list[Gpu], jit_compile: str, expected: bool
) -> None:
    # Given a CPU or one GPU, When planned with train.jit_compile, Then XLA follows it
    assert plan_accelerators(gpus, "off", jit_compile, {}).jit_compile is expected


@pytest.mark.parametrize(
    ("value", "mirrored"), [("2", True), ("4", True), ("1", False), ("", False)]
)
def test_cxr_cpu_devices_mirrors_over_logical_cpu_devices(value: str, mirrored: bool) -> None:
    # Given no GPU and CXR_CPU_DEVICES
    # When the accelerators are planned
    plan = plan_accelerators([], "auto", "auto", {CPU_DEVICES_VARIABLE: value})

    # Then two or more logical devices are mirrored over, and the device text says how many
    assert (plan.strategy == "mirrored") is mirrored
    assert plan.cpu_devices == (int(value) if mirrored else 1)
    assert plan.device == (f"CPU ({value} logical devices)" if mirrored else "CPU")


def test_cxr_cpu_devices_is_ignored_when_gpus_are_visible() -> None:
    # Given one GPU and CXR_CPU_DEVICES=2, When planned, Then the GPU decides
    plan = plan_accelerators(ONE_GPU, "auto", "auto", {CPU_DEVICES_VARIABLE: "2"})
    assert (plan.strategy, plan.cpu_devices) == ("default", 1)


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_cxr_cpu_devices_is_a_one_line_error(value: str) -> None:
    # Given a value that is not a whole number of at least 1
    with pytest.raises(PipelineError) as error:
        plan_accelerators([], "auto", "auto", {CPU_DEVICES_VARIABLE: value})

    # Then one line names the variable and its value
    assert f"{CPU_DEVICES_VARIABLE} = {value!r}" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("environ", "switched"),
    [
        ({CPU_DEVICES_VARIABLE: "2"}, True),
        ({CPU_DEVICES_VARIABLE: "2", ONEDNN_VARIABLE: "1"}, False),  # the user's choice stays
        ({}, False),
    ],
)
def test_onednn_is_switched_off_only_when_mirroring_over_cpu_devices(
    environ: dict[str, str], switched: bool
) -> None:
    # Given an environment, When prepared before TensorFlow loads
    before = dict(environ)
    changed = avoid_empty_replica_batches(environ)

    # Then oneDNN is off only for a CPU split into devices, and a value already set is kept
    assert changed is switched
    assert environ.get(ONEDNN_VARIABLE) == ("0" if switched else before.get(ONEDNN_VARIABLE))


def test_several_workers_are_refused_with_the_keras_issue_and_the_jax_way() -> None:
    # Given a TF_CONFIG with two workers
    # When train sets up its accelerators
    with pytest.raises(PipelineError) as error:
        setup_accelerators("auto", "auto", _tf_config(2))

    # Then it stops before TensorFlow runs anything, naming the workers, the Keras issue and
    # the way that works: JAX with the cluster's run settings
    message = str(error.value)
    assert message.startswith("TF_CONFIG names 2 workers: ")
    assert "keras-team/keras#20585" in message and "KERAS_BACKEND=jax" in message
    assert "CXR_COORDINATOR_ADDRESS" in message and "\n" not in message


@pytest.mark.parametrize(("devices", "expected"), [(1, "default"), (2, "data_parallel")])
def test_jax_trains_data_parallel_over_every_device_it_sees(devices: int, expected: str) -> None:
    # Given JAX seeing one or two CPU devices (XLA_FLAGS or CXR_CPU_DEVICES)
    # When the accelerators are planned
    plan = plan_accelerators([], "auto", "auto", {}, backend="jax", devices=devices)

    # Then two are trained over with keras.distribution, each batch split between them, and
    # XLA is on: JAX compiles every step, on a CPU too
    assert (plan.strategy, plan.replicas) == (expected, devices)
    assert plan.device == ("CPU (2 devices)" if devices == 2 else "CPU")
    assert plan.jit_compile is True and plan.precision == "float32"
    assert (
        plan.backend == "jax"
        and plan_accelerators([], "auto", "off", {}, "jax").jit_compile is False
    )


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(ONE_GPU, "mixed_bfloat16"), (VOLTA, "mixed_float16"), ([*ONE_GPU, *VOLTA], "mixed_float16")],
)
def test_jax_mixed_precision_auto_is_bfloat16_from_ampere_on(
    gpus: list[Gpu], expected: str
) -> None:
    # Given Hopper, Volta or both, When planned for JAX with mixed precision on auto
    plan = plan_accelerators(gpus, "auto", "auto", {}, backend="jax", devices=len(gpus))
    # Then bfloat16 where every GPU has it (no loss scaling), float16 from Volta on
    assert plan.precision == expected
    # (TensorFlow keeps float16 on every tensor-core GPU)
    assert plan_accelerators(ONE_GPU, "auto", "auto", {}).precision == "mixed_float16"


def test_a_cluster_of_processes_is_named_in_the_device_and_the_plan() -> None:
    # Given two processes with one CPU device each, When planned as process 1
    cluster = Cluster("127.0.0.1:1234", processes=2, process_id=1)
    plan = plan_accelerators([], "auto", "auto", {}, backend="jax", devices=2, cluster=cluster)
    # Then the batches are split over both devices, and the device text names the processes
    assert (plan.strategy, plan.replicas, plan.processes, plan.process_id) == (
        "data_parallel",
        2,
        2,
        1,
    )
    assert plan.device == "CPU (2 devices), 2 processes"


@pytest.mark.parametrize(
    ("cluster", "backend", "problem"),
    [
        (Cluster("h:1", 2, 0), "tensorflow", "CXR_NUM_PROCESSES = 2: training one model"),
        (Cluster("", 2, 0), "jax", "without CXR_COORDINATOR_ADDRESS"),
        (Cluster("h:1", 2, 2), "jax", "CXR_PROCESS_ID = 2: one of 0 .. 1"),
    ],
)
def test_a_cluster_that_cannot_run_is_a_one_line_error(
    cluster: Cluster, backend: str, problem: str
) -> None:
    # Given several processes on TensorFlow, without a coordinator, or with a rank too high
    with pytest.raises(PipelineError) as error:
        check_cluster(cluster, backend)
    # Then one line says which setting and what to do
    assert problem in str(error.value) and "\n" not in str(error.value)
    check_cluster(Cluster("h:1", 2, 1), "jax")  # a valid one passes
    check_cluster(Cluster(), "tensorflow")  # as does one process anywhere


def test_the_cluster_comes_from_the_run_settings() -> None:
    # Given the environment of process 1 of 2
    environ = {
        "CXR_COORDINATOR_ADDRESS": "10.0.0.1:8476",
        "CXR_NUM_PROCESSES": "2",
        "CXR_PROCESS_ID": "1",
    }
    # When read, Then the run settings hold them; a count of 0 is a one-line error
    runtime = run_settings(environ)
    assert (runtime.coordinator_address, runtime.num_processes, runtime.process_id) == (
        "10.0.0.1:8476",
        2,
        1,
    )
    with pytest.raises(PipelineError, match=r"CXR_NUM_PROCESSES = '0': allowed: integer >= 1"):
        run_settings({"CXR_NUM_PROCESSES": "0"})
