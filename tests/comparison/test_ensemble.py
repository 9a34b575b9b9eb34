import mlflow
import numpy as np
import pandas as pd
import pytest
from evaluation_fixtures import log_run, log_scored_run

from cxr.comparison.ensemble import (
    Ensemble,
    build_ensemble,
    ensemble_note,
    log_ensemble,
    mean_probabilities,
    with_ensemble,
)
from cxr.comparison.leaderboard import (
    compare_metrics,
    draw_leaderboard,
    evaluated_runs,
    leaderboard,
    leaderboard_json,
    leaderboard_markdown,
    with_mcnemar,
)
from cxr.core.params import CompareParams, EvaluateParams
from cxr.evaluation.metrics import Predictions, evaluation_metrics
from cxr.tracking.store import use_experiment

SCORING = EvaluateParams(
    misclassified_grid=0, bootstrap_samples=50, calibration_bins=5,
    gradcam_images=0, tta=False,
)  # fmt: skip
ACTUAL = ["covid", "covid", "normal", "normal"]
# Each model misses one image, a different one; their mean gets all four right:
# p_covid of the mean = 0.7, 0.7, 0.4, 0.2.
P_COVID = {
    "mobilenetv2": [0.9, 0.4, 0.3, 0.2],
    "vgg16": [0.4, 0.9, 0.2, 0.3],
    "resnet50": [0.8, 0.8, 0.7, 0.1],
}


def log_three(experiment_id: str, fingerprint: str = "data-a") -> dict[str, str]:
    """The three models of P_COVID as runs on `fingerprint`; model -> run id."""
    return {
        model: log_scored_run(experiment_id, model, fingerprint, ACTUAL, p_covid)
        for model, p_covid in P_COVID.items()
    }


def ensemble_runs(experiment_id: str) -> pd.DataFrame:
    """The active runs tagged model=ensemble."""
    return mlflow.search_runs([experiment_id], "tags.model = 'ensemble'")


def test_mean_probabilities_average_the_shared_images_latest_rows_first():
    # given two tables in different orders sharing two of their images (same path and hash),
    # the second holding an older copy of one row (a run evaluated twice)
    first = pd.DataFrame(
        {
            "path": ["a.png", "b.png", "c.png"],
            "sha256": ["1", "2", "3"],
            "source": "site",
            "actual": ["covid", "normal", "covid"],
            "p_covid": [0.8, 0.2, 0.6],
            "p_normal": [0.2, 0.8, 0.4],
        }
    )
    second = pd.DataFrame(
        {
            "path": ["b.png", "a.png", "a.png", "c.png"],
            "sha256": ["2", "1", "1", "other content"],
            "actual": ["normal", "covid", "covid", "covid"],
            "p_covid": [0.4, 0.0, 0.6, 0.9],
            "p_normal": [0.6, 1.0, 0.4, 0.1],
        }
    )
    # when they are averaged
    mean = mean_probabilities([first, second])
    # then only a.png and b.png count, each the mean of its latest rows
    assert mean["path"].tolist() == ["a.png", "b.png"]
    np.testing.assert_allclose(mean["p_covid"], [0.7, 0.3])
    np.testing.assert_allclose(mean["p_normal"], [0.3, 0.7])
    assert mean["actual"].tolist() == ["covid", "normal"] and set(mean["source"]) == {"site"}


def test_ensemble_is_scored_as_evaluate_scores_a_model(tmp_path, store):
    # given three models each wrong on a different one of the same four test images
    experiment_id = use_experiment("cxr-ensemble", tmp_path, store)
    runs = log_three(experiment_id)
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    # when the top three are averaged
    ensemble = build_ensemble(board, 3, experiment_id, SCORING, seed=42)
    # then the mean is right on all four where each member was right on three
    assert isinstance(ensemble, Ensemble)
    assert set(ensemble.members["run_id"]) == set(runs.values())
    assert ensemble.metrics["test_accuracy"] == 1.0 and ensemble.metrics["test_images"] == 4
    assert all(board["test_accuracy"] == 0.75)
    # and the scores are evaluate's own on the mean probabilities computed by hand
    mean = np.mean(list(P_COVID.values()), axis=0)
    by_hand = evaluation_metrics(
        Predictions(np.array([0, 0, 1, 1]), np.column_stack([mean, 1 - mean]), ("covid", "normal")),
        SCORING.bootstrap_samples,
        SCORING.calibration_bins,
        42,
    )
    for name in ("test_f1_macro", "test_roc_auc_ovr", "test_accuracy_ci_low", "test_loss"):
        assert ensemble.metrics[name] == pytest.approx(by_hand[name], abs=1e-3), name
    assert ensemble.metrics["test_covid_sensitivity"] == 1.0
    assert ensemble.name.startswith("ensemble(") and ensemble.name.count("+") == 2
    # and the top two alone make an ensemble too
    pair = build_ensemble(board, 2, experiment_id, SCORING, seed=42)
    assert isinstance(pair, Ensemble) and len(pair.members) == 2


