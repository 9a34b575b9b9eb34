import numpy as np
import pandas as pd
import pytest
from evaluation_fixtures import log_run, log_scored_run
from mlflow.tracking import MlflowClient

from cxr.comparison.crossval import (
    crossval_json,
    crossval_line,
    crossval_markdown,
    crossval_metrics,
    fold_runs,
    pooled_label,
    pooled_leaderboard,
    ranked_by_pooled,
)
from cxr.comparison.leaderboard import evaluated_runs, excluded_runs, leaderboard
from cxr.core.params import CompareParams, EvaluateParams
from cxr.core.tables import FoldDesign
from cxr.evaluation.metrics import Predictions, evaluation_metrics
from cxr.evaluation.statistics import mcnemar_exact
from cxr.tracking.store import use_experiment

SCORING = EvaluateParams(
    misclassified_grid=0, bootstrap_samples=50, calibration_bins=5,
    gradcam_images=0, tta=False,
)  # fmt: skip
SETTINGS = CompareParams(
    rank_by="test_accuracy", significance=0.05, registered_model="cxr-cv", ensemble_size=2
)
DESIGN = "d1"
FOLDS = 3
# Each fold tests four images of its own: img/<4 fold> .. img/<4 fold + 3>.
ACTUAL = ["covid", "covid", "normal", "normal"]
# p_covid per fold: vgg16 right on 4, 3, 3 images, pixel_logreg on 2, 2, 3; their mean on all 12.
P_COVID = {
    "vgg16": [[0.9, 0.8, 0.2, 0.1], [0.9, 0.4, 0.3, 0.2], [0.8, 0.7, 0.6, 0.1]],
    "pixel_logreg": [[0.6, 0.4, 0.7, 0.2], [0.4, 0.65, 0.3, 0.7], [0.7, 0.35, 0.35, 0.4]],
}


def log_fold(
    experiment_id: str, model: str, fold: int, p_covid: list[float], design: str = DESIGN
) -> str:
    """A run of `model` on fold `fold` of `design`, tagged as train tags it; its id."""
    fingerprint = f"{design}-fold{fold}"
    run_id = log_scored_run(experiment_id, model, fingerprint, ACTUAL, p_covid, 4 * fold)
    for key, value in {"cv_design": design, "folds": str(FOLDS), "fold": str(fold)}.items():
        MlflowClient().set_tag(run_id, key, value)
    return run_id


def pooled_by_hand(model: str) -> tuple[np.ndarray, np.ndarray]:
    """(true class indices, probabilities) of the model's three folds, images by path."""
    p_covid = np.concatenate(P_COVID[model])
    true = np.array([0 if label == "covid" else 1 for label in ACTUAL * FOLDS])
    order = np.argsort([f"img/{image}.png" for image in range(len(true))])
    return true[order], np.column_stack([p_covid, 1 - p_covid])[order]


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row but the headers and rules."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [row for row in cells if row[0] != "model" and not row[0].startswith(":")]


def log_design(experiment_id: str) -> dict[str, list[str]]:
    """Both models on every fold, resnet50 on two; a stale vgg16 fold 0 first; another design."""
    log_fold(experiment_id, "vgg16", 0, [0.1, 0.1, 0.9, 0.9])  # replaced by the newer run
    runs = {
        model: [log_fold(experiment_id, model, fold, p) for fold, p in enumerate(folds)]
        for model, folds in P_COVID.items()
    }
    runs["resnet50"] = [log_fold(experiment_id, "resnet50", fold, [0.9] * 4) for fold in (0, 1)]
    log_fold(experiment_id, "mobilenetv2", 2, [0.9] * 4, design="d2")
    return runs


