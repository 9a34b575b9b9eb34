"""End to end: real `dvc repro` / `dvc exp run` in a temporary git repo, MLflow and TensorFlow.

The tests share one project and run in order: a whole pipeline, then experiments on it (another
backbone, a --temp one, a baseline, an external dataset).
"""

import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from dvc_project import STAGES, clean_env, copy_project, git_repo, run, stages_run
from training_fixtures import TINY_PIPELINE, tiny_params

from stages.compare import COMPARE_HEADLINE
from stages.evaluate import EVALUATE_HEADLINE
from stages.train import TRAIN_HEADLINE

# Each test builds on the last: one worker runs them in order (make test: --dist loadfile).
pytestmark = pytest.mark.slow

SITE_B = "{source: synthetic, synthetic: {seed: 7, exposure: 1.4, image_size: 48, counts: {covid: 8, normal: 8, viral_pneumonia: 8}}}"  # noqa: E501


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("e2e") / "project"
    params = tiny_params(changes=TINY_PIPELINE)
    params["evaluate"]["external"] = {}  # no external dataset, whatever params.yaml names
    copy_project(repo, params)
    env = clean_env()
    git_repo(repo, env)
    return repo, env


def runs_in_store(repo: Path) -> pd.DataFrame:
    """All runs of the project's experiment in the repo's own mlflow.db."""
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("cxr-pipeline")
    assert experiment is not None, "no MLflow experiment in the repo's mlflow.db"
    return mlflow.search_runs([experiment.experiment_id])


def test_repro_builds_every_output(project):
    repo, env = project
    # when the whole pipeline runs
    output = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    # then every stage ran, in order, and wrote its outputs (no external stage: none is named,
    # and compare gathers no external score)
    assert stages_run(output) == STAGES
    assert json.loads((repo / "metrics" / "external.json").read_text()) == {}
    assert sorted(p.name for p in (repo / "data" / "raw").iterdir()) == [
        "covid",
        "normal",
        "viral_pneumonia",
    ]
    images = pd.read_parquet(repo / "data" / "interim" / "images.parquet")
    assert len(images) == 14 + 18 + 12
    splits = {
        s: pd.read_parquet(repo / "data" / "processed" / f"{s}.parquet")
        for s in ("train", "val", "test")
    }
    # no undersampling by default: every image is in a split, each class in each split
    assert sum(len(table) for table in splits.values()) == len(images)
    assert all(set(table["label"]) == set(images["label"]) for table in splits.values())
    assert (repo / "models" / "model.keras").stat().st_size > 0
    for figure in [
        "build/class_counts.png",
        "build/image_sizes.png",
        "build/intensity_histograms.png",
        "evaluate/confusion_matrix.png",
        "evaluate/misclassified.png",
        "compare/leaderboard.png",
        "compare/leaderboard.md",
    ]:
        assert (repo / "reports" / figure).stat().st_size > 0, figure
    train = json.loads((repo / "metrics" / "summary" / "train.json").read_text())
    history = pd.read_csv(repo / "metrics" / "train_history.csv")
    assert len(history) == train["epochs_run"] and {
        "loss",
        "val_loss",
        "accuracy",
        "val_accuracy",
    } <= set(history)
    assert train["pretrained"] is False  # no ImageNet download in tests
    evaluate = json.loads((repo / "metrics" / "summary" / "evaluate.json").read_text())
    assert 0.0 <= evaluate["test_accuracy"] <= 1.0 and evaluate["test_images"] == len(
        splits["test"]
    )
    assert set(evaluate["per_class"]) == {"covid", "normal", "viral_pneumonia"}
    predictions = pd.read_csv(repo / "metrics" / "test_predictions.csv")
    assert len(predictions) == len(splits["test"])
    compare = json.loads((repo / "metrics" / "summary" / "compare.json").read_text())
    assert compare["best_model"] == "compact_cnn" and compare["models_compared"] == 1
    # and MLflow holds one finished run with curves, test metrics and artifacts
    runs = runs_in_store(repo)
    assert len(runs) == 1 and runs.loc[0, "metrics.test_accuracy"] == pytest.approx(
        evaluate["test_accuracy"]
    )
    client = mlflow.tracking.MlflowClient()
    run_id = runs.loc[0, "run_id"]
    assert len(client.get_metric_history(run_id, "val_loss")) == train["epochs_run"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model", "evaluate", "plots"} <= artifacts


def test_second_repro_runs_only_the_always_changed_compare(project):
    repo, env = project
    output = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert stages_run(output) == ["compare"]
    assert "Stage 'train' didn't change" in output


def test_a_change_to_model_code_makes_train_stale_but_not_the_data_stages(project):
    repo, env = project
    # given an up-to-date pipeline, when a model module changes
    module = repo / "cxr" / "models" / "classifier.py"
    original = module.read_text()
    module.write_text(original + "\n# a change to the model code\n")
    try:
        status = json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], repo, env))
    finally:
        module.write_text(original)
    # then DVC would re-run train and what follows, and ingest, build and split are up to date
    stale = {name.split(":")[-1] for name in status}
    assert {"train", "evaluate", "compare"} <= stale
    assert not stale & {"ingest", "build", "split"}
    # (dvc.yaml lists whole library folders: the change shows as its folder's)
    assert {"cxr/models": "modified"} in [
        change.get("changed deps") for change in status["train"] if isinstance(change, dict)
    ]


