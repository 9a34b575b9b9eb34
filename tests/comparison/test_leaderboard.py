import json

import mlflow
import pandas as pd
import pytest
from evaluation_fixtures import log_run
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cxr.comparison.leaderboard import (
    compare_metrics,
    correctness_by_image,
    draw_leaderboard,
    evaluated_runs,
    excluded_runs,
    leaderboard,
    leaderboard_json,
    leaderboard_markdown,
    markdown_table,
    mcnemar_vs_best,
    recipe_label,
    with_mcnemar,
    with_recipes,
)
from cxr.core.params import CompareParams
from cxr.tracking.store import use_experiment


def test_leaderboard_ranks_latest_run_per_model_on_the_same_data(tmp_path, store):
    experiment_id = use_experiment("cxr-test", tmp_path, store)
    log_run(experiment_id, "vgg16", "data-a", 0.70)
    latest_vgg, _ = log_run(experiment_id, "vgg16", "data-a", 0.80)
    log_run(experiment_id, "mobilenetv2", "data-a", 0.90)
    other_data, _ = log_run(experiment_id, "resnet50", "data-b", 0.99)  # never mixed in
    log_run(experiment_id, "densenet121", "data-a", None)  # trained but not evaluated
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    assert board["model"].tolist() == ["mobilenetv2", "vgg16"]
    assert board["best"].tolist() == [True, False]
    assert board.loc[1, "run_id"] == latest_vgg
    assert board.loc[1, "test_accuracy"] == pytest.approx(0.80)
    assert board["parameters"].tolist() == [1234, 1234]
    ranked_by_f1 = leaderboard(evaluated_runs(experiment_id), "data-a", "test_f1_macro")
    assert ranked_by_f1["model"].iloc[0] == "mobilenetv2"
    board["mcnemar_p"] = [None, 0.01]
    table = markdown_table(board)
    assert table.startswith("| model ")
    assert "**mobilenetv2** *" in table and "0.900 [0.800, 1.000]" in table
    assert "0.01 (significant)" in table and "1,234" in table
    excluded = excluded_runs(evaluated_runs(experiment_id), "data-a")
    assert excluded["run_id"].tolist() == [other_data]
    assert excluded["model"].tolist() == ["resnet50"]
    assert "fingerprint data-b is not the current data-a" in excluded["reason"].iloc[0]


def test_a_collapsed_model_is_flagged_on_the_leaderboard_and_in_its_json(tmp_path, store):
    # given a run train flagged as collapsed, one it did not, and one logged before the check
    experiment_id = use_experiment("cxr-collapsed", tmp_path, store)
    collapsed, _ = log_run(experiment_id, "mobilenetv2", "data-a", 0.48)
    reason = "it answers covid for all 62 validation images"
    tag_runs = MlflowClient().set_tag
    tag_runs(collapsed, "collapsed", "true")
    tag_runs(collapsed, "collapse_reason", reason)
    learned, _ = log_run(experiment_id, "resnet18", "data-a", 0.90)
    tag_runs(learned, "collapsed", "false")
    tag_runs(learned, "collapse_reason", "")
    log_run(experiment_id, "vgg16", "data-a", 0.80)
    # when the leaderboard is built
    board = with_mcnemar(
        leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy"), experiment_id, 0.05
    )
    # then the flag is a column, the Markdown names the model collapsed, the JSON says why
    assert board.set_index("model")["collapsed"].to_dict() == {
        "resnet18": False,
        "vgg16": False,
        "mobilenetv2": True,
    }
    assert "| mobilenetv2 (collapsed) " in markdown_table(board)
    report = leaderboard_json(board, excluded_runs(evaluated_runs(experiment_id), "data-a"),
                              "data-a", {}, "")  # fmt: skip
    entries = report["leaderboard"]
    assert entries["mobilenetv2"]["collapsed"] is True
    assert entries["mobilenetv2"]["collapse_reason"] == reason
    assert entries["resnet18"]["collapsed"] is False
    assert entries["resnet18"]["collapse_reason"] is None