def test_every_model_with_all_folds_is_pooled_each_image_once(tmp_path, store):
    # given two models on all three folds of a design, one on two folds, and another design
    experiment_id = use_experiment("cxr-cv", tmp_path, store)
    runs = log_design(experiment_id)
    evaluated = evaluated_runs(experiment_id)
    # when the design's fold 1 is cross-validated
    crossval = pooled_leaderboard(
        evaluated, FoldDesign(DESIGN, FOLDS, 1), experiment_id, SETTINGS, SCORING, 42
    )
    assert crossval is not None
    board = crossval.board.set_index("model")
    # then the two complete models are pooled, best first, the ensemble last
    assert crossval.board["model"].tolist() == ["vgg16", "pixel_logreg", "ensemble"]
    assert crossval.board["best"].tolist() == [True, False, False]
    # each on its 12 images, each image once, scored as evaluate scores a model
    assert board["test_images"].tolist() == [12, 12, 12]
    for model in P_COVID:
        by_hand = evaluation_metrics(
            Predictions(*pooled_by_hand(model), ("covid", "normal")), 50, 5, 42
        )
        for name in (
            "test_accuracy",
            "test_f1_macro",
            "test_roc_auc_ovr",
            "test_covid_sensitivity",
        ):
            assert board.loc[model, name] == pytest.approx(by_hand[name]), (model, name)
            assert board.loc[model, f"{name}_ci_low"] == pytest.approx(by_hand[f"{name}_ci_low"])
    assert board.loc["vgg16", "test_accuracy"] == pytest.approx(10 / 12)
    assert board.loc["vgg16", "test_covid_sensitivity"] == pytest.approx(5 / 6)
    # the newest vgg16 run of fold 0 counts, the others are the ones logged
    assert board.loc["vgg16", "run_id"].split(",") == runs["vgg16"]
    # and the per-fold mean and spread are those of the three fold runs' own figures
    assert board.loc["vgg16", "fold_mean_test_accuracy"] == pytest.approx(np.mean([1, 0.75, 0.75]))
    assert board.loc["vgg16", "fold_std_test_accuracy"] == pytest.approx(
        np.std([1, 0.75, 0.75], ddof=1)
    )
    assert board.loc["vgg16", "train_seconds"] == pytest.approx(3 * 12.0)
    # McNemar's p on the pooled images against the best
    vgg_true, vgg = pooled_by_hand("vgg16")
    _, logreg = pooled_by_hand("pixel_logreg")
    expected = mcnemar_exact(vgg.argmax(1) == vgg_true, logreg.argmax(1) == vgg_true)
    assert board.loc["pixel_logreg", "mcnemar_p"] == pytest.approx(expected)
    assert board.loc["vgg16", "mcnemar_p"] is None
    # the ensemble of the two averages their pooled probabilities: right on all 12
    assert board.loc["ensemble", "members"] == ("vgg16", "pixel_logreg")
    assert board.loc["ensemble", "test_accuracy"] == 1.0
    # and resnet50 waits for its fold 2
    [waiting] = crossval.incomplete.to_dict(orient="records")
    assert waiting["model"] == "resnet50" and waiting["missing_folds"] == [2]
    assert waiting["folds"] == [0, 1] and "missing fold(s) 2" in waiting["reason"]