def test_experiment_with_another_backbone_reruns_only_pretrain_train_evaluate_compare(project):
    repo, env = project
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "baseline"], repo, env)
    # when an experiment changes the backbone
    output = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-n", "res18", "-S", "model=resnet18"],
        repo,
        env,
    )
    # then only the stages that depend on it re-run (pretrain, off, rewrites its record)
    assert stages_run(output) == ["pretrain", "train", "evaluate", "compare"]
    # and the leaderboard and MLflow hold both backbones, the experiment's run tagged with its name
    board = json.loads((repo / "reports" / "compare" / "leaderboard.json").read_text())
    assert set(board["leaderboard"]) == {"compact_cnn", "resnet18"}
    # and the ensemble row averages the two, unless train flagged one collapsed (two epochs on a
    # few dozen phantoms can leave a network answering one class): a collapsed model is left out
    learned = sorted(name for name, row in board["leaderboard"].items() if not row["collapsed"])
    compare = json.loads((repo / "metrics" / "summary" / "compare.json").read_text())
    assert compare["models_compared"] == 2
    runs = runs_in_store(repo)
    if len(learned) == 2:
        assert sorted(board["ensemble"]["members"]) == learned
        assert compare["ensemble_test_accuracy"] == board["ensemble"]["test_accuracy"]
        assert set(runs["tags.model"]) == {"compact_cnn", "resnet18", "ensemble"}
    else:
        assert board["ensemble"] is None and "no ensemble row" in board["ensemble_note"].lower()
        assert set(runs["tags.model"]) == {"compact_cnn", "resnet18"}
    assert runs["metrics.test_accuracy"].notna().all()
    assert set(runs["tags.dvc_experiment"].dropna()) == {"res18"}
    # and dvc exp show lists both with their params and metrics
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, env)
    assert '"resnet18"' in shown and '"compact_cnn"' in shown and "test_accuracy" in shown
    # and dvc plots show renders the history and confusion plots
    plots = run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", str(repo.parent / "plots")], repo, env
    )
    page = (repo.parent / "plots" / "index.html").read_text()
    for rendered in (
        '"val_loss"',
        '"val_accuracy"',
        '"actual"',
        "reports_evaluate_confusion_matrix_png",
        "reports_build_class_counts_png",
        "reports_compare_leaderboard_png",
    ):
        assert rendered in page, f"{rendered} missing from {plots}"


def metric_leaves(value: object, key: str = "") -> dict[str, object]:
    """Each value of a metrics file by its dotted key, as DVC names the columns; lists whole."""
    if not isinstance(value, dict):
        return {key: value}
    return {
        name: leaf
        for child, inner in value.items()
        for name, leaf in metric_leaves(inner, f"{key}.{child}" if key else child).items()
    }


