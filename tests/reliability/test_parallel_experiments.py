"""Queued experiments run in parallel on a fresh clone: both create the MLflow store at once.

Neither clone has an mlflow.db yet, so the two training processes create it at the same
moment; both must succeed and land in the one store of the clone (cxr.tracking.store_lock).
"""

import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from dvc_project import ROOT, clean_env, copy_project, git_repo, run

pytestmark = pytest.mark.slow

DVC = [sys.executable, "-m", "dvc"]
MODELS = ("pixel_logreg", "pixel_svm")


def tiny_params() -> dict:
    """The repository's params, shrunk so each experiment's whole pipeline takes seconds."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(
        counts={"covid": 14, "normal": 18, "viral_pneumonia": 12}, image_size=48
    )
    params["build"].update(cache_size=32, histogram_images_per_class=4, workers=1)
    params["train"]["baseline"]["image_size"] = 16
    params["evaluate"].update(bootstrap_samples=20, gradcam_images=0)
    return params


def queue_status(clone: Path, env: dict[str, str]) -> str:
    """`dvc queue status`: one row per task (Queued, Running, Success, Failed) and the workers."""
    return run([*DVC, "queue", "status"], clone, env)


def wait_for_queue(clone: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Wait until no task is queued or running and every worker has exited; the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = queue_status(clone, env)
        rows = [line.split() for line in status.splitlines()]
        busy = any(row and row[-1] in ("Queued", "Running") for row in rows)
        if not busy and "0 active, 0 idle" in status:
            return status
        assert time.monotonic() < deadline, f"queue still busy after {timeout} s:\n{status}"
        time.sleep(2)


def test_two_queued_experiments_on_a_fresh_clone_both_succeed(tmp_path: Path) -> None:
    # Given a fresh clone of the project: no MLflow store, no DVC cache
    origin = tmp_path / "origin"
    copy_project(origin, tiny_params())
    env = clean_env()
    git_repo(origin, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert not (clone / "mlflow.db").exists()

    # When two experiments are queued and the queue runs them two at a time
    for model in MODELS:
        run([*DVC, "exp", "run", "--queue", "-S", f"model={model}"], clone, env)
    try:
        run([*DVC, "queue", "start", "-j", "2"], clone, env)
        status = wait_for_queue(clone, env)
    finally:
        if "0 active, 0 idle" not in queue_status(clone, env):
            run([*DVC, "queue", "stop", "--kill"], clone, env)

    # Then both succeeded
    outcomes = [row[-1] for row in map(str.split, status.splitlines()) if len(row) >= 4]
    assert outcomes.count("Success") == 2, status
    # and both training runs are finished in the clone's one store
    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("cxr-pipeline")
    assert experiment is not None
    runs = mlflow.search_runs([experiment.experiment_id])
    trained = runs[runs["tags.model"].isin(MODELS)]
    assert sorted(trained["tags.model"]) == sorted(MODELS)
    assert set(runs["status"]) == {"FINISHED"}
    assert not list((clone / ".dvc" / "tmp").rglob("mlflow.db"))