def test_no_ensemble_row_says_why(tmp_path, store):
    # given one model with logged predictions, one without, and two sharing no test image
    experiment_id = use_experiment("cxr-no-ensemble", tmp_path, store)
    log_scored_run(experiment_id, "vgg16", "data-a", ACTUAL, P_COVID["vgg16"])
    log_run(experiment_id, "resnet50", "data-a", 0.5)
    log_scored_run(experiment_id, "mobilenetv2", "data-b", ACTUAL, P_COVID["vgg16"])
    log_scored_run(experiment_id, "vgg16", "data-b", ACTUAL, P_COVID["vgg16"], first_image=9)
    runs = evaluated_runs(experiment_id)
    on_a = leaderboard(runs, "data-a", "test_accuracy")
    # when an ensemble is asked for, then each case says why there is none
    assert build_ensemble(on_a, 0, experiment_id, SCORING, 42) == (
        "no ensemble row (compare.ensemble_size = 0)"
    )
    only_one = build_ensemble(on_a.head(1), 3, experiment_id, SCORING, 42)
    assert only_one == "no ensemble row: 1 model(s) on this data, an ensemble needs 2"
    missing = build_ensemble(on_a, 3, experiment_id, SCORING, 42)
    assert "only 1 logged its test probabilities (resnet50 did not" in missing
    disjoint = build_ensemble(
        leaderboard(runs, "data-b", "test_accuracy"), 3, experiment_id, SCORING, 42
    )
    assert disjoint.endswith("share no test image")
    assert ensemble_note(disjoint).startswith("No ensemble row: ") and disjoint.endswith("image")


def test_logged_ensemble_is_reused_then_replaced_and_never_ranked(tmp_path, store):
    # given the ensemble of three models, logged once
    experiment_id = use_experiment("cxr-ensemble-run", tmp_path, store)
    runs = log_three(experiment_id)
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    ensemble = build_ensemble(board, 3, experiment_id, SCORING, 42)
    assert isinstance(ensemble, Ensemble)
    tags = {"model": "ensemble", "data_fingerprint": "data-a", "git_commit": "abc"}
    run_id = log_ensemble(ensemble, experiment_id, tags)
    # when it is logged again with the same members and predictions
    again = log_ensemble(ensemble, experiment_id, tags)
    # then the same run holds it, tagged with its members and carrying its test metrics
    assert again == run_id and len(ensemble_runs(experiment_id)) == 1
    run = mlflow.get_run(run_id)
    assert run.data.tags["ensemble_members"] == ",".join(sorted(runs.values()))
    assert run.data.tags["data_fingerprint"] == "data-a" and run.data.tags["git_commit"] == "abc"
    assert run.info.run_name == ensemble.name
    assert run.data.metrics["test_accuracy"] == 1.0
    assert run.data.metrics["parameters"] == 3 * 1234
    assert run.data.metrics["inference_images_per_second"] == pytest.approx(250 / 3)
    # and a later leaderboard does not take it for a single model
    assert "ensemble" not in evaluated_runs(experiment_id)["tags.model"].tolist()
    # when a member's predictions changed (evaluated again), then the run is replaced, not appended
    changed = Ensemble(ensemble.members, ensemble.per_image.iloc[:3], ensemble.metrics)
    replaced = log_ensemble(changed, experiment_id, tags)
    assert replaced != run_id and ensemble_runs(experiment_id)["run_id"].tolist() == [replaced]
    assert mlflow.get_run(run_id).info.lifecycle_stage == "deleted"


def test_ensemble_row_is_last_marked_and_kept_out_of_the_ranking(tmp_path, store):
    # given the leaderboard of three models with their ensemble row and McNemar p-values
    experiment_id = use_experiment("cxr-ensemble-board", tmp_path, store)
    log_three(experiment_id)
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    ensemble = build_ensemble(board, 3, experiment_id, SCORING, 42)
    assert isinstance(ensemble, Ensemble)
    run_id = log_ensemble(
        ensemble, experiment_id, {"model": "ensemble", "data_fingerprint": "data-a"}
    )
    board = with_mcnemar(with_ensemble(board, ensemble, run_id), experiment_id, 0.05)
    note = ensemble_note(ensemble)
    # then it comes last, never best, with a p-value against the best single model
    assert board["model"].tolist()[-1] == "ensemble" and board["best"].tolist()[0]
    assert not board["best"].iloc[-1] and board["mcnemar_p"].iloc[-1] == pytest.approx(1.0)
    # the report keys it `ensemble` with its members; the best stays a single model
    summary = leaderboard_json(board, board.iloc[:0], "data-a", {"action": "none"}, note)
    assert summary["models"] == 3 and summary["best_model"] != "ensemble"
    assert compare_metrics(summary)["ensemble_test_accuracy"] == 1.0
    assert "ensemble" not in summary["leaderboard"]
    entry = summary["ensemble"]
    assert entry["test_accuracy"] == 1.0 and entry["test_images"] == 4
    assert entry["members"] == board["model"].tolist()[:3] and entry["run_id"] == run_id
    assert entry["name"] == f"ensemble({'+'.join(entry['members'])})"
    assert entry["mcnemar_p_vs_best"] == pytest.approx(1.0) and entry["parameters"] == 3702
    assert summary["ensemble_note"] == note and "4 test images they share" in note
    # leaderboard.md names its members and says what the row is
    settings = CompareParams(
        rank_by="test_accuracy", significance=0.05, registered_model="cxr", ensemble_size=3
    )
    markdown = leaderboard_markdown(board, board.iloc[:0], "data-a", settings, "", note)
    assert f"| {entry['name']} " in markdown and "never ranked best nor made champion" in markdown
    # and the chart draws it last, in its own colour
    axis = draw_leaderboard(board, "test_accuracy", "data-a").axes[0]
    assert axis.get_xticklabels()[-1].get_text() == f"ensemble\n({'+'.join(entry['members'])})"
    colours = {bar.get_facecolor() for bar in axis.patches[:3]}
    assert axis.patches[-1].get_facecolor() not in colours