def test_reports_show_the_pooled_board_and_the_missing_folds(tmp_path, store):
    # given the pooled leaderboard of a design with one model still missing a fold
    experiment_id = use_experiment("cxr-cv-reports", tmp_path, store)
    runs = log_design(experiment_id)
    # vgg16's folds evaluated with a moved covid decision, one of pixel_logreg's too
    for run_id in runs["vgg16"]:
        MlflowClient().set_tag(run_id, "decision", "val_covid_sensitivity")
        MlflowClient().log_metric(run_id, "depth", 16)
        MlflowClient().log_metric(run_id, "parameters", 14_780_739)
    MlflowClient().set_tag(runs["pixel_logreg"][1], "decision", "val_macro_f1")
    crossval = pooled_leaderboard(
        evaluated_runs(experiment_id), FoldDesign(DESIGN, FOLDS, 2), experiment_id, SETTINGS,
        SCORING, 42,
    )  # fmt: skip
    # when it is written as Markdown and JSON, and summed up in a line
    markdown = crossval_markdown(crossval, 0.05)
    report = crossval_json(crossval)
    line = crossval_line(report)
    # then the Markdown has the design, a row per model with the pooled and per-fold figures
    assert f"design `{DESIGN}` (3 folds; this workspace holds fold 2)" in markdown
    rows = table_rows(markdown)
    assert rows[0][:3] == ["**vgg16** *", "12", "0.833 [0.667, 1.000]"]
    assert rows[0][6:8] == ["val_covid_sensitivity", "0.833 ± 0.144"]
    # a model whose folds decided differently shows each way, so the mix is seen
    assert rows[1][6] == "argmax/val_macro_f1"
    assert rows[2][0] == "ensemble(vgg16+pixel_logreg)" and rows[2][6] == ""
    # and the depth and parameters of the network each fold trained; the ensemble's parameters
    # are its members' (vgg16's and pixel_logreg's 1,234), it has no one depth
    header = [line for line in markdown.splitlines() if line.startswith("| model")][0]
    assert [cell.strip() for cell in header.strip("|").split("|")][-2:] == ["depth", "parameters"]
    assert rows[0][-2:] == ["16", "14,780,739"] and rows[2][-2:] == ["", "14,781,973"]
    assert rows[3][:3] == ["resnet50", "0, 1", "2"]
    # the JSON every entry, strict values, the run of each fold
    assert report["best_model"] == "vgg16" and report["models"] == 2
    assert report["leaderboard"]["vgg16"]["test_images"] == 12
    assert len(report["leaderboard"]["pixel_logreg"]["run_ids"]) == 3
    assert report["leaderboard"]["vgg16"]["decision"] == "val_covid_sensitivity"
    assert report["leaderboard"]["pixel_logreg"]["significant"] in (True, False)
    assert report["ensemble"]["members"] == ["vgg16", "pixel_logreg"]
    assert report["incomplete"][0]["missing_folds"] == [2]
    # the headline its best figures
    assert crossval_metrics(crossval) == {
        "cv_design": DESIGN,
        "cv_models_pooled": 2,
        "cv_best_model": "vgg16",
        "cv_best_test_accuracy": pytest.approx(10 / 12),
        "cv_best_test_f1_macro": report["leaderboard"]["vgg16"]["test_f1_macro"],
        "cv_ensemble_test_accuracy": 1.0,
    }
    # and the line what is pooled and what is missing
    assert line.startswith(f"compare: cross-validation design {DESIGN} (3 folds): 2 model(s)")
    assert "best vgg16 at test_accuracy 0.833 [" in line and "on 12 images" in line
    assert line.endswith("not pooled: resnet50 (missing fold(s) 2) -> crossval.md")
    # while a single split has no pooled leaderboard at all
    assert crossval_line(crossval_json(None)) == ""
    assert crossval_markdown(None, 0.05).startswith("No cross-validation")
    assert crossval_metrics(None)["cv_design"] is None


def test_a_fold_without_probabilities_or_any_pooled_model_says_why(tmp_path, store):
    # given a design where vgg16's fold 1 logged no probabilities (an older evaluate)
    experiment_id = use_experiment("cxr-cv-unlogged", tmp_path, store)
    log_fold(experiment_id, "vgg16", 0, P_COVID["vgg16"][0])
    old, _ = log_run(experiment_id, "vgg16", f"{DESIGN}-fold1", 0.75, correct=[True] * 4)
    for key, value in {"cv_design": DESIGN, "folds": "3", "fold": "1"}.items():
        MlflowClient().set_tag(old, key, value)
    log_fold(experiment_id, "vgg16", 2, P_COVID["vgg16"][2])
    # when the design is cross-validated
    crossval = pooled_leaderboard(
        evaluated_runs(experiment_id), FoldDesign(DESIGN, FOLDS, 0), experiment_id, SETTINGS,
        SCORING, 42,
    )  # fmt: skip
    # then nothing is pooled, and the model says which fold to evaluate again
    assert crossval is not None and crossval.board.empty
    [waiting] = crossval.incomplete.to_dict(orient="records")
    assert (
        waiting["missing_folds"] == []
        and "fold(s) 1 logged no test probabilities" in (waiting["reason"])
    )
    assert "No model has been evaluated on every fold" in crossval_markdown(crossval, 0.05)
    assert crossval_json(crossval)["best_model"] is None
    assert "no model on every fold yet; not pooled: vgg16 (fold(s) 1 logged" in crossval_line(
        crossval_json(crossval)
    )
    # and a single split (no design) has no pooled leaderboard
    assert (
        pooled_leaderboard(
            evaluated_runs(experiment_id), None, experiment_id, SETTINGS, SCORING, 42
        )
        is None
    )


