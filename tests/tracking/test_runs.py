"""Tests for the MLflow store and tags (cxr/tracking/), on real SQLite stores in tmp_path."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cxr.core.errors import PipelineError
from cxr.core.paths import SPLITS, ProjectPaths
from cxr.core.processes import owner_token
from cxr.tracking.runs import (
    OWNER_TAG,
    WORKSPACE_TAG,
    end_abandoned_runs,
    git_commit,
    log_split_datasets,
    reopen_run,
    run_exists,
    run_name,
    run_tags,
)
from cxr.tracking.store import artifact_location, sqlite_database, tracking_uri, use_experiment


def _sqlite_uri(directory: Path) -> str:
    return f"sqlite:///{directory}/mlflow.db"


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test does, MLflow's global tracking URI ends up pointing into its tmp_path."""
    uri = _sqlite_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield
    mlflow.set_tracking_uri(uri)


@pytest.fixture(scope="module")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, migrated but empty MLflow SQLite store (creating one takes seconds, copying none)."""
    directory = tmp_path_factory.mktemp("empty_store")
    MlflowClient(_sqlite_uri(directory)).search_experiments()
    return directory / "mlflow.db"


@pytest.fixture
def store_environ(tmp_path: Path, _empty_store: Path) -> dict[str, str]:
    """An environment whose MLFLOW_TRACKING_URI names a fresh empty store in tmp_path."""
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    return {"MLFLOW_TRACKING_URI": _sqlite_uri(tmp_path)}


def _outside_git(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Stop git from finding a repository above `directory` (tmp may sit inside one)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(directory.parent))


def test_tracking_uri_from_the_environment_wins(tmp_path: Path) -> None:
    # Given MLFLOW_TRACKING_URI naming a tracking server
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}

    # When the tracking URI is resolved
    uri = tracking_uri(tmp_path, environ)

    # Then the server is used
    assert uri == "http://mlflow.example:5000"


@pytest.mark.parametrize("environ", [{}, {"MLFLOW_TRACKING_URI": "  "}])
def test_tracking_uri_defaults_to_sqlite_in_the_root(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    # Given no (or a blank) MLFLOW_TRACKING_URI
    # When the tracking URI is resolved from a checkout
    uri = tracking_uri(tmp_path, environ)

    # Then it is the SQLite store at the checkout's root
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_tracking_uri_in_a_dvc_temp_experiment_is_the_checkout_store(tmp_path: Path) -> None:
    # Given DVC's throwaway copy of the checkout for a temp experiment
    experiment_copy = tmp_path / ".dvc" / "tmp" / "exps" / "abc"
    experiment_copy.mkdir(parents=True)

    # When the tracking URI is resolved from inside it
    uri = tracking_uri(experiment_copy, {})

    # Then it still names the checkout's store, so runs survive the copy
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_artifacts_of_a_sqlite_store_sit_beside_it(tmp_path: Path) -> None:
    # Given an absolute and a relative SQLite URI
    absolute = _sqlite_uri(tmp_path / "store")
    relative = "sqlite:///stores/mlflow.db"

    # When their artifact locations are resolved
    # Then artifacts go to mlartifacts beside the database file, as a file URI
    assert artifact_location(absolute, tmp_path) == (tmp_path / "store" / "mlartifacts").as_uri()
    assert artifact_location(relative, tmp_path) == (tmp_path / "stores" / "mlartifacts").as_uri()


@pytest.mark.parametrize(
    "uri", ["http://mlflow.example:5000", "https://mlflow.example", "databricks"]
)
def test_other_stores_choose_their_own_artifact_location(tmp_path: Path, uri: str) -> None:
    # Given a tracking server URI
    # When its artifact location is resolved
    # Then the server decides
    assert artifact_location(uri, tmp_path) is None


def test_use_experiment_creates_the_experiment_once(
    tmp_path: Path, store_environ: dict[str, str]
) -> None:
    # Given an empty store named by MLFLOW_TRACKING_URI
    # When the experiment is used twice
    first = use_experiment("cxr-pipeline", tmp_path, store_environ)
    second = use_experiment("cxr-pipeline", tmp_path, store_environ)

    # Then it was created once, its artifacts sit beside the store, and MLflow points at it
    assert first == second
    client = MlflowClient(store_environ["MLFLOW_TRACKING_URI"])
    experiments = [e for e in client.search_experiments() if e.name == "cxr-pipeline"]
    assert [e.experiment_id for e in experiments] == [first]
    assert experiments[0].artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert mlflow.get_tracking_uri() == store_environ["MLFLOW_TRACKING_URI"]
    # and MLflow's UI will open it on its training runs, not on the GenAI overview
    assert experiments[0].tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_made_before_the_kind_tag_gets_it(
    tmp_path: Path, store_environ: dict[str, str]
) -> None:
    # Given an experiment created without the kind tag (by an older version, or by hand)
    client = MlflowClient(store_environ["MLFLOW_TRACKING_URI"])
    made = client.create_experiment("cxr-pipeline")

    # When the pipeline uses it
    used = use_experiment("cxr-pipeline", tmp_path, store_environ)

    # Then it is the same experiment, now tagged as holding training runs
    assert used == made
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"model": "vgg16"}, "vgg16"),
        ({"model": "vgg16", "dvc_experiment": "sweep-1"}, "vgg16 (sweep-1)"),
        ({}, None),
    ],
)
def test_a_run_is_named_after_its_model_and_dvc_experiment(
    tags: dict[str, str], expected: str | None
) -> None:
    assert run_name(tags) == expected


def test_run_exists_only_for_runs_in_the_current_store(
    tmp_path: Path, store_environ: dict[str, str]
) -> None:
    # Given a store with one finished run
    experiment_id = use_experiment("cxr-pipeline", tmp_path, store_environ)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_param("model", "mobilenetv2")

    # When runs are looked up
    # Then that run exists and an unknown id does not
    assert run_exists(run.info.run_id)
    assert not run_exists("0" * 32)


def test_a_deleted_experiment_is_named_in_one_line_with_the_fix(
    tmp_path: Path, store_environ: dict[str, str]
) -> None:
    # Given an experiment that a person deleted in the MLflow UI
    experiment_id = use_experiment("cxr-pipeline", tmp_path, store_environ)
    MlflowClient(store_environ["MLFLOW_TRACKING_URI"]).delete_experiment(experiment_id)

    # When the pipeline uses it again
    with pytest.raises(PipelineError) as raised:
        use_experiment("cxr-pipeline", tmp_path, store_environ)

    # Then one line names the experiment and the command that restores it, and nothing is created
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("mlflow_experiment = 'cxr-pipeline': this experiment was deleted")
    assert f"mlflow experiments restore --experiment-id {experiment_id}" in message
    client = MlflowClient(store_environ["MLFLOW_TRACKING_URI"])
    assert client.get_experiment_by_name("cxr-pipeline").lifecycle_stage == "deleted"


def test_run_tags_name_model_data_and_dvc_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run started by `dvc exp run` outside git
    _outside_git(monkeypatch, tmp_path)
    environ = {"DVC_EXP_NAME": "lusty-lobe"}

    # When its tags are made
    tags = run_tags("vgg16", "abcdef0123456789", tmp_path, environ)

    # Then they name the model, the data, the code, the DVC experiment and who runs it
    assert tags == {
        "model": "vgg16",
        "data_fingerprint": "abcdef0123456789",
        "git_commit": "unknown",
        "mlflow.source.git.commit": "unknown",
        "dvc_experiment": "lusty-lobe",
        WORKSPACE_TAG: str(tmp_path.resolve()),
        OWNER_TAG: owner_token(),
    }


@pytest.mark.parametrize("environ", [{}, {"DVC_EXP_NAME": ""}])
def test_run_tags_omit_dvc_experiment_outside_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> None:
    # Given a run started by plain `dvc repro`
    _outside_git(monkeypatch, tmp_path)

    # When its tags are made
    tags = run_tags("vgg16", "abcdef0123456789", tmp_path, environ)

    # Then there is no dvc_experiment tag
    assert "dvc_experiment" not in tags
    assert tags["model"] == "vgg16"


def test_git_commit_is_unknown_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a folder that is not in a git repository
    _outside_git(monkeypatch, tmp_path)

    # When the commit is asked for
    # Then it is unknown
    assert git_commit(tmp_path) == "unknown"


def test_git_commit_is_head_inside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a git repository with one commit
    _outside_git(monkeypatch, tmp_path)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "README.md").write_text("x", encoding="utf-8")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()

    # When the commit is asked for
    # Then it is HEAD
    assert git_commit(tmp_path) == head
    assert len(head) == 40


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///stores/mlflow.db", "stores/mlflow.db"),
        ("sqlite:///stores/mlflow.db?timeout=20", "stores/mlflow.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("http://mlflow.example:5000", None),
    ],
)
def test_sqlite_database_is_the_file_of_a_sqlite_store(
    tmp_path: Path, uri: str, expected: str | None
) -> None:
    # Given a store URI, when its database file is asked for
    # Then a SQLite file store names its file (relative to the checkout), anything else none
    database = sqlite_database(uri, tmp_path)
    assert database == (None if expected is None else tmp_path.resolve() / expected)
    absolute = sqlite_database(f"sqlite:///{tmp_path}/mlflow.db", Path("/elsewhere"))
    assert absolute == tmp_path.resolve() / "mlflow.db"


def _start_together(script: str, count: int, directory: Path) -> list[str]:
    """Start `count` Python processes running `script` at one moment; return their outputs.

    Each imports first (seconds), then signals ready and waits for the others, so the
    script's MLflow calls really run at once.
    """
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        import mlflow
        from cxr.tracking.store import use_experiment
        directory = Path({str(directory)!r})
        (directory / f"ready-{{sys.argv[1]}}").touch()
        while not (directory / "go").exists():
            time.sleep(0.001)
        """
    ) + textwrap.dedent(script)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(index)],
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(count)
    ]
    deadline = time.monotonic() + 120
    while len(list(directory.glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    (directory / "go").touch()
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
        outputs.append(stdout.strip())
    return outputs


@pytest.mark.slow
def test_processes_creating_a_fresh_store_at_once_all_succeed(tmp_path: Path) -> None:
    # Given a store that does not exist yet (a fresh clone) and four processes using it at once
    uri = _sqlite_uri(tmp_path)
    script = f"""
        environ = {{"MLFLOW_TRACKING_URI": {uri!r}}}
        print(use_experiment("cxr-pipeline", directory, environ))
    """

    # When each creates its tables and the experiment at the same moment
    experiment_ids = _start_together(script, 4, tmp_path)

    # Then every process succeeded and found the same single experiment in one store
    assert len(set(experiment_ids)) == 1
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()] == ["cxr-pipeline", "Default"]
    assert (tmp_path / "mlflow.db.lock").exists()


def _ended_process_token() -> str:
    """The owner token of a process that has already exited."""
    ended = subprocess.run(
        [sys.executable, "-c", "from cxr.core.outputs import owner_token; print(owner_token())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return ended.stdout.strip()


def test_runs_left_running_by_ended_processes_of_this_checkout_are_marked_killed(
    tmp_path: Path, store_environ: dict[str, str]
) -> None:
    # Given RUNNING runs: one of an ended process of this checkout, one of this live process,
    # one of an ended process of another checkout, one with no owner, one a resume will continue
    experiment_id = use_experiment("cxr-pipeline", tmp_path, store_environ)
    client = MlflowClient()
    here, elsewhere = str(tmp_path.resolve()), str(tmp_path.resolve() / "other-clone")
    dead = _ended_process_token()
    owners = {
        "abandoned": {WORKSPACE_TAG: here, OWNER_TAG: dead},
        "live": {WORKSPACE_TAG: here, OWNER_TAG: owner_token()},
        "other_checkout": {WORKSPACE_TAG: elsewhere, OWNER_TAG: dead},
        "other_host": {WORKSPACE_TAG: here, OWNER_TAG: f"not-{socket.gethostname()}+1+1"},
        "unowned": {},
        "resumed": {WORKSPACE_TAG: here, OWNER_TAG: dead},
    }
    runs = {name: client.create_run(experiment_id, tags=tags) for name, tags in owners.items()}

    # When the next train of this checkout looks for abandoned runs
    ended = end_abandoned_runs(experiment_id, tmp_path, keep=[runs["resumed"].info.run_id])

    # Then only the abandoned run is marked KILLED; every other one is still RUNNING
    assert ended == [runs["abandoned"].info.run_id]
    status = {name: client.get_run(run.info.run_id).info.status for name, run in runs.items()}
    assert status == {name: "KILLED" if name == "abandoned" else "RUNNING" for name in owners}


def test_a_reopened_run_is_owned_by_the_process_that_reopens_it(
    tmp_path: Path, store_environ: dict[str, str]
) -> None:
    # Given a run that an ended train process opened and finished
    experiment_id = use_experiment("cxr-pipeline", tmp_path, store_environ)
    client = MlflowClient()
    tags = {WORKSPACE_TAG: str(tmp_path.resolve()), OWNER_TAG: _ended_process_token()}
    trained = client.create_run(experiment_id, tags=tags)
    client.set_terminated(trained.info.run_id, "FINISHED")

    # When evaluate reopens it
    with reopen_run(trained.info.run_id, experiment_id, {"model": "vgg16"}, tmp_path) as run:
        # Then while it is RUNNING again it names this live process, so no train ends it
        reopened = client.get_run(run.info.run_id)
        assert reopened.info.status == "RUNNING"
        assert reopened.data.tags[OWNER_TAG] == owner_token()
        assert end_abandoned_runs(experiment_id, tmp_path) == []
    assert client.get_run(trained.info.run_id).info.status == "FINISHED"


def test_split_tables_logged_again_stay_one_dataset_each(
    tmp_path: Path, store_environ: dict[str, str]
) -> None:
    # Given the three split tables of a project and an open run
    paths = ProjectPaths(tmp_path)
    splits = {
        split: pd.DataFrame({"path": [f"{split}/a.png"], "label": ["covid"], "cache_index": [0]})
        for split in SPLITS
    }
    experiment_id = use_experiment("cxr-datasets", tmp_path, store_environ)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        # When they are logged twice, as a resumed training run does
        log_split_datasets(paths, splits, "0123456789abcdef")
        log_split_datasets(paths, splits, "0123456789abcdef")

    # Then the run lists each once, by split name, with its context and the fingerprint
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert sorted(
        (item.dataset.name, item.dataset.digest, item.tags[0].value) for item in inputs
    ) == [
        ("test", "0123456789abcdef", "test"),
        ("train", "0123456789abcdef", "training"),
        ("val", "0123456789abcdef", "validation"),
    ]