def test_runs_logged_before_the_rename_are_read_from_their_backbone_tag(tmp_path, store):
    # given a run tagged the old way (backbone) and one tagged the new way (model)
    experiment_id = use_experiment("cxr-legacy", tmp_path, store)
    legacy, _ = log_run(experiment_id, "vgg16", "data-a", 0.80, model_tag="backbone")
    log_run(experiment_id, "mobilenetv2", "data-a", 0.90)
    log_run(experiment_id, "resnet50", "data-b", 0.70, model_tag="backbone")
    # when the leaderboard is built, then both count, each under its own model name
    runs = evaluated_runs(experiment_id)
    board = leaderboard(runs, "data-a", "test_accuracy")
    assert board["model"].tolist() == ["mobilenetv2", "vgg16"]
    assert board.loc[1, "run_id"] == legacy
    assert excluded_runs(runs, "data-a")["model"].tolist() == ["resnet50"]


def test_empty_store_gives_an_empty_board(tmp_path, store):
    experiment_id = use_experiment("cxr-empty", tmp_path, store)
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    assert board.empty and "model" in board.columns
    assert mcnemar_vs_best(experiment_id, board) == []
    assert excluded_runs(evaluated_runs(experiment_id), "data-a").empty
    with_p = with_mcnemar(board, experiment_id, 0.05)
    empty = leaderboard_json(with_p, excluded_runs(board, "data-a"), "data-a", {}, "")
    assert empty["best_model"] is None and empty["models"] == 0 and empty["leaderboard"] == {}
    headline = compare_metrics(empty)
    assert headline["models_compared"] == 0 and headline["best_test_accuracy"] is None
    assert headline["champion_action"] is None and headline["champion_version"] is None


def test_mcnemar_against_the_best_on_the_shared_test_images(tmp_path, store):
    # given the best model right on 10 images the other misses, the other right on 2 it misses
    experiment_id = use_experiment("cxr-mcnemar", tmp_path, store)
    best = [True] * 10 + [False] * 2 + [True] * 30
    other = [False] * 10 + [True] * 2 + [True] * 30
    log_run(experiment_id, "efficientnetb0", "data-a", 40 / 42, correct=best)
    log_run(experiment_id, "vgg16", "data-a", 32 / 42, correct=other)
    log_run(experiment_id, "resnet50", "data-a", 0.5)  # no predictions logged
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    # then the exact test on the discordant pairs (10 vs 2) matches the binomial by hand
    p_values = mcnemar_vs_best(experiment_id, board)
    assert p_values[0] is None and p_values[2] is None
    assert p_values[1] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    # and significance is judged against the threshold given
    assert with_mcnemar(board, experiment_id, 0.05)["significant"].tolist() == [
        False,
        True,
        False,
    ]
    assert not with_mcnemar(board, experiment_id, 0.01)["significant"].any()
    # and a row without a p-value says why
    assert with_mcnemar(board, experiment_id, 0.05)["mcnemar_note"].tolist() == [
        "the best model itself",
        None,
        "no test predictions logged by this model (re-run its evaluate)",
    ]


