"""A cross-validation sweep through DVC's queue on a fresh clone: compare pools the folds.

As README's main workflow runs it: one queued experiment per model and fold, `dvc queue start`,
then compare in any fold of the design finds every model's fold runs and, once a model has them
all, scores each image once on their pooled test predictions. The clone has no mlflow.db yet, so
the first two experiments, run at once, create the store at the same moment: both must succeed
and land in the one store of the clone (cxr.tracking.store_lock).
"""

import json
import re
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
    stages_run,
    task_states,
    torn_info_read,
    wait_for_tasks,
)
from training_fixtures import TINY_BASELINES, tiny_params

pytestmark = pytest.mark.slow

MODELS = ("pixel_logreg", "pixel_rf")
# 40 phantoms a class, so each of two folds trains on enough of them for both baselines to learn
# (on TINY_PHANTOMS' 44 the forest is no better than the largest class on some folds); a few
# trees: the forest fits in a moment. Two folds keep the queue to four experiments.
COUNTS = {"covid": 40, "normal": 40, "viral_pneumonia": 40}
SWEEP = {"data": {"synthetic": {"counts": COUNTS}}, "train": {"baseline": {"trees": 30}}}
FOLDS = 2
IMAGES = sum(COUNTS.values())


def queued(output: str) -> dict[tuple[str, int], str]:
    """The experiment `dvc exp run --queue` queued per (model, fold), from its output."""
    pairs = re.findall(
        r"'model=(\w+)', 'split\.folds=\d+', 'split\.fold=(\d+)'\]\}'\.\s+"
        r"Queued experiment '([\w-]+)'",
        output,
    )
    return {(model, int(fold)): name for model, fold, name in pairs}


def test_task_states_count_a_task_listed_twice_once_by_its_end() -> None:
    # `dvc queue status` lists a task that has just ended both as Running and as Success
    status = (
        "Task     Name        Created    Status\n"
        "8a2b44a  added-puku  01:36 AM   Running\n"
        "89f6f60  messy-tare  01:36 AM   Success\n"
        "8a2b44a  added-puku  01:36 AM   Success\n"
        "c01d5e2  other-task  01:37 AM   Queued\n\n"
        "Worker status: 0 active, 2 idle\n"
    )
    assert task_states(status) == ["Success", "Success", "Queued"]


def test_a_status_read_of_a_half_written_executor_info_is_told_apart() -> None:
    # `dvc queue status` failed once in CI while a worker rewrote a task's info file
    torn = (
        "Task     Name        Created    Status\n"
        "dc54b70  sable-sash  10:33 AM   Running\n"
        "920812c  beaky-gram  10:33 AM   Success\n\n"
        "ERROR: unexpected error - Expecting value: line 1 column 1 (char 0)\n"
    )
    assert torn_info_read(torn)
    assert torn_info_read("ERROR: unexpected error - Extra data: line 1 column 56 (char 55)")
    # any other failure of the command is not asked again
    assert not torn_info_read("ERROR: failed to reproduce 'train': exited with 1")
    assert not torn_info_read("ERROR: unexpected error - [Errno 2] No such file or directory")


