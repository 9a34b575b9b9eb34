import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from evaluation_fixtures import log_run, log_scored_run
from mlflow.tracking import MlflowClient

from cxr.comparison.champion import CHAMPION_ALIAS
from cxr.core.outputs import write_json
from cxr.core.params import CompareParams, EvaluateParams
from cxr.core.paths import ProjectPaths
from cxr.core.tables import data_fingerprint, fold_design_json
from cxr.tracking.store import use_experiment
from stages.compare import compare, main

SCORING = EvaluateParams(
    misclassified_grid=0, bootstrap_samples=50, calibration_bins=5,
    gradcam_images=0, tta=False,
)  # fmt: skip


def write_splits(paths: ProjectPaths) -> str:
    """Tiny train / val / test tables; their data fingerprint."""
    paths.split_dir.mkdir(parents=True)
    splits = {}
    for split, labels in {
        "train": ["covid", "normal"],
        "val": ["covid"],
        "test": ["normal"],
    }.items():
        table = pd.DataFrame(
            {
                "path": [f"{label}/{split}{i}.png" for i, label in enumerate(labels)],
                "label": labels,
                "sha256": [f"{split}{i}" for i in range(len(labels))],
            }
        )
        table.to_parquet(paths.split_table(split))
        splits[split] = table
    return data_fingerprint(splits)


def test_compare_stage_writes_metrics_markdown_chart_and_promotes(tmp_path, store):
    paths = ProjectPaths(tmp_path)
    fingerprint = write_splits(paths)
    experiment_id = use_experiment("cxr-stage", tmp_path, store)
    # an older run tagged the old way (backbone) still competes
    log_run(experiment_id, "vgg16", fingerprint, 0.75, [True, False, True], model_tag="backbone")
    best, best_uri = log_run(
        experiment_id, "efficientnetb0", fingerprint, 0.85, correct=[True] * 3, with_model=True
    )
    log_run(experiment_id, "resnet50", "old-data", 0.95)
    paths.summary("evaluate").parent.mkdir(parents=True, exist_ok=True)
    paths.summary("evaluate").write_text(json.dumps({"mlflow_run_id": best, "model_uri": best_uri}))
    params = CompareParams(
        rank_by="test_accuracy", significance=0.05, registered_model="cxr-stage", ensemble_size=3
    )
    board = compare(params, SCORING, 42, "cxr-stage", paths, store)
    assert len(board) == 2 and board["model"].tolist() == ["efficientnetb0", "vgg16"]
    # the DVC metric names the best model, the summary holds the headline, one scalar per key ...
    assert json.loads(paths.metrics("compare").read_text()) == {"best_model": "efficientnetb0"}
    metrics = json.loads(paths.summary("compare").read_text())
    assert metrics == {
        "best_model": "efficientnetb0",
        "best_test_accuracy": pytest.approx(0.85),
        "best_test_f1_macro": pytest.approx(0.75),
        "models_compared": 2,
        "ensemble_test_accuracy": None,
        "champion_action": "promoted",
        "champion_version": 1,
        # one split, no cross-validation design: no pooled leaderboard
        "cv_design": None,
        "cv_models_pooled": 0,
        "cv_best_model": None,
        "cv_best_test_accuracy": None,
        "cv_best_test_f1_macro": None,
        "cv_ensemble_test_accuracy": None,
    }
    crossval = (paths.reports("compare") / "crossval.md").read_text()
    assert crossval.startswith("No cross-validation: the split tables are one split")
    # ... and the report the whole leaderboard
    report = json.loads((paths.reports("compare") / "leaderboard.json").read_text())
    assert report["best_model"] == "efficientnetb0" and report["models"] == 2
    assert "best_backbone" not in report
    vgg = report["leaderboard"]["vgg16"]
    assert vgg["test_accuracy"] == pytest.approx(0.75) and vgg["parameters"] == 1234
    assert vgg["mcnemar_p_vs_best"] == pytest.approx(1.0) and vgg["significant"] is False
    assert vgg["pretrained"] is False and vgg["inference_images_per_second"] == 250.0
    assert report["data_fingerprint"] == fingerprint
    assert [row["model"] for row in report["excluded"]] == ["resnet50"]
    assert report["champion"]["action"] == "promoted"
    champion = MlflowClient().get_model_version_by_alias("cxr-stage", CHAMPION_ALIAS)
    assert champion.run_id == best
    markdown = (paths.reports("compare") / "leaderboard.md").read_text()
    assert "efficientnetb0" in markdown and fingerprint in markdown
    assert "Excluded (other data" in markdown and "resnet50" in markdown
    assert (
        f"Champion `cxr-stage@champion`: promoted efficientnetb0 run {best[:8]} as version 1, "
        "the first champion: the leaderboard's best by test_accuracy (0.8500)"
    ) in markdown
    assert (paths.reports("compare") / "leaderboard.png").stat().st_size > 0
    assert np.isfinite(report["leaderboard"]["efficientnetb0"]["test_accuracy_ci_low"])
    # no run logged probabilities, so there is no ensemble row, and the files say why
    assert report["ensemble"] is None and "no ensemble row" in report["ensemble_note"].lower()
    assert "only 0 logged its test probabilities" in markdown
    # the registry version says which model, data, run and scores it is
    assert champion.tags["model"] == "efficientnetb0"
    assert champion.tags["data_fingerprint"] == fingerprint and champion.tags["run_id"] == best
    assert champion.tags["test_accuracy"] == "0.8500"
    # the leaderboard is in MLflow too, in its own experiment: one run with its files, table
    # and headline ...
    client = MlflowClient()
    boards = client.get_experiment_by_name("cxr-stage-leaderboard").experiment_id
    query = f"tags.model = 'leaderboard' and tags.data_fingerprint = '{fingerprint}'"
    [first] = client.search_runs([boards], query)
    files = {artifact.path for artifact in client.list_artifacts(first.info.run_id)}
    assert {"leaderboard.md", "leaderboard.png", "leaderboard.json"} <= files
    assert "leaderboard_table.json" in files
    assert first.data.metrics["best_test_accuracy"] == pytest.approx(0.85)
    assert first.info.run_name == "leaderboard"
    # ... which compare run again replaces rather than duplicates, and never ranks
    board = compare(params, SCORING, 42, "cxr-stage", paths, store)
    [again] = client.search_runs([boards], query)
    assert again.info.run_id != first.info.run_id
    assert not client.search_runs([experiment_id], "tags.model = 'leaderboard'")
    assert board["model"].tolist() == ["efficientnetb0", "vgg16"]