def test_report_json_and_chart_name_the_best_model(tmp_path, store):
    experiment_id = use_experiment("cxr-report", tmp_path, store)
    log_run(experiment_id, "vgg16", "data-a", 0.75, correct=[True, False, True])
    best, _ = log_run(experiment_id, "efficientnetb0", "data-a", 0.85, correct=[True] * 3)
    log_run(experiment_id, "resnet50", "old-data", 0.95)
    runs = evaluated_runs(experiment_id)
    board = with_mcnemar(leaderboard(runs, "data-a", "test_accuracy"), experiment_id, 0.05)
    excluded = excluded_runs(runs, "data-a")
    summary = leaderboard_json(board, excluded, "data-a", {"action": "none"}, "No ensemble row.")
    assert summary["best_model"] == "efficientnetb0" and summary["models"] == 2
    assert summary["ensemble"] is None and summary["ensemble_note"] == "No ensemble row."
    assert summary["leaderboard"]["efficientnetb0"]["run_id"] == best
    vgg = summary["leaderboard"]["vgg16"]
    assert vgg["mcnemar_p_vs_best"] == pytest.approx(1.0) and vgg["significant"] is False
    assert vgg["mcnemar_p_vs_best_note"] is None
    assert vgg["pretrained"] is False and vgg["parameters"] == 1234
    # the best model has no p-value against itself: null with the reason, never NaN
    best_entry = summary["leaderboard"]["efficientnetb0"]
    assert best_entry["mcnemar_p_vs_best"] is None
    assert best_entry["mcnemar_p_vs_best_note"] == "the best model itself"
    json.dumps(summary, allow_nan=False)  # strict JSON: raises on NaN or Infinity
    assert [row["model"] for row in summary["excluded"]] == ["resnet50"]
    settings = CompareParams(
        rank_by="test_accuracy", significance=0.05, registered_model="cxr", ensemble_size=0
    )
    note = "No ensemble row (compare.ensemble_size = 0)."
    markdown = leaderboard_markdown(board, excluded, "data-a", settings, "Champion: none", note)
    assert markdown.startswith("Leaderboard on data fingerprint `data-a`, ranked by test_accuracy")
    assert "Excluded (other data" in markdown and markdown.endswith("\n\nChampion: none\n")
    assert f"\n{note}\n" in markdown
    no_excluded = leaderboard_markdown(board, excluded.iloc[:0], "data-a", settings, "", note)
    assert "Excluded" not in no_excluded
    figure = draw_leaderboard(board, "test_accuracy", "data-a")
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["efficientnetb0", "vgg16"]
    assert axis.get_title() == "Models on data data-a (95% CI)"


def test_the_metrics_hold_the_headline_of_the_report_in_scalars(tmp_path, store):
    # given a leaderboard of two models, one run on other data and a kept champion
    experiment_id = use_experiment("cxr-headline", tmp_path, store)
    log_run(experiment_id, "vgg16", "data-a", 0.75, correct=[True, False, True])
    log_run(experiment_id, "efficientnetb0", "data-a", 0.85, correct=[True] * 3)
    log_run(experiment_id, "resnet50", "old-data", 0.95)
    runs = evaluated_runs(experiment_id)
    board = with_mcnemar(leaderboard(runs, "data-a", "test_accuracy"), experiment_id, 0.05)
    champion = {"action": "kept", "champion_version": 3, "reason": "kept version 3: " + "x" * 200}
    report = leaderboard_json(board, excluded_runs(runs, "data-a"), "data-a", champion, "None.")
    # when its headline is taken
    headline = compare_metrics(report)
    # then it names the best model and its figures, and nothing DVC would print as a wide column
    assert headline == {
        "best_model": "efficientnetb0",
        "best_test_accuracy": pytest.approx(0.85),
        "best_test_f1_macro": pytest.approx(0.75),
        "models_compared": 2,
        "ensemble_test_accuracy": None,
        "champion_action": "kept",
        "champion_version": 3,
    }
    # and no key is named like an output folder (`dvc exp show --drop` fails on `models`)
    assert not set(headline) & {"models", "data", "metrics", "reports"}
    # and a promotion names the new version
    promoted = report | {"champion": {"action": "promoted", "champion_version": 3, "version": 4}}
    assert compare_metrics(promoted)["champion_version"] == 4


def test_a_run_evaluated_twice_counts_with_its_latest_predictions():
    # given a predictions table logged twice in one run (MLflow appends): wrong, then right
    table = pd.DataFrame(
        {
            "path": ["a.png", "b.png", "a.png", "b.png"],
            "sha256": ["1", "2", "1", "2"],
            "actual": "covid",
            "predicted": ["normal", "normal", "covid", "covid"],
        }
    )
    # when its correctness per image is read, then the latest rows count
    assert correctness_by_image(table).tolist() == [True, True]


