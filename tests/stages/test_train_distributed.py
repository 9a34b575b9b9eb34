"""The train stage on several devices and processes for real, on a CPU.

Each run is a `python3 -m stages.train` process (devices, the cluster and the precision policy
are set once per process), on the tiny prepared project of training_fixtures. TensorFlow:
mirrored over logical CPU devices, 16-bit floats, XLA; several workers (TF_CONFIG) are refused
with the reason (Keras 3 cannot fit under MultiWorkerMirroredStrategy) and the JAX way. JAX:
data parallel over two forced host devices, and one model trained by two processes on
127.0.0.1 (gloo), compared with the same run in one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from training_fixtures import fresh_copy, tiny_params, write_prepared_project

from cxr.core.paths import ProjectPaths
from cxr.models import classifier
from cxr.models.loading import load_model_file
from cxr.models.pixels import load_split_pixels
from cxr.models.run_record import read_run_record
from cxr.training.devices import CLUSTER_VARIABLES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose build and split outputs exist (pixel cache and split tables)."""
    return write_prepared_project(tmp_path_factory.mktemp("distributed") / "prepared")


def stage_env(**extra: str) -> dict[str, str]:
    """This interpreter's environment without MLflow or cluster overrides, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MLFLOW_")
        and key not in ("TF_CONFIG", "CXR_CPU_DEVICES", "KERAS_BACKEND", "XLA_FLAGS")
        and key not in CLUSTER_VARIABLES
    }
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def start_train(root: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python3 -m stages.train` in `root` (its own MLflow store, root/mlflow.db)."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "stages.train"],
            cwd=root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def start_cluster(
    hosts: list[Path], port: int, logs: Path
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """Start train on each host as process <rank> of one JAX run on 127.0.0.1:`port`."""
    processes = []
    for rank, root in enumerate(hosts):
        cluster = {
            "CXR_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "CXR_NUM_PROCESSES": str(len(hosts)),
            "CXR_PROCESS_ID": str(rank),
        }
        log = logs / f"process{rank}.log"
        processes.append((start_train(root, stage_env(KERAS_BACKEND="jax", **cluster), log), log))
    return processes


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> str:
    """Wait for a train process; fail with its log unless it succeeded."""
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output[-4000:]
    return output


def only_run(root: Path) -> mlflow.entities.Run:
    """The one MLflow run in the project's store."""
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return runs[0]


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that nothing listens on now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for held in sockets:
            held.bind(("127.0.0.1", 0))
        return [held.getsockname()[1] for held in sockets]
    finally:
        for held in sockets:
            held.close()