def test_main_reads_params_and_reports_an_empty_store(
    tmp_path, store, small_params_dict, write_params, capsys
):
    # given split tables, params and no evaluated run yet
    paths = ProjectPaths(tmp_path)
    write_splits(paths)
    write_params(tmp_path, small_params_dict)
    # when the stage runs
    assert main(["--root", str(tmp_path)]) == 0
    # then it says so, and writes an empty leaderboard with nothing promoted
    printed = capsys.readouterr().out
    assert "compare: 0 model(s) on this data, no evaluated runs yet" in printed
    assert (
        "compare: Champion `cxr-classifier@champion`: not eligible: no run of the leaderboard "
        "can be champion; no champion yet"
    ) in printed
    metrics = json.loads(paths.summary("compare").read_text())
    assert metrics["models_compared"] == 0 and metrics["best_model"] is None
    assert metrics["best_test_accuracy"] is None and metrics["champion_version"] is None
    assert metrics["champion_action"] == "not_eligible"
    assert (paths.reports("compare") / "leaderboard.md").is_file()


def test_compare_adds_the_ensemble_row_and_logs_it_once(tmp_path, store):
    # given three models on the current data, each wrong on a different test image
    paths = ProjectPaths(tmp_path)
    fingerprint = write_splits(paths)
    experiment_id = use_experiment("cxr-stage-ensemble", tmp_path, store)
    actual = ["covid", "covid", "normal", "normal"]
    members = {
        log_scored_run(experiment_id, "mobilenetv2", fingerprint, actual, [0.9, 0.4, 0.3, 0.2]),
        log_scored_run(experiment_id, "vgg16", fingerprint, actual, [0.4, 0.9, 0.2, 0.3]),
        log_scored_run(experiment_id, "resnet50", fingerprint, actual, [0.8, 0.8, 0.7, 0.1]),
    }
    params = CompareParams(
        rank_by="test_accuracy", significance=0.05, registered_model="cxr-ens", ensemble_size=3
    )
    # when compare runs twice
    first = compare(params, SCORING, 42, "cxr-stage-ensemble", paths, store)
    board = compare(params, SCORING, 42, "cxr-stage-ensemble", paths, store)
    # then the three models are ranked and the ensemble of all three comes last
    assert board["model"].tolist()[-1] == "ensemble" and len(board) == 4
    assert first["run_id"].tolist() == board["run_id"].tolist()
    metrics = json.loads(paths.summary("compare").read_text())
    assert metrics["models_compared"] == 3 and metrics["best_model"] != "ensemble"
    assert metrics["ensemble_test_accuracy"] == 1.0
    ensemble = json.loads((paths.reports("compare") / "leaderboard.json").read_text())["ensemble"]
    assert ensemble["test_accuracy"] == 1.0 and ensemble["test_images"] == 4
    assert set(ensemble["member_run_ids"]) == members
    assert ensemble["mcnemar_p_vs_best"] == pytest.approx(1.0)
    assert ensemble["test_accuracy_ci_low"] is not None
    markdown = (paths.reports("compare") / "leaderboard.md").read_text()
    assert f"| {ensemble['name']} " in markdown
    # and one MLflow run holds it, tagged for the data and its members
    runs = MlflowClient().search_runs([experiment_id], "tags.model = 'ensemble'")
    assert [run.info.run_id for run in runs] == [ensemble["run_id"]]
    tags = runs[0].data.tags
    assert tags["data_fingerprint"] == fingerprint
    assert tags["ensemble_members"] == ",".join(sorted(members))
    assert runs[0].data.metrics["test_accuracy"] == 1.0