def test_ensemble_runs_are_not_ranked_as_models(tmp_path, store):
    # given a model run and a run compare logged for an ensemble
    experiment_id = use_experiment("cxr-ensemble-excluded", tmp_path, store)
    log_run(experiment_id, "vgg16", "data-a", 0.80)
    log_run(experiment_id, "ensemble", "data-a", 0.95)
    log_run(experiment_id, "ensemble", "data-b", 0.95)
    # when the evaluated runs are read, then the ensemble runs are neither ranked nor excluded
    runs = evaluated_runs(experiment_id)
    assert leaderboard(runs, "data-a", "test_accuracy")["model"].tolist() == ["vgg16"]
    assert excluded_runs(runs, "data-a").empty


def test_external_columns_show_beside_the_internal_ones_and_may_rank(tmp_path, store):
    # given two models on the same data, the internal best doing worse on site_b's images
    experiment_id = use_experiment("cxr-external", tmp_path, store)
    internal_best, _ = log_run(experiment_id, "vgg16", "data-a", 0.95)
    external_best, _ = log_run(experiment_id, "pixel_logreg", "data-a", 0.85)
    for run_id, accuracy in ((internal_best, 0.55), (external_best, 0.75)):
        MlflowClient().log_batch(
            run_id,
            metrics=[
                Metric(key, value, 0, 0)
                for key, value in {
                    "external_site_b_accuracy": accuracy,
                    "external_site_b_accuracy_ci_low": accuracy - 0.1,
                    "external_site_b_accuracy_ci_high": accuracy + 0.1,
                    "external_site_b_accuracy_drop": 0.95 - accuracy,
                    "external_site_b_source_shortcut_accuracy": 0.98,
                }.items()
            ],
        )
    runs = evaluated_runs(experiment_id)
    # when the leaderboard is built with site_b, ranked by the internal metric
    board = leaderboard(runs, "data-a", "test_accuracy", external=["site_b"])
    # then the ranking is the internal one and site_b's figures are columns
    assert board["model"].tolist() == ["vgg16", "pixel_logreg"]
    assert board["external_site_b_accuracy"].tolist() == pytest.approx([0.55, 0.75])
    table = markdown_table(with_mcnemar(board, experiment_id, 0.05), external=["site_b"])
    assert "site_b accuracy [95% CI]" in table and "0.550 [0.450, 0.650]" in table
    assert "site_b drop" in table and "site_b shortcut" in table and "0.980" in table
    settings = CompareParams(
        rank_by="test_accuracy", significance=0.05, registered_model="cxr", ensemble_size=0
    )
    board = with_mcnemar(board, experiment_id, 0.05)
    excluded = excluded_runs(runs, "data-a")
    markdown = leaderboard_markdown(board, excluded, "data-a", settings, "", "", ["site_b"])
    assert "External datasets (site_b; evaluate.external)" in markdown
    summary = leaderboard_json(board, excluded, "data-a", {}, "", ["site_b"])
    site_b = summary["leaderboard"]["pixel_logreg"]["external"]["site_b"]
    assert site_b["accuracy"] == pytest.approx(0.75) and site_b["roc_auc_ovr"] is None
    # and when compare ranks by site_b's accuracy, the model better there comes first
    by_site_b = leaderboard(runs, "data-a", "external_site_b_accuracy", external=["site_b"])
    assert by_site_b["model"].tolist() == ["pixel_logreg", "vgg16"]
    assert draw_leaderboard(by_site_b, "external_site_b_accuracy", "data-a") is not None
    # and without external datasets nothing changes in the table
    internal_only = leaderboard(runs, "data-a", "test_accuracy")
    assert "site_b" not in markdown_table(with_mcnemar(internal_only, experiment_id, 0.05))


