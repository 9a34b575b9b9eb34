"""A queued sweep runs in parallel on a fresh clone: both experiments create the store at once.

Neither clone has an mlflow.db yet, so the two training processes create it at the same
moment; both must succeed and land in the one store of the clone (cxr.tracking.store_lock).
Their compare stages run at about the same moment too: the champion alias must end on the
better of the two, not on whichever moved it last.
"""

import sys
import time
from collections.abc import Collection
from pathlib import Path

import mlflow
import pytest
from dvc_project import clean_env, copy_project, git_repo, kill_processes_in, run
from mlflow.tracking import MlflowClient
from training_fixtures import TINY_PHANTOMS, tiny_params

from cxr.comparison.champion import CHAMPION_ALIAS

pytestmark = pytest.mark.slow

DVC = [sys.executable, "-m", "dvc"]
MODELS = ("pixel_logreg", "pixel_svm")


# TINY_PHANTOMS through the pixel baselines (MODELS): each experiment's pipeline takes seconds.
TINY_BASELINES = (
    TINY_PHANTOMS,
    {
        # obvious findings in a narrow pose: pixel baselines learn them from a few dozen images
        "data": {"synthetic": {"difficulty": 1.0, "positioning": 1.0}},
        "build": {"cache_size": 32},
        "train": {"baseline": {"image_size": 16}},
        "evaluate": {"bootstrap_samples": 20, "gradcam_images": 0},
    },
)


def queue_status(clone: Path, env: dict[str, str]) -> str:
    """`dvc queue status`: one row per task (Queued, Running, Success, Failed) and the workers."""
    return run([*DVC, "queue", "status"], clone, env)


def task_states(status: str) -> list[str]:
    """The state of each task in `dvc queue status` (its rows end with the state)."""
    states = ("Queued", "Running", "Success", "Failed")
    return [row[-1] for row in map(str.split, status.splitlines()) if row and row[-1] in states]


def queue_logs(clone: Path, failed: Collection[str] = ()) -> str:
    """The end of every log the queue wrote (workers and experiments), for a failure message.

    The logs of the `failed` tasks (short ids from `dvc queue status`) come last, so a report
    that keeps only the end of a long message still shows why they failed.
    """
    logs = sorted(
        clone.glob(".dvc/tmp/exps/**/*.out"),
        key=lambda log: (log.name[:7] in failed, log.name),
    )
    return "".join(f"\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}" for log in logs)


def failed_tasks(status: str) -> list[str]:
    """The short ids of the tasks `dvc queue status` shows as Failed."""
    return [row[0] for row in map(str.split, status.splitlines()) if row and row[-1] == "Failed"]


def wait_for_tasks(clone: Path, env: dict[str, str], count: int, timeout: float = 900) -> str:
    """Wait until `count` tasks have ended (Success or Failed); the last status.

    Only the tasks are waited for, not the workers: an idle worker waits 10 s for more work,
    and on some machines one has been seen to stay idle for good (it is stopped afterwards).
    """
    deadline = time.monotonic() + timeout
    while True:
        status = queue_status(clone, env)
        ended = [state for state in task_states(status) if state in ("Success", "Failed")]
        if len(ended) >= count:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks not ended after {timeout} s:\n{status}{queue_logs(clone)}")
        time.sleep(2)


def test_two_queued_experiments_on_a_fresh_clone_both_succeed(tmp_path: Path) -> None:
    # Given a fresh clone of the project: no MLflow store, no DVC cache
    origin = tmp_path / "origin"
    copy_project(origin, tiny_params(changes=TINY_BASELINES))
    env = {**clean_env(), "CXR_WORKERS": "1"}
    git_repo(origin, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert not (clone / "mlflow.db").exists()

    # When a two-model sweep is queued, as README's workflow does, and run two at a time
    run([*DVC, "exp", "run", "--queue", "-S", f"model={','.join(MODELS)}"], clone, env)
    try:
        run([*DVC, "queue", "start", "-j", "2"], clone, env)
        status = wait_for_tasks(clone, env, len(MODELS))
    finally:
        kill_processes_in(tmp_path)  # idle workers: nothing the test started outlives it

    # Then both succeeded
    assert task_states(status) == ["Success", "Success"], (
        f"{status}{queue_logs(clone, failed_tasks(status))}"
    )
    # and both training runs are finished in the clone's one store
    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("cxr-pipeline")
    assert experiment is not None
    runs = mlflow.search_runs([experiment.experiment_id])
    trained = runs[runs["tags.model"].isin(MODELS)]
    assert sorted(trained["tags.model"]) == sorted(MODELS)
    assert set(runs["status"]) == {"FINISHED"}
    assert not list((clone / ".dvc" / "tmp").rglob("mlflow.db"))
    # and the champion is the better of the two that did not collapse (compare moves it under
    # the store's lock, whichever experiment finished last)
    learned = trained[trained["tags.collapsed"] != "true"]
    assert not learned.empty, "both baselines collapsed: the data is too hard for this test"
    champion = MlflowClient().get_model_version_by_alias("cxr-classifier", CHAMPION_ALIAS)
    assert champion.run_id in set(learned["run_id"])
    assert learned.set_index("run_id").loc[champion.run_id, "metrics.test_accuracy"] == max(
        learned["metrics.test_accuracy"]
    )
