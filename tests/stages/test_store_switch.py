"""Switching MLflow store between runs (a local SQLite file, then a real `mlflow server`).

README: evaluate and compare notice that the train run is not in the current store and log to
a new run there; nothing crashes, and a stage that fails leaves the previous outputs as they
were. The server is MLflow's own, started on 127.0.0.1 with its own SQLite file and artifacts.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from evaluation_fixtures import write_project
from mlflow.tracking import MlflowClient

from cxr.core.params import EvaluateParams
from cxr.tracking.store import use_experiment
from stages import compare
from stages.evaluate import evaluate

pytestmark = pytest.mark.slow

QUICK = EvaluateParams(
    misclassified_grid=0, bootstrap_samples=20, calibration_bins=5,
    gradcam_images=0, tta=False,
)  # fmt: skip


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (its own store and artifacts); its URI."""
    port = free_port()
    folder = tmp_path / "server"
    folder.mkdir()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_switching_to_a_tracking_server_logs_there_and_never_crashes(
    tmp_path, store, mlflow_server, small_params_dict, write_params, monkeypatch, capsys
):
    # given a run trained and evaluated in the local SQLite store, and a compare there
    project = tmp_path / "project"
    experiment_id = use_experiment("cxr-pipeline", project, store)
    with mlflow.start_run(experiment_id=experiment_id) as train_run:
        mlflow.log_metric("parameters", 100)
    paths = write_project(project, run_id=train_run.info.run_id, epochs=1)
    write_params(project, small_params_dict)
    local = evaluate(QUICK, 42, 10**7, "cxr-pipeline", paths, store, 8)
    assert local["mlflow_run_id"] == train_run.info.run_id
    assert compare.main(["--root", str(project)]) == 0
    capsys.readouterr()

    # when MLFLOW_TRACKING_URI names the server and compare runs first (DVC skips train and
    # evaluate: nothing it tracks changed), then evaluate and compare again (`dvc repro -f`)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert compare.main(["--root", str(project)]) == 0
    first = json.loads(paths.summary("compare").read_text())
    server = {"MLFLOW_TRACKING_URI": mlflow_server}
    moved = evaluate(QUICK, 42, 10**7, "cxr-pipeline", paths, server, 8)
    assert compare.main(["--root", str(project)]) == 0
    printed = capsys.readouterr().out

    # then compare on the bare server wrote its outputs (no run of this data there yet) ...
    assert first["models_compared"] == 0
    # ... evaluate logged to a new run on the server, linked to the local train run ...
    assert f"run {train_run.info.run_id} is not in this store; logged to a new run" in printed
    client = MlflowClient(mlflow_server)
    linked = client.get_run(moved["mlflow_run_id"])
    assert linked.info.run_id != train_run.info.run_id
    assert linked.data.tags["trained_in_run"] == train_run.info.run_id
    assert linked.data.metrics["test_accuracy"] == pytest.approx(local["test_accuracy"])
    assert mlflow.pyfunc.load_model(moved["model_uri"]) is not None
    # ... and compare then ranked that run and registered it on the server
    after = json.loads(paths.summary("compare").read_text())
    assert after["models_compared"] == 1 and after["best_model"] == linked.data.tags["model"]
    assert client.search_model_versions(f"run_id = '{linked.info.run_id}'")
    # and the local store was not touched by any of it
    assert (
        MlflowClient(store["MLFLOW_TRACKING_URI"]).search_runs(
            [experiment_id], f"tags.trained_in_run = '{train_run.info.run_id}'"
        )
        == []
    )