def test_a_run_without_a_data_tag_is_excluded_with_null_data_in_the_report(tmp_path, store):
    # given an evaluated run logged without a data_fingerprint tag, beside one on the data
    experiment_id = use_experiment("cxr-untagged", tmp_path, store)
    log_run(experiment_id, "vgg16", "data-a", 0.75, correct=[True, False, True])
    with mlflow.start_run(experiment_id=experiment_id, tags={"model": "alexnet"}) as untagged:
        mlflow.log_metric("test_accuracy", 0.6)
    runs = evaluated_runs(experiment_id)
    board = with_mcnemar(leaderboard(runs, "data-a", "test_accuracy"), experiment_id, 0.05)
    # when the report is built
    report = leaderboard_json(board, excluded_runs(runs, "data-a"), "data-a", {}, "None.")
    # then the run is excluded as of unknown data, null where the tag is missing, never NaN
    assert report["excluded"] == [
        {
            "model": "alexnet",
            "data_fingerprint": None,
            "run_id": untagged.info.run_id,
            "reason": "no data_fingerprint tag: data unknown",
        }
    ]
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_the_keras_backend_each_model_trained_on_is_a_column(tmp_path, store):
    # given a model trained on JAX, one on TensorFlow and a baseline (no Keras backend)
    experiment_id = use_experiment("cxr-backends", tmp_path, store)
    on_jax, _ = log_run(experiment_id, "resnet18", "data-a", 0.90)
    on_tf, _ = log_run(experiment_id, "vgg16", "data-a", 0.80)
    log_run(experiment_id, "pixel_logreg", "data-a", 0.60)
    MlflowClient().set_tag(on_jax, "keras_backend", "jax")
    MlflowClient().set_tag(on_tf, "keras_backend", "tensorflow")
    # when the leaderboard is built
    board = with_mcnemar(
        leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy"), experiment_id, 0.05
    )
    # then the Markdown and the JSON name each backend, none for the baseline
    table = markdown_table(board)
    assert "| backend " in table.splitlines()[0]
    rows = {line.split("|")[1].strip(" *"): line for line in table.splitlines()[2:]}
    assert "| jax " in rows["resnet18"] and "| tensorflow " in rows["vgg16"]
    entries = leaderboard_json(board, excluded_runs(evaluated_runs(experiment_id), "data-a"),
                               "data-a", {}, "")["leaderboard"]  # fmt: skip
    assert [entries[name]["backend"] for name in ("resnet18", "vgg16", "pixel_logreg")] == [
        "jax",
        "tensorflow",
        None,
    ]


def test_how_evaluate_called_covid_is_a_column(tmp_path, store):
    # given a model evaluated with a moved covid decision and one evaluated before the tag
    experiment_id = use_experiment("cxr-decisions", tmp_path, store)
    moved, _ = log_run(experiment_id, "resnet18", "data-a", 0.90)
    log_run(experiment_id, "pixel_logreg", "data-a", 0.60)
    MlflowClient().set_tag(moved, "decision", "val_covid_sensitivity")
    # when the leaderboard is built
    board = with_mcnemar(
        leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy"), experiment_id, 0.05
    )
    # then the Markdown and the JSON say how each decided: argmax for the untagged run
    table = markdown_table(board)
    rows = {line.split("|")[1].strip(" *"): line for line in table.splitlines()[2:]}
    assert "| decision " in table.splitlines()[0]
    assert "| val_covid_sensitivity " in rows["resnet18"] and "| argmax " in rows["pixel_logreg"]
    entries = leaderboard_json(board, excluded_runs(evaluated_runs(experiment_id), "data-a"),
                               "data-a", {}, "")["leaderboard"]  # fmt: skip
    assert entries["resnet18"]["decision"] == "val_covid_sensitivity"
    assert entries["pixel_logreg"]["decision"] == "argmax"