def write_fold(paths: ProjectPaths, design: str, folds: int, fold: int) -> str:
    """Split tables of fold `fold` of a cross-validation design, as split writes them."""
    shutil.rmtree(paths.split_dir, ignore_errors=True)
    paths.split_dir.mkdir(parents=True)
    splits = {}
    for split in ("train", "val", "test"):
        table = pd.DataFrame(
            {"path": [f"{split}-{fold}.png"], "label": ["covid"], "sha256": [f"{split}{fold}"]}
        )
        table.to_parquet(paths.split_table(split))
        splits[split] = table
    write_json(paths.fold_design, fold_design_json(design, folds, fold))
    return data_fingerprint(splits)


def design_workspace(
    root: Path, store: dict[str, str], experiment: str
) -> tuple[ProjectPaths, list[str], str]:
    """A workspace of design d1 (3 folds): its paths, each fold's fingerprint, the experiment."""
    paths = ProjectPaths(root)
    fingerprints = [write_fold(paths, "d1", 3, fold) for fold in range(3)]
    return paths, fingerprints, use_experiment(experiment, root, store)


def log_design_runs(
    experiment_id: str, fingerprints: list[str], model: str, folds: list[list[float]]
) -> list[str]:
    """`model`'s scored runs on each fold of design d1 (p_covid per fold), tagged as train tags."""
    actual = ["covid", "covid", "normal", "normal"]
    runs = []
    for fold, probabilities in enumerate(folds):
        run_id = log_scored_run(
            experiment_id, model, fingerprints[fold], actual, probabilities, 4 * fold, True
        )
        for key, value in {"cv_design": "d1", "folds": str(len(folds)), "fold": str(fold)}.items():
            MlflowClient().set_tag(run_id, key, value)
        runs.append(run_id)
    return runs


