"""SIGKILL in the middle of ingest and train, with real DVC, MLflow and TensorFlow.

A kill at any moment must leave every output whole or absent, no debris in git's way, the raw
source untouched, an MLflow run that the next train marks KILLED, and a backup that
`CXR_RESUME=1` continues. Kill points are random but seeded, so a failure replays.
"""

import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from dvc_project import (
    ROOT,
    STAGES,
    clean_env,
    copy_project,
    git_repo,
    git_status,
    run,
    run_and_kill_stage,
    stages_run,
    tree_digest,
)

from cxr.core.outputs import STAGING_DIR
from cxr.ingestion.phantoms import write_phantom_dataset
from cxr.tracking.runs import OWNER_TAG

# The train kills need the first test's pipeline: one worker runs them in order (--dist loadfile).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="finds stage processes in /proc"),
]

SEED = 14
EPOCHS = 6
PER_CLASS = 150
FILES = 3 * PER_CLASS
DVC = [sys.executable, "-m", "dvc"]
# Hidden names a run may leave: git's and DVC's own, and the ignored folders of the pipeline.
# Hidden names that belong to the project, not to a crash (`.gitkeep`: metrics/external/, which
# compare depends on before any external dataset exists).
HIDDEN_ALLOWED = {
    ".git",
    ".dvc",
    ".gitignore",
    ".dvcignore",
    ".gitkeep",
    STAGING_DIR,
    ".train_backup",
}


@dataclass(frozen=True)
class Project:
    """A git + DVC repository of the pipeline, reading a phantom folder outside it."""

    repo: Path
    env: dict[str, str]
    source: Path
    source_digest: dict[str, str]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    base = tmp_path_factory.mktemp("reliability")
    source = base / "source"
    # Enough files that the copy into data/raw takes a moment a kill can land in.
    counts = dict.fromkeys(("covid", "normal", "viral_pneumonia"), PER_CLASS)
    write_phantom_dataset(source, counts, 64, 0.9, seed=5)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = str(source)
    params["build"].update(cache_size=32, histogram_images_per_class=4)
    params["train"].update(image_size=32, epochs=EPOCHS, batch_size=32)
    params["train"]["head"]["dense_units"] = [8]
    params["evaluate"].update(bootstrap_samples=20, gradcam_images=0)
    repo = base / "project"
    copy_project(repo, params)
    env = {**clean_env(), "CXR_WORKERS": "1"}
    git_repo(repo, env)
    return Project(repo, env, source, tree_digest(source))


def staged_files(repo: Path, target: str) -> int | None:
    """Files in the temporary of `target` (e.g. data/raw) right now; None when none is staged."""
    prefix = target.replace("/", "%2F") + "+"
    try:
        for entry in (repo / STAGING_DIR).iterdir():
            if entry.name.startswith(prefix):
                return sum(1 for path in entry.rglob("*") if path.is_file())
    except FileNotFoundError:
        pass  # removed while it was read: not staged (any more)
    return None


def backed_up_epochs(repo: Path, skip: frozenset[str] = frozenset()) -> int:
    """Epochs the running train has backed up in .train_backup (0 before the first).

    `skip`: backup folders of earlier (killed) runs, which the running train removes only
    once it has started.
    """
    for record in (repo / ".train_backup").glob("*/scratch/backup/training_metadata.json"):
        if record.parents[2].name in skip:
            continue
        try:
            return int(json.loads(record.read_text())["epoch"])
        except (OSError, ValueError):
            return 0
    return 0


def hidden_debris(repo: Path) -> list[str]:
    """Hidden files or folders a run left in the checkout, outside git's and DVC's own."""
    found = []
    for path in repo.rglob(".*"):
        relative = path.relative_to(repo)
        if relative.parts[0] in (".git", ".dvc") or path.name in HIDDEN_ALLOWED:
            continue
        found.append(relative.as_posix())
    return found


def unexpected_changes(project: Project) -> list[str]:
    """Paths git status shows besides the pipeline's expected ones (lock, metrics, params)."""
    return [
        path
        for path in git_status(project.repo, project.env)
        if path not in ("dvc.lock", "params.yaml")
        and not path.startswith("metrics/")
        and Path(path).name != ".gitignore"
    ]


def assert_whole_or_absent(project: Project) -> None:
    """Every output a kill may have hit is absent or complete; the source is untouched."""
    repo = project.repo
    assert tree_digest(project.source) == project.source_digest
    raw = repo / "data" / "raw"
    if raw.exists():
        assert tree_digest(raw) == project.source_digest
    for table in ("manifest.parquet", "images.parquet"):
        if (repo / "data" / "interim" / table).exists():
            pd.read_parquet(repo / "data" / "interim" / table)
    models = repo / "models"
    if models.exists():
        assert sorted(path.name for path in models.iterdir()) == ["model.keras", "run.json"]
        json.loads((models / "run.json").read_text())
    assert hidden_debris(repo) == []
    assert unexpected_changes(project) == []