def files_under(root: Path) -> set[str]:
    """Every file below root, relative."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def test_mirrored_over_two_logical_cpu_devices(prepared: Path, tmp_path: Path) -> None:
    # Given the CPU split into two logical devices
    root = fresh_copy(prepared, tmp_path, tiny_params(epochs=1, fine_tune_epochs=0))
    env = stage_env(CXR_CPU_DEVICES="2")

    # When the train stage runs
    output = finish(start_train(root, env, tmp_path / "train.log"), tmp_path / "train.log")

    # Then it mirrored over both and recorded the model and the run as usual
    run = only_run(root)
    assert run.data.tags["strategy"] == "mirrored"
    assert run.data.tags["device"] == "CPU (2 logical devices)"
    assert run.info.status == "FINISHED"
    assert "train: vgg16" in output
    record = read_run_record(ProjectPaths(root).models_dir)
    assert record.run_id == run.info.run_id


def test_several_workers_stop_at_once_with_the_reason(prepared: Path, tmp_path: Path) -> None:
    # Given a TF_CONFIG naming two workers (Keras 3 cannot fit under MultiWorkerMirroredStrategy)
    root = fresh_copy(prepared, tmp_path, tiny_params(epochs=1, fine_tune_epochs=0))
    before = files_under(root)
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker"}}
    env = stage_env(TF_CONFIG=json.dumps(config))

    # When the train stage runs
    log = tmp_path / "train.log"
    process = start_train(root, env, log)
    process.wait(timeout=300)

    # Then it stops before training with one line that names the cause and the way out
    output = log.read_text()
    assert process.returncode == 2
    error = [line for line in output.splitlines() if line.startswith("error")]
    assert len(error) == 1, output
    assert "TF_CONFIG names 2 workers" in error[0]
    assert "keras-team/keras#20585" in error[0] and "KERAS_BACKEND=jax" in error[0]
    assert "Traceback" not in output
    # and nothing was written: no model, no MLflow run
    assert files_under(root) - before <= {"mlflow.db", "mlflow.db.lock"}


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_sixteen_bit_precision_with_xla_forced_on(
    prepared: Path, tmp_path: Path, precision: str
) -> None:
    # Given a 16-bit mixed-precision policy and XLA forced on
    params = tiny_params(epochs=1, fine_tune_epochs=0, mixed_precision=precision, jit_compile="on")
    root = fresh_copy(prepared, tmp_path, params)

    # When the train stage runs
    finish(start_train(root, stage_env(), tmp_path / "train.log"), tmp_path / "train.log")

    # Then the run says so, the layers computed in 16 bits, and the output stays float32
    run = only_run(root)
    assert run.data.tags["mixed_precision"] == f"mixed_{precision}"
    assert run.data.tags["jit_compile"] == "true"
    model = keras.models.load_model(
        ProjectPaths(root).models_dir / "model.keras",
        custom_objects={"BackboneInput": classifier.BackboneInput},
    )
    assert {layer.dtype_policy.compute_dtype for layer in model.layers} >= {precision}
    probabilities = model.predict(np.zeros((2, 32, 32, 1), np.uint8), verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-3)


def jax_params() -> dict[str, object]:
    """compact_cnn at 32 px, 4 epochs at a constant rate, kept at its last: learns in seconds."""
    params = tiny_params(
        epochs=4, fine_tune_epochs=0, schedule="constant", restore_best_weights=False
    )
    params["model"] = "compact_cnn"
    params["train"]["augment"] = {  # type: ignore[index]
        key: False if key == "horizontal_flip" else 0.0
        for key in params["train"]["augment"]  # type: ignore[index]
    }
    return params


def history(root: Path) -> pd.DataFrame:
    """The epoch log train wrote."""
    return pd.read_csv(ProjectPaths(root).history)


def test_jax_trains_data_parallel_over_two_forced_host_devices(prepared: Path, tmp_path: Path):
    # Given JAX with the CPU split into two host devices (what a machine with two GPUs is)
    root = fresh_copy(prepared, tmp_path, jax_params())
    env = stage_env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")

    # When the train stage runs, with no other setting
    finish(start_train(root, env, tmp_path / "train.log"), tmp_path / "train.log")

    # Then every batch was split over both devices, and the run says so
    run = only_run(root)
    assert run.data.tags["strategy"] == "data_parallel"
    assert run.data.tags["device"] == "CPU (2 devices)"
    assert run.data.tags["keras_backend"] == "jax" and run.data.tags["jit_compile"] == "true"
    assert read_run_record(ProjectPaths(root).models_dir).run_id == run.info.run_id


def test_two_jax_processes_train_one_model_and_only_process_0_writes(
    prepared: Path, tmp_path: Path
) -> None:
    # Given the same project on two "hosts" (two copies); and for comparison the same run in
    # one process, and in one process with another seed (what noise is)
    hosts = [fresh_copy(prepared, tmp_path / f"host{rank}", jax_params()) for rank in (0, 1)]
    alone = fresh_copy(prepared, tmp_path / "alone", jax_params())
    reseeded = fresh_copy(prepared, tmp_path / "reseeded", {**jax_params(), "seed": 43})
    before = files_under(hosts[1])
    (port,) = free_ports(1)

    # When the same command starts on each host, as process 0 and process 1 of 2 on 127.0.0.1
    processes = start_cluster(hosts, port, tmp_path)
    outputs = [finish(process, log) for process, log in processes]
    logs = [tmp_path / "alone.log", tmp_path / "reseeded.log"]
    singles = [
        start_train(root, stage_env(KERAS_BACKEND="jax"), log)
        for root, log in zip((alone, reseeded), logs, strict=True)
    ]
    for process, log in zip(singles, logs, strict=True):
        finish(process, log)

    # Then process 0 wrote the model, the metrics and one MLflow run naming both processes
    run = only_run(hosts[0])
    assert run.data.tags["strategy"] == "data_parallel" and run.info.status == "FINISHED"
    assert run.data.tags["device"] == "CPU (2 devices), 2 processes"
    assert read_run_record(ProjectPaths(hosts[0]).models_dir).run_id == run.info.run_id
    assert ProjectPaths(hosts[0]).metrics("train").is_file()
    # and process 1 trained its share and left nothing behind
    assert "process 1 of 2 trained its share of compact_cnn" in outputs[1]
    assert files_under(hosts[1]) == before
    # and the model is the one process's within noise: it differs from it, epoch by epoch and
    # in its answers, by less than the one process's run differs from itself with another seed
    together, single, other_seed = (history(root) for root in (hosts[0], alone, reseeded))
    for name, table in (("two processes", together), ("one process", single),
                        ("one process, seed 43", other_seed)):  # fmt: skip
        print(f"\n{name}:\n{table.to_string()}")
    assert together["epoch"].tolist() == single["epoch"].tolist() == [0, 1, 2, 3]
    columns = ["loss", "val_loss"]
    distributed = float((together[columns] - single[columns]).abs().max().max())
    seeded = float((other_seed[columns] - single[columns]).abs().max().max())
    val = pd.read_parquet(ProjectPaths(hosts[0]).split_table("val"))["cache_index"]
    images = load_split_pixels(ProjectPaths(hosts[0]).pixel_cache, val, 32)
    answers = [
        load_model_file(ProjectPaths(root).model_file(), "keras").predict(images, verbose=0)
        for root in (hosts[0], alone, reseeded)
    ]
    answered = float(np.abs(answers[0] - answers[1]).max())
    answered_seeded = float(np.abs(answers[2] - answers[1]).max())
    print(
        f"largest loss difference from one process: {distributed:.4f} (another seed: {seeded:.4f})"
    )
    print(f"largest probability difference: {answered:.4f} (another seed: {answered_seeded:.4f})")
    assert distributed < seeded
    assert distributed < 0.05 and answered < 0.1


def test_processes_with_different_params_stop_before_training(prepared: Path, tmp_path: Path):
    # Given two hosts whose params.yaml differ (another seed on host 1)
    hosts = [
        fresh_copy(prepared, tmp_path / "host0", jax_params()),
        fresh_copy(prepared, tmp_path / "host1", {**jax_params(), "seed": 43}),
    ]
    (port,) = free_ports(1)

    # When both start as one run of two processes
    processes = start_cluster(hosts, port, tmp_path)

    # Then each stops with one line saying so, and nothing was trained or written
    for process, log in processes:
        process.wait(timeout=300)
        output = log.read_text(errors="replace")
        assert process.returncode == 2, output[-3000:]
        error = [line for line in output.splitlines() if line.startswith("error")]
        assert len(error) == 1 and "the processes hold different params" in error[0], output
        assert "Epoch 1/" not in output
    assert not (hosts[0] / "models").exists() and not (hosts[0] / "mlflow.db").exists()