def run_stage_on_fold(
    root: Path, params: dict[str, Any], write_params: Any, experiment: str, compare: CompareParams
) -> None:
    """The compare stage (main) in the workspace of fold 2 of design d1, `params` its params."""
    write_fold(ProjectPaths(root), "d1", 3, 2)
    params["mlflow_experiment"] = experiment
    params["split"] |= {"folds": 3, "fold": 2}
    params["evaluate"]["bootstrap_samples"] = 50
    params["compare"] = compare.model_dump()
    write_params(root, params)
    assert main(["--root", str(root)]) == 0


def test_compare_on_a_fold_pools_its_design_and_the_champion_follows_the_pooled_figure(
    tmp_path, store, capsys, small_params_dict, write_params
):
    # given two models on the three folds of a design, the worse pooled one best on fold 1
    paths, fingerprints, experiment_id = design_workspace(tmp_path, store, "cxr-stage-cv")
    p_covid = {
        "vgg16": [[0.9, 0.8, 0.2, 0.1], [0.9, 0.4, 0.3, 0.6], [0.8, 0.7, 0.4, 0.1]],
        "resnet50": [[0.9, 0.4, 0.7, 0.2], [0.9, 0.8, 0.2, 0.1], [0.7, 0.3, 0.6, 0.6]],
    }
    runs = {
        model: log_design_runs(experiment_id, fingerprints, model, folds)
        for model, folds in p_covid.items()
    }
    params = CompareParams(
        rank_by="cv_test_accuracy", significance=0.05, registered_model="cxr-cv", ensemble_size=2
    )
    # when compare runs in the workspace of fold 1
    write_fold(paths, "d1", 3, 1)
    board = compare(params, SCORING, 42, "cxr-stage-cv", paths, store)
    # then fold 1's board is ranked by each model's pooled accuracy: vgg16 (10/12) first,
    # though resnet50 (7/12 pooled) is better on fold 1 alone
    assert board["model"].tolist()[:2] == ["vgg16", "resnet50"]
    assert board["cv_test_accuracy"].iloc[0] == pytest.approx(10 / 12)
    # the pooled leaderboard is written beside it, and its headline
    pooled = json.loads((paths.reports("compare") / "crossval.json").read_text())
    assert pooled["cv_design"] == "d1" and pooled["best_model"] == "vgg16"
    assert pooled["leaderboard"]["vgg16"]["run_ids"] == runs["vgg16"]
    assert pooled["leaderboard"]["resnet50"]["test_images"] == 12
    assert pooled["ensemble"]["members"] == ["vgg16", "resnet50"]
    metrics = json.loads(paths.summary("compare").read_text())
    assert metrics["cv_best_model"] == "vgg16" and metrics["cv_models_pooled"] == 2
    # the other folds' runs are named as folds of this design, not other data
    report = json.loads((paths.reports("compare") / "leaderboard.json").read_text())
    assert {row["reason"] for row in report["excluded"]} == {
        f"fold {fold} of this cross-validation design: pooled in crossval.md" for fold in (0, 2)
    }
    # and the champion is vgg16's run of this fold
    champion = MlflowClient().get_model_version_by_alias("cxr-cv", CHAMPION_ALIAS)
    assert champion.run_id == runs["vgg16"][1]
    # the leaderboard run in MLflow holds the pooled leaderboard too
    client = MlflowClient()
    boards = client.get_experiment_by_name("cxr-stage-cv-leaderboard").experiment_id
    [logged] = client.search_runs([boards], "tags.model = 'leaderboard'")
    files = {artifact.path for artifact in client.list_artifacts(logged.info.run_id)}
    assert {"crossval.md", "crossval.json"} <= files and logged.data.tags["cv_design"] == "d1"
    assert logged.data.metrics["cv_best_test_accuracy"] == pytest.approx(10 / 12)
    # when the stage then runs in fold 2's workspace, vgg16 stays champion: the same model of
    # the same design, not a new promotion per fold
    run_stage_on_fold(tmp_path, small_params_dict, write_params, "cxr-stage-cv", params)
    printed = capsys.readouterr().out
    assert (
        MlflowClient().get_model_version_by_alias("cxr-cv", CHAMPION_ALIAS).run_id
        == (runs["vgg16"][1])
    )
    assert "pooled over the folds of this cross-validation design" in printed
    assert (
        "compare: cross-validation design d1 (3 folds): 2 model(s) pooled, best vgg16 at "
        "test_accuracy 0.833 ["
    ) in printed