def set_train_params(repo: Path, **train: object) -> None:
    """Change train params in the checkout's params.yaml, as a person editing it would."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def runs(repo: Path) -> pd.DataFrame:
    """Every run of the project's experiment in the checkout's own mlflow.db."""
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("cxr-pipeline")
    assert experiment is not None
    return mlflow.search_runs([experiment.experiment_id])


def test_ingest_killed_at_random_points_leaves_nothing_half_written(project: Project) -> None:
    repo, env = project.repo, project.env
    rng = random.Random(SEED)
    # Given ingest killed early in its run, and twice when it has copied some of the files
    # (points by progress, not time, so they land in the copy on a fast or a slow machine)
    copied = sorted(rng.sample(range(1, FILES // 2), 2))
    points = [(lambda: True, rng.uniform(0.0, 0.3))] + [
        (lambda count=count: (staged_files(repo, "data/raw") or 0) >= count, 0.0)
        for count in copied
    ]
    for ready, delay in points:
        output = run_and_kill_stage([*DVC, "repro"], repo, env, "ingest", ready, delay)
        # Then each output is absent or whole, nothing is in git's way, the source untouched
        assert "Running stage 'ingest'" in output
        assert_whole_or_absent(project)
    # and the half copies lie in the (ignored) staging folder, where the next run finds them
    assert (staged_files(repo, "data/raw") or 0) >= copied[0]

    # When the pipeline runs again
    output = run([*DVC, "repro"], repo, env)

    # Then every stage ran, data/raw is the source, and what the kills left is gone
    assert stages_run(output) == STAGES
    assert tree_digest(repo / "data" / "raw") == project.source_digest
    assert not (repo / STAGING_DIR).exists()
    assert_whole_or_absent(project)


def test_a_killed_train_is_marked_killed_by_the_next_and_a_killed_run_resumes(
    project: Project,
) -> None:
    repo, env = project.repo, project.env
    rng = random.Random(SEED + 1)
    before = set(runs(repo)["run_id"])
    # Given a new learning rate (so no earlier run's outputs can stand in for this train), and
    # train killed in its fit, in a random epoch
    set_train_params(repo, learning_rate=0.002)
    epoch = rng.randrange(EPOCHS - 1)
    run_and_kill_stage(
        [*DVC, "repro"],
        repo,
        env,
        "train",
        lambda: staged_files(repo, "models") is not None and backed_up_epochs(repo) >= epoch,
        rng.uniform(0.0, 0.5),
    )
    # Then no model is half-written, nothing is in git's way, and its run is still RUNNING
    assert_whole_or_absent(project)
    (first,) = set(runs(repo)["run_id"]) - before
    assert runs(repo).set_index("run_id").loc[first, "status"] == "RUNNING"
    backups = repo / ".train_backup"
    first_backup = frozenset(p.name for p in backups.iterdir()) if backups.exists() else frozenset()

    # When the pipeline runs again with new params (without CXR_RESUME), and that train is
    # killed too, in a random epoch after its first backup
    set_train_params(repo, learning_rate=0.003)
    epoch = rng.randrange(1, EPOCHS - 1)
    output = run_and_kill_stage(
        [*DVC, "repro"],
        repo,
        env,
        "train",
        lambda: backed_up_epochs(repo, skip=first_backup) >= epoch,
        rng.uniform(0.0, 0.5),
    )

    # Then that train started afresh, as a new run, and marked the first run KILLED
    assert f"MLflow run {first} was left RUNNING" in output
    (second,) = set(runs(repo)["run_id"]) - before - {first}
    statuses = runs(repo).set_index("run_id")["status"]
    assert statuses[first] == "KILLED" and statuses[second] == "RUNNING"
    assert_whole_or_absent(project)
    backed_up = backed_up_epochs(repo, skip=first_backup)
    assert 1 <= backed_up <= EPOCHS

    # When it runs again as an experiment with CXR_RESUME=1 (same params: train re-runs, as
    # dvc.lock still holds the train before the kills)
    output = run([*DVC, "exp", "run"], repo, {**env, "CXR_RESUME": "1"})

    # Then it continued the second run from its last backed-up epoch, to the end
    assert stages_run(output) == ["train", "evaluate", "compare"]
    assert f"resuming MLflow run {second}" in output
    first_epoch = re.search(r"Epoch (\d+)/", output.split("Running stage 'train'")[1])
    assert backed_up == EPOCHS or (first_epoch and int(first_epoch[1]) == backed_up + 1)
    record = json.loads((repo / "models" / "run.json").read_text())
    assert record["run_id"] == second
    history = pd.read_csv(repo / "metrics" / "train_history.csv")
    assert history["epoch"].tolist() == list(range(EPOCHS))
    finished = mlflow.get_run(second)
    assert finished.info.status == "FINISHED" and finished.data.tags[OWNER_TAG]
    steps = mlflow.tracking.MlflowClient().get_metric_history(second, "val_loss")
    assert {metric.step for metric in steps} == set(range(EPOCHS))
    # and nothing is left RUNNING, in the way, or to resume
    statuses = runs(repo).set_index("run_id")["status"]
    assert statuses[first] == "KILLED" and "RUNNING" not in set(statuses)
    assert not list((repo / ".train_backup").glob("*"))
    assert not (repo / STAGING_DIR).exists()
    assert_whole_or_absent(project)
