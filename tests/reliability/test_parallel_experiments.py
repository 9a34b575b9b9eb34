"""A queued sweep runs in parallel on a fresh clone: both experiments create the store at once.

Neither clone has an mlflow.db yet, so the two training processes create it at the same
moment; both must succeed and land in the one store of the clone (cxr.tracking.store_lock).
Their compare stages run at about the same moment too: the champion alias must end on the
better of the two, not on whichever moved it last.
"""

from pathlib import Path

import mlflow
import pytest
from dvc_project import (
    DVC,
    clean_env,
    copy_project,
    failed_tasks,
    git_repo,
    kill_processes_in,
    queue_logs,
    run,
    task_states,
    wait_for_tasks,
)
from mlflow.tracking import MlflowClient
from training_fixtures import TINY_BASELINES, tiny_params

from cxr.comparison.champion import CHAMPION_ALIAS

pytestmark = pytest.mark.slow

MODELS = ("pixel_logreg", "pixel_svm")


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