def test_dvc_metrics_and_exp_show_stay_readable(project):
    repo, env = project
    dvc = [sys.executable, "-m", "dvc"]
    # given the pipeline and the experiment above: two models and their ensemble compared
    shown = json.loads(run([*dvc, "metrics", "show", "--json"], repo, env))
    files = list(shown[""]["data"])
    assert {"metrics/compare.json", "metrics/evaluate.json", "metrics/train.json"} <= set(files)
    # then every metrics file holds scalars, names and ids (a model URI) only: DVC prints one
    # column per key, so the leaderboard rows, excluded runs and reasons are in
    # reports/compare/leaderboard.json
    keys: set[str] = set()
    for name in files:
        leaves = metric_leaves(json.loads((repo / name).read_text()))
        wide = {
            key: value
            for key, value in leaves.items()
            if isinstance(value, list) or (isinstance(value, str) and len(value) > 64)
        }
        assert not wide, f"{name}: {wide}"
        keys |= set(leaves)
    # and `dvc metrics show` fits a terminal line: headline metrics only, the stages' counts,
    # intervals and ids in metrics/summary/
    table = run([*dvc, "metrics", "show"], repo, env)
    assert max(map(len, table.splitlines())) < 200, table
    assert "resnet18" in table or "compact_cnn" in table
    assert keys == {*TRAIN_HEADLINE, *EVALUATE_HEADLINE, *COMPARE_HEADLINE}
    # and no metric is named like a dependency or output path (`models` made exp show fail)
    experiments = json.loads(run([*dvc, "exp", "show", "--json"], repo, env))
    paths = {path for kind in ("deps", "outs") for path in experiments[0]["data"][kind] or {}}
    assert "models" in paths and not keys & paths
    # so exp show keeps and drops columns by pattern: the command that failed with KeyError ...
    kept = run(
        [*dvc, "exp", "show", "--no-pager", "--drop", ".*", "--keep", "test_accuracy$"], repo, env
    )
    assert "test_accuracy" in kept and "train.epochs" not in kept
    # ... and the README's headline view of every experiment, which fits 80 columns
    headline = run(
        [*dvc, "exp", "show", "--no-pager", "--drop", ".*", "--keep",
         "Experiment|^model$|test_accuracy$|test_f1_macro$"],
        repo,
        {**env, "COLUMNS": "80"},
    )  # fmt: skip
    assert "res18" in headline and "resnet18" in headline and "…" not in headline
    assert max(map(len, headline.splitlines())) <= 80
    # ... and one metric of every metrics file by pattern (only evaluate has a test_accuracy)
    csv = run(
        [*dvc, "exp", "show", "--no-pager", "--csv", "--drop", ".*", "--keep",
         "Experiment|^model$|test_accuracy$"],
        repo,
        env,
    )  # fmt: skip
    assert csv.splitlines()[0].split(",") == ["Experiment", "test_accuracy", "model"]
    assert "res18" in csv and "resnet18" in csv
    # and --only-changed leaves out every column no experiment changed (deps among them)
    changed = run([*dvc, "exp", "show", "--no-pager", "--csv", "--only-changed"], repo, env)
    columns = changed.splitlines()[0].split(",")
    assert {"model", "train_seconds"} <= set(columns) and len(columns) <= 40
    assert "split.val_fraction" not in columns and "stages/ingest.py" not in columns


def test_temp_experiment_logs_to_the_workspace_store(project):
    repo, env = project
    before = len(runs_in_store(repo))
    # when DVC runs an experiment in a throwaway copy under .dvc/tmp (a train param: the data
    # stages come from the cache)
    run(
        [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "temp-smooth"]
        + ["-S", "train.label_smoothing=0.05"],
        repo,
        env,
    )
    # then its run lands in the workspace's mlflow.db, its artifacts beside it
    runs = runs_in_store(repo)
    assert len(runs) == before + 1
    newest = runs.sort_values("start_time").iloc[-1]
    assert newest["tags.dvc_experiment"] == "temp-smooth"
    assert ".dvc/tmp" not in newest["artifact_uri"]
    assert Path(newest["artifact_uri"].removeprefix("file://")).is_dir()


def test_a_fresh_clone_can_run_an_experiment_on_one_stage(project, tmp_path):
    repo, env = project
    # given a fresh clone of the committed project: dvc.lock, but an empty DVC cache
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "--allow-empty", "-m", "results"], repo, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    # when an experiment reproduces only the split stage (and what it needs)
    output = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "split.val_fraction=0.2", "split"],
        clone,
        env,
    )
    # then it succeeds without the cached outputs of the later stages (reports/..., models)
    assert stages_run(output) == ["ingest", "build", "split"]
    assert "Ran experiment(s)" in output
    assert (clone / "data" / "processed" / "val.parquet").is_file()


