"""Tests for the accelerator plan (stages/devices.py); no TensorFlow needed."""

from __future__ import annotations

import json

import pytest

from stages.devices import AcceleratorPlan, plan_accelerators
from stages.errors import PipelineError

ONE_GPU = ["/physical_device:GPU:0"]
TWO_GPUS = ["/physical_device:GPU:0", "/physical_device:GPU:1"]


def _tf_config(workers: int) -> dict[str, str]:
    """An environment with a TF_CONFIG naming `workers` workers, this process being the first."""
    cluster = {"worker": [f"host{index}:12345" for index in range(workers)]}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})}


@pytest.mark.parametrize(
    ("mixed_precision", "expected"), [("auto", False), ("on", True), ("off", False)]
)
def test_no_gpu_trains_on_cpu_with_the_default_strategy(
    mixed_precision: str, expected: bool
) -> None:
    # Given no visible GPU and no cluster
    # When the accelerators are planned
    plan = plan_accelerators([], mixed_precision, {})

    # Then training uses the CPU with the default strategy, mixed precision only when forced
    assert plan == AcceleratorPlan(strategy="default", mixed_precision=expected, device="CPU")


@pytest.mark.parametrize(
    ("mixed_precision", "expected"), [("auto", True), ("on", True), ("off", False)]
)
def test_one_gpu_uses_the_default_strategy_and_mixed_precision_under_auto(
    mixed_precision: str, expected: bool
) -> None:
    # Given one visible GPU
    # When the accelerators are planned
    plan = plan_accelerators(ONE_GPU, mixed_precision, {})

    # Then the default strategy is used, with mixed precision unless switched off
    assert plan.strategy == "default"
    assert plan.mixed_precision is expected
    assert plan.device.startswith("1 GPU")
    assert ONE_GPU[0] in plan.device


def test_two_gpus_are_mirrored() -> None:
    # Given two visible GPUs
    # When the accelerators are planned
    plan = plan_accelerators(TWO_GPUS, "auto", {})

    # Then training is mirrored over both with mixed precision, and the device says so
    assert plan.strategy == "mirrored"
    assert plan.mixed_precision is True
    assert plan.device.startswith("2 GPU")
    assert all(name in plan.device for name in TWO_GPUS)


@pytest.mark.parametrize("gpus", [[], ONE_GPU, TWO_GPUS])
def test_tf_config_with_two_workers_is_multi_worker(gpus: list[str]) -> None:
    # Given a TF_CONFIG describing a cluster of two workers
    environ = _tf_config(2)

    # When the accelerators are planned
    plan = plan_accelerators(gpus, "auto", environ)

    # Then the multi-worker strategy is used and the device names the workers
    assert plan.strategy == "multi_worker"
    assert plan.device.endswith(", 2 workers")
    assert plan.mixed_precision is bool(gpus)


@pytest.mark.parametrize("environ", [_tf_config(1), {"TF_CONFIG": "  "}, {"OTHER": "x"}])
def test_a_single_worker_or_no_tf_config_is_not_multi_worker(environ: dict[str, str]) -> None:
    # Given a cluster of one worker, a blank TF_CONFIG or none at all
    # When the accelerators are planned with two GPUs
    plan = plan_accelerators(TWO_GPUS, "auto", environ)

    # Then the GPUs decide: mirrored, and no workers are mentioned
    assert plan.strategy == "mirrored"
    assert "workers" not in plan.device


def test_malformed_tf_config_is_a_one_line_pipeline_error() -> None:
    # Given a TF_CONFIG that is not JSON
    environ = {"TF_CONFIG": "{cluster: worker"}

    # When the accelerators are planned
    with pytest.raises(PipelineError) as error:
        plan_accelerators(ONE_GPU, "auto", environ)

    # Then one line names TF_CONFIG
    assert "TF_CONFIG" in str(error.value)
    assert "\n" not in str(error.value)