def test_compare_by_a_train_param_ranks_each_recipe_of_a_model_pooled(
    tmp_path, store, capsys, small_params_dict, write_params
):
    # given vgg16 trained two ways (train.members 1 and 3) on the three folds of a design, the
    # one-member recipe logged last, and pixel_logreg once
    paths, fingerprints, experiment_id = design_workspace(tmp_path, store, "cxr-recipes")
    p_covid = {
        ("vgg16", "3"): [[0.9, 0.8, 0.2, 0.1], [0.9, 0.4, 0.3, 0.2], [0.8, 0.7, 0.4, 0.1]],
        ("pixel_logreg", "1"): [[0.9, 0.4, 0.7, 0.2], [0.6, 0.4, 0.2, 0.1], [0.7, 0.3, 0.6, 0.2]],
        ("vgg16", "1"): [[0.9, 0.4, 0.2, 0.6], [0.9, 0.4, 0.3, 0.6], [0.8, 0.3, 0.6, 0.1]],
    }
    runs = {}
    for (model, members), folds in p_covid.items():
        runs[(model, members)] = log_design_runs(experiment_id, fingerprints, model, folds)
        for run_id in runs[(model, members)]:
            MlflowClient().log_param(run_id, "train.members", members)
    params = CompareParams(
        rank_by="cv_test_accuracy", significance=0.05, registered_model="cxr-recipes",
        ensemble_size=0,
    )  # fmt: skip
    write_fold(paths, "d1", 3, 1)
    # when compare ranks models, as by default: one row per model, its newest runs
    compare(params, SCORING, 42, "cxr-recipes", paths, store)
    pooled = json.loads((paths.reports("compare") / "crossval.json").read_text())
    assert set(pooled["leaderboard"]) == {"vgg16", "pixel_logreg"}
    assert pooled["leaderboard"]["vgg16"]["run_ids"] == runs[("vgg16", "1")]
    # when it ranks recipes of train.members
    by_members = params.model_copy(update={"by": ["train.members"]})
    board = compare(by_members, SCORING, 42, "cxr-recipes", paths, store)
    # then each recipe is pooled on its own folds' runs, the three-member one best (11 of 12)
    pooled = json.loads((paths.reports("compare") / "crossval.json").read_text())
    assert pooled["best_model"] == "vgg16[train.members=3]"
    assert pooled["leaderboard"]["vgg16[train.members=3]"]["test_accuracy"] == pytest.approx(
        11 / 12
    )
    assert pooled["leaderboard"]["vgg16[train.members=1]"]["run_ids"] == runs[("vgg16", "1")]
    assert pooled["leaderboard"]["vgg16[train.members=1]"]["test_accuracy"] == pytest.approx(6 / 12)
    assert "pixel_logreg[train.members=1]" in pooled["leaderboard"]
    markdown = (paths.reports("compare") / "crossval.md").read_text()
    assert "| **vgg16[train.members=3]** * " in markdown
    # the fold's own board lists both recipes, ranked by their pooled figures
    assert board["model"].tolist()[0] == "vgg16[train.members=3]"
    assert "vgg16[train.members=1]" in board["model"].tolist()
    # and the champion is the best recipe's run of this fold
    champion = MlflowClient().get_model_version_by_alias("cxr-recipes", CHAMPION_ALIAS)
    assert champion.run_id == runs[("vgg16", "3")][1]
    # in fold 2's workspace the same recipe stays champion, pooled over the design's folds
    run_stage_on_fold(tmp_path, small_params_dict, write_params, "cxr-recipes", by_members)
    assert "pooled over the folds of this cross-validation design" in capsys.readouterr().out
    kept = MlflowClient().get_model_version_by_alias("cxr-recipes", CHAMPION_ALIAS)
    assert kept.run_id == runs[("vgg16", "3")][1]