def refuse_constant(constant: str) -> None:
    """parse_constant for json.loads: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{constant} is not JSON (strict parsers such as JSON.parse refuse it)")


def test_a_baseline_experiment_and_every_json_written_stay_strict_json(project):
    repo, env = project
    # given the pipeline and its experiments above, when a scikit-learn baseline joins them
    output = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-n", "logreg", "-S", "model=pixel_logreg"],
        repo,
        env,
    )
    assert stages_run(output) == ["pretrain", "train", "evaluate", "compare"]
    # then the leaderboard ranks it with the others, and the best model's McNemar p-value
    # against itself is null with the reason, not NaN
    board = json.loads((repo / "reports" / "compare" / "leaderboard.json").read_text())
    assert {"compact_cnn", "resnet18", "pixel_logreg"} <= set(board["leaderboard"])
    best = board["leaderboard"][board["best_model"]]
    assert best["mcnemar_p_vs_best"] is None
    assert best["mcnemar_p_vs_best_note"] == "the best model itself"
    # and every JSON the stages and MLflow wrote in the project parses with a strict parser
    written = sorted(
        path.relative_to(repo).as_posix()
        for path in repo.rglob("*.json")
        if path.relative_to(repo).parts[0] not in (".git", ".dvc")
    )
    for name in written:
        json.loads((repo / name).read_text(encoding="utf-8"), parse_constant=refuse_constant)
    expected = {
        "reports/compare/leaderboard.json",
        "models/run.json",
        "pretrained/pretrain.json",
        *(f"metrics/summary/{stage}.json" for stage in STAGES if stage != "pretrain"),
        *(f"metrics/{stage}.json" for stage in ("train", "evaluate", "compare")),
    }
    assert expected <= set(written), expected - set(written)
    for artifact in ("test_predictions.json", "leaderboard_table.json", "leaderboard.json"):
        assert any(name.startswith("mlartifacts/") and name.endswith(artifact) for name in written)
    # and its epoch log has no epoch: `dvc plots show` draws no loss or accuracy curve for it
    history = pd.read_csv(repo / "metrics" / "train_history.csv")
    assert history.empty and {"epoch", "loss", "val_loss"} <= set(history)
    shown = repo.parent / "logreg-plots"
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(shown)], repo, env)
    page = (shown / "index.html").read_text()
    assert '"val_loss"' not in page and '"val_accuracy"' not in page
    assert '"actual"' in page  # its confusion plot is drawn


def test_adding_an_external_dataset_runs_only_its_stage_and_compare(project):
    repo, env = project
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "trained"], repo, env)
    model = yaml.safe_load((repo / "params.yaml").read_text())["model"]
    # when an experiment adds phantoms of another seed and exposure as an external dataset
    output = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", f"++evaluate.external.site_b={SITE_B}"],
        repo,
        env,
    )
    # then only its stage and compare ran: nothing was ingested, built or trained again
    assert stages_run(output) == ["external@site_b", "compare"]
    metrics = json.loads((repo / "metrics" / "external" / "site_b.json").read_text())
    assert metrics["images"] == 24 and metrics["source_shortcut_accuracy"] is not None
    # and the leaderboard and metrics/external.json show it for the workspace's model
    board = json.loads((repo / "reports" / "compare" / "leaderboard.json").read_text())
    assert "site_b" in board["leaderboard"][model]["external"]
    combined = json.loads((repo / "metrics" / "external.json").read_text())
    assert combined["site_b"]["accuracy"] == metrics["accuracy"]
    assert "site_b accuracy [95% CI]" in (repo / "reports/compare/leaderboard.md").read_text()
    # and dvc.lock records the stage with its own dataset's params
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    recorded = lock["external@site_b"]["params"]["params.yaml"]
    assert recorded["evaluate.external.site_b"]["synthetic"]["exposure"] == 1.4
    assert "evaluate.external" not in recorded
    # and a second repro runs only the always-changed compare
    again = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert stages_run(again) == ["compare"]
    # and dvc exp show lists the external metrics
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, env)
    assert "metrics/external/site_b.json" in shown