def test_a_queued_fold_sweep_gives_the_pooled_leaderboard(tmp_path: Path) -> None:
    # Given a fresh clone of a project on tiny phantoms: no MLflow store, no DVC cache
    origin = tmp_path / "origin"
    params = tiny_params(changes=(*TINY_BASELINES, SWEEP))
    copy_project(origin, {**params, "model": MODELS[0]})
    env = {**clean_env(), "CXR_WORKERS": "1"}
    git_repo(origin, env)
    repo = tmp_path / "project"
    run(["git", "clone", "-q", str(origin), str(repo)], tmp_path, env)
    assert not (repo / "mlflow.db").exists()

    # When both models on every fold of a 2-fold design are queued with DVC's sweep syntax,
    # pixel_rf's fold 1 left out, and the queue runs them two at a time
    output = run(
        [*DVC, "exp", "run", "--queue", "-S", f"model={','.join(MODELS)}"]
        + ["-S", f"split.folds={FOLDS}", "-S", f"split.fold=range(0,{FOLDS})"],
        repo,
        env,
    )
    experiments = queued(output)
    assert sorted(experiments) == sorted((model, fold) for model in MODELS for fold in range(FOLDS))
    run([*DVC, "queue", "remove", experiments["pixel_rf", 1]], repo, env)
    try:
        run([*DVC, "queue", "start", "-j", "2"], repo, env)
        status = wait_for_tasks(repo, env, len(experiments) - 1)
    finally:
        kill_processes_in(tmp_path)  # idle workers: nothing the test started outlives it
    assert task_states(status) == ["Success"] * (len(experiments) - 1), (
        f"{status}{queue_logs(repo, failed_tasks(status))}"
    )
    # and every training run finished in the clone's one store, none in the queue's copies
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("cxr-pipeline")
    assert experiment is not None
    runs = mlflow.search_runs([experiment.experiment_id])
    trained = runs[runs["tags.model"].isin(MODELS)]
    assert sorted(trained["tags.model"]) == sorted([*MODELS, MODELS[0]])
    assert set(runs["status"]) == {"FINISHED"}
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))

    # Then compare run again on any fold of the design (here pixel_rf's fold 0, applied; every
    # other stage is up to date) pools pixel_logreg and lists pixel_rf with its missing fold
    run([*DVC, "exp", "apply", experiments["pixel_rf", 0]], repo, env)
    printed = run([*DVC, "repro", "compare"], repo, env)
    assert stages_run(printed) == ["compare"]
    reports = repo / "reports" / "compare"
    pooled = json.loads((reports / "crossval.json").read_text())
    assert pooled["folds"] == FOLDS and pooled["fold"] == 0 and pooled["models"] == 1
    assert pooled["leaderboard"]["pixel_logreg"]["test_images"] == IMAGES
    assert pooled["incomplete"] == [
        {
            "model": "pixel_rf",
            "folds": [0],
            "missing_folds": [1],
            "reason": "missing fold(s) 1: run them to pool this model",
        }
    ]
    assert "not pooled: pixel_rf (missing fold(s) 1)" in printed

    # When pixel_rf's fold 1 runs too, then its compare prints and writes the pooled leaderboard
    # of both models and their ensemble, each image of the collection scored once per model
    printed = run(
        [*DVC, "exp", "run", "-S", "model=pixel_rf", "-S", f"split.folds={FOLDS}"]
        + ["-S", "split.fold=1"],
        repo,
        env,
    )
    pooled = json.loads((reports / "crossval.json").read_text())
    assert pooled["models"] == 2 and pooled["incomplete"] == []
    assert (
        f"compare: cross-validation design {pooled['cv_design']} ({FOLDS} folds): 2 model(s)"
        in (printed)
    )
    for model in MODELS:
        entry = pooled["leaderboard"][model]
        assert entry["test_images"] == IMAGES and len(set(entry["run_ids"])) == FOLDS
        low, high = entry["test_accuracy_ci_low"], entry["test_accuracy_ci_high"]
        assert low <= entry["test_accuracy"] <= high
        assert entry["fold_std_test_accuracy"] is not None and not entry["collapsed"]
    assert pooled["ensemble"]["members"] == list(pooled["leaderboard"])
    assert pooled["ensemble"]["test_images"] == IMAGES
    worse = [model for model in MODELS if model != pooled["best_model"]]
    assert pooled["leaderboard"][worse[0]]["mcnemar_p_vs_best"] is not None
    markdown = (reports / "crossval.md").read_text()
    assert (
        f"design `{pooled['cv_design']}` ({FOLDS} folds; this workspace holds fold 1)" in markdown
    )
    # and the single-split leaderboard of fold 1 names the other fold's runs as such
    board = json.loads((reports / "leaderboard.json").read_text())
    assert {row["reason"] for row in board["excluded"]} == {
        "fold 0 of this cross-validation design: pooled in crossval.md"
    }