def test_how_each_backbone_started_is_a_column(tmp_path, store):
    # given a backbone from the pretrain stage's weights, one tagged before backbone_init
    # existed (pretrained false) and a baseline with neither tag
    experiment_id = use_experiment("cxr-init", tmp_path, store)
    self_supervised, _ = log_run(experiment_id, "resnet18", "data-a", 0.90)
    log_run(experiment_id, "vgg16", "data-a", 0.80)
    baseline, _ = log_run(experiment_id, "pixel_logreg", "data-a", 0.60)
    MlflowClient().set_tag(self_supervised, "backbone_init", "self_supervised")
    MlflowClient().log_metric(self_supervised, "depth", 22)
    MlflowClient().log_metric(self_supervised, "epochs_run", 17)
    MlflowClient().set_tag(self_supervised, "optimizer", "sgd")
    MlflowClient().delete_tag(baseline, "pretrained")
    MlflowClient().log_metric(baseline, "epochs_run", 0)  # what train logs for a one-shot fit
    # when the leaderboard is built
    board = with_mcnemar(
        leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy"), experiment_id, 0.05
    )
    # then the Markdown's init column and the JSON say how each started, nothing for the baseline
    table = markdown_table(board)
    rows = {line.split("|")[1].strip(" *"): line for line in table.splitlines()[2:]}
    assert "| init " in table.splitlines()[0] and "| depth " in table.splitlines()[0]
    assert "| 22 " in rows["resnet18"] and "| 17 " in rows["resnet18"]
    assert "| optimizer " in table.splitlines()[0] and "| sgd " in rows["resnet18"]
    assert "| self_supervised " in rows["resnet18"] and "| random " in rows["vgg16"]
    epochs = [cell.strip() for cell in table.splitlines()[0].split("|")].index("epochs")
    assert rows["pixel_logreg"].split("|")[epochs].strip() == ""  # no epochs, not 0
    entries = leaderboard_json(board, excluded_runs(evaluated_runs(experiment_id), "data-a"),
                               "data-a", {}, "")["leaderboard"]  # fmt: skip
    assert entries["resnet18"]["depth"] == 22 and entries["vgg16"]["depth"] is None
    assert entries["resnet18"]["epochs_run"] == 17 and entries["vgg16"]["epochs_run"] is None
    assert entries["resnet18"]["optimizer"] == "sgd" and entries["vgg16"]["optimizer"] is None
    assert [entries[name]["backbone_init"] for name in ("resnet18", "vgg16", "pixel_logreg")] == [
        "self_supervised",
        "random",
        None,
    ]


def test_each_recipe_of_a_model_is_a_row_when_compare_by_names_its_params(tmp_path, store):
    # given vgg16 trained with one and three members on the same data, the newest first in the
    # store, and a run from before train.members was logged
    experiment_id = use_experiment("cxr-recipe-rows", tmp_path, store)
    for accuracy, members in ((0.9, "3"), (0.7, "1"), (0.8, None)):
        run_id, _ = log_run(experiment_id, "vgg16", "fp", accuracy)
        if members is not None:
            MlflowClient().log_param(run_id, "train.members", members)
    runs = evaluated_runs(experiment_id)
    # when the leaderboard ranks models, one row: the newest run
    assert leaderboard(runs, "fp", "test_accuracy")["model"].tolist() == ["vgg16"]
    # when it ranks recipes of train.members, one row each, ranked
    board = leaderboard(with_recipes(runs, ["train.members"]), "fp", "test_accuracy")
    assert board["model"].tolist() == [
        "vgg16[train.members=3]",
        "vgg16[train.members=?]",
        "vgg16[train.members=1]",
    ]
    # and without params to tell apart the runs stay as they are
    assert with_recipes(runs, []) is runs
    assert recipe_label("vgg16", {"train.members": "3", "pretrain.enabled": "True"}, [
        "pretrain.enabled", "train.members"
    ]) == "vgg16[pretrain.enabled=True,train.members=3]"  # fmt: skip