def test_fold_runs_are_not_taken_for_another_datas_single_split(tmp_path, store):
    # given the runs of a design, and a single-split run on other data
    experiment_id = use_experiment("cxr-cv-excluded", tmp_path, store)
    log_design(experiment_id)
    log_run(experiment_id, "vgg16", "single-split", 0.9)
    runs = evaluated_runs(experiment_id)
    # when the leaderboard of fold 1 lists what it leaves out
    excluded = excluded_runs(runs, f"{DESIGN}-fold1", FoldDesign(DESIGN, FOLDS, 1))
    reasons = dict(zip(excluded["data_fingerprint"], excluded["reason"], strict=True))
    # then the other folds of its design are named as such, pooled elsewhere
    assert (
        reasons[f"{DESIGN}-fold0"]
        == "fold 0 of this cross-validation design: pooled in crossval.md"
    )
    assert reasons["d2-fold2"] == "other data: fold 2 of cross-validation design d2"
    assert reasons["single-split"].startswith("other data: fingerprint single-split")
    # and the design's runs are picked the latest per model and fold
    picked = fold_runs(runs, DESIGN)
    assert sorted(zip(picked["tags.model"], picked["fold"], strict=True)) == sorted(
        [(model, fold) for model in P_COVID for fold in range(3)]
        + [("resnet50", 0), ("resnet50", 1)]
    )


def test_a_pooled_rank_orders_the_single_split_board_by_its_model(tmp_path, store):
    # given fold 1's single-split board, where pixel_logreg and vgg16 tie on accuracy
    experiment_id = use_experiment("cxr-cv-rank", tmp_path, store)
    log_design(experiment_id)
    runs = evaluated_runs(experiment_id)
    board = leaderboard(runs, f"{DESIGN}-fold1", "test_accuracy")
    settings = SETTINGS.model_copy(update={"rank_by": "cv_test_f1_macro"})
    crossval = pooled_leaderboard(
        runs, FoldDesign(DESIGN, FOLDS, 1), experiment_id, settings, SCORING, 42
    )
    assert crossval is not None and crossval.rank_by == "test_f1_macro"
    # when it is ranked by the pooled macro F1
    ranked = ranked_by_pooled(board, crossval, "cv_test_f1_macro")
    # then each row carries its model's pooled figure, the best pooled first, unpooled last
    pooled = crossval.board.set_index("model")["test_f1_macro"]
    assert ranked["model"].tolist() == ["vgg16", "pixel_logreg", "resnet50"]
    assert ranked["cv_test_f1_macro"].iloc[0] == pytest.approx(pooled["vgg16"])
    assert pd.isna(ranked["cv_test_f1_macro"].iloc[2]) and ranked["best"].tolist() == [
        True,
        False,
        False,
    ]
    # and any other rank_by leaves the board as it is
    assert ranked_by_pooled(board, crossval, "test_accuracy") is board


def test_the_pooled_table_names_the_folds_a_model_collapsed_on() -> None:
    # given a model flagged on two folds, one flagged on none
    flagged = pd.Series({"model": "mobilenetv2", "collapsed": True, "collapsed_folds": (1, 3)})
    clean = pd.Series({"model": "compact_cnn", "collapsed": False, "collapsed_folds": ()})
    # then the label says which folds, and nothing for the clean one
    assert pooled_label(flagged) == "mobilenetv2 (collapsed on folds 1, 3)"
    assert pooled_label(clean) == "compact_cnn"
