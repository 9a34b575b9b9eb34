import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from stages.compare import (
    CHAMPION_ALIAS,
    compare,
    evaluated_runs,
    excluded_runs,
    leaderboard,
    markdown_table,
    mcnemar_vs_best,
    update_champion,
)
from stages.config import CompareParams
from stages.paths import ProjectPaths
from stages.tables import data_fingerprint
from stages.tracking import use_experiment

PARAMS = CompareParams(rank_by="test_accuracy", significance=0.05, registered_model="cxr-test")


class Constant(mlflow.pyfunc.PythonModel):
    """A stand-in servable model: registering needs a logged MLflow model, not a good one."""

    def predict(self, context, model_input, params=None):
        return model_input


def log_run(
    experiment_id: str,
    backbone: str,
    fingerprint: str,
    accuracy: float | None,
    correct: list[bool] | None = None,
    with_model: bool = False,
) -> tuple[str, str | None]:
    """A real MLflow run shaped like one made by train + evaluate; (run id, model URI)."""
    model_uri = None
    with mlflow.start_run(
        experiment_id=experiment_id,
        tags={"backbone": backbone, "data_fingerprint": fingerprint, "pretrained": "false"},
    ) as run:
        mlflow.log_metrics({"parameters": 1234.0, "train_seconds": 12.0})
        if accuracy is not None:
            mlflow.log_metrics(
                {
                    "test_accuracy": accuracy,
                    "test_accuracy_ci_low": accuracy - 0.1,
                    "test_accuracy_ci_high": min(1.0, accuracy + 0.1),
                    "test_f1_macro": accuracy - 0.1,
                    "test_roc_auc_ovr": 0.9,
                    "test_balanced_accuracy": accuracy - 0.05,
                    "test_covid_sensitivity": 0.8,
                    "inference_images_per_second": 250.0,
                }
            )
        if correct is not None:
            table = pd.DataFrame(
                {
                    "path": [f"covid/{i}.png" for i in range(len(correct))],
                    "sha256": [f"{i:064x}" for i in range(len(correct))],
                    "actual": "covid",
                    "predicted": ["covid" if right else "normal" for right in correct],
                }
            )
            mlflow.log_table(table.sample(frac=1, random_state=0), "evaluate/test_predictions.json")
        if with_model:
            model_uri = mlflow.pyfunc.log_model(
                name="classifier", python_model=Constant(), pip_requirements=["mlflow"]
            ).model_uri
    return run.info.run_id, model_uri


def test_leaderboard_ranks_latest_run_per_backbone_on_the_same_data(tmp_path, store):
    experiment_id = use_experiment("cxr-test", tmp_path, store)
    log_run(experiment_id, "vgg16", "data-a", 0.70)
    latest_vgg, _ = log_run(experiment_id, "vgg16", "data-a", 0.80)
    log_run(experiment_id, "mobilenetv2", "data-a", 0.90)
    other_data, _ = log_run(experiment_id, "resnet50", "data-b", 0.99)  # never mixed in
    log_run(experiment_id, "densenet121", "data-a", None)  # trained but not evaluated
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    assert board["backbone"].tolist() == ["mobilenetv2", "vgg16"]
    assert board["best"].tolist() == [True, False]
    assert board.loc[1, "run_id"] == latest_vgg
    assert board.loc[1, "test_accuracy"] == pytest.approx(0.80)
    assert board["parameters"].tolist() == [1234, 1234]
    ranked_by_f1 = leaderboard(evaluated_runs(experiment_id), "data-a", "test_f1_macro")
    assert ranked_by_f1["backbone"].iloc[0] == "mobilenetv2"
    board["mcnemar_p"] = [None, 0.01]
    table = markdown_table(board)
    assert "**mobilenetv2** *" in table and "0.900 [0.800, 1.000]" in table
    assert "0.01 (significant)" in table and "1,234" in table
    excluded = excluded_runs(evaluated_runs(experiment_id), "data-a")
    assert excluded["run_id"].tolist() == [other_data]
    assert "fingerprint data-b is not the current data-a" in excluded["reason"].iloc[0]


def test_empty_store_gives_an_empty_board(tmp_path, store):
    experiment_id = use_experiment("cxr-empty", tmp_path, store)
    board = leaderboard(evaluated_runs(experiment_id), "data-a", "test_accuracy")
    assert board.empty and "backbone" in board.columns
    assert mcnemar_vs_best(experiment_id, board) == []
    assert excluded_runs(evaluated_runs(experiment_id), "data-a").empty


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


def test_champion_alias_moves_only_on_improvement(tmp_path, store):
    client = MlflowClient()
    experiment_id = use_experiment("cxr-champion", tmp_path, store)
    first, first_uri = log_run(experiment_id, "vgg16", "data-a", 0.80, with_model=True)
    # the first evaluated model becomes the champion
    status = update_champion("cxr-test", {"mlflow_run_id": first, "model_uri": first_uri},
                             "test_accuracy", "data-a")  # fmt: skip
    assert status["action"] == "promoted" and status["reason"] == "first champion"
    assert client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS).run_id == first
    # a worse model, and an equal one, leave it alone
    for accuracy in (0.70, 0.80):
        worse, worse_uri = log_run(experiment_id, "resnet50", "data-a", accuracy, with_model=True)
        status = update_champion("cxr-test", {"mlflow_run_id": worse, "model_uri": worse_uri},
                                 "test_accuracy", "data-a")  # fmt: skip
        assert status["action"] == "none" and "does not beat" in status["reason"]
        assert client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS).run_id == first
    # a model on other data cannot be compared
    elsewhere, elsewhere_uri = log_run(experiment_id, "vgg19", "data-b", 0.99, with_model=True)
    status = update_champion("cxr-test", {"mlflow_run_id": elsewhere, "model_uri": elsewhere_uri},
                             "test_accuracy", "data-b")  # fmt: skip
    assert status["action"] == "none" and "other data" in status["reason"]
    # a better one takes the alias; the champion itself is left as is
    better, better_uri = log_run(experiment_id, "mobilenetv2", "data-a", 0.90, with_model=True)
    status = update_champion("cxr-test", {"mlflow_run_id": better, "model_uri": better_uri},
                             "test_accuracy", "data-a")  # fmt: skip
    assert status["action"] == "promoted" and status["version"] == 2
    champion = client.get_model_version_by_alias("cxr-test", CHAMPION_ALIAS)
    assert champion.run_id == better and champion.tags["data_fingerprint"] == "data-a"
    again = update_champion("cxr-test", {"mlflow_run_id": better, "model_uri": better_uri},
                            "test_accuracy", "data-a")  # fmt: skip
    assert again["action"] == "none" and "is the champion" in again["reason"]
    assert update_champion("cxr-test", {}, "test_accuracy", "data-a")["action"] == "none"


def test_compare_stage_writes_metrics_markdown_chart_and_promotes(tmp_path, store):
    paths = ProjectPaths(tmp_path)
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
    fingerprint = data_fingerprint(splits)
    experiment_id = use_experiment("cxr-stage", tmp_path, store)
    log_run(experiment_id, "vgg16", fingerprint, 0.75, correct=[True, False, True])
    best, best_uri = log_run(
        experiment_id, "efficientnetb0", fingerprint, 0.85, correct=[True] * 3, with_model=True
    )
    log_run(experiment_id, "resnet50", "old-data", 0.95)
    paths.metrics("evaluate").parent.mkdir(parents=True, exist_ok=True)
    paths.metrics("evaluate").write_text(json.dumps({"mlflow_run_id": best, "model_uri": best_uri}))
    params = CompareParams(rank_by="test_accuracy", significance=0.05, registered_model="cxr-stage")
    board = compare(params, "cxr-stage", paths, store)
    assert len(board) == 2
    metrics = json.loads(paths.metrics("compare").read_text())
    assert metrics["best_backbone"] == "efficientnetb0" and metrics["models"] == 2
    vgg = metrics["leaderboard"]["vgg16"]
    assert vgg["test_accuracy"] == pytest.approx(0.75) and vgg["parameters"] == 1234
    assert vgg["mcnemar_p_vs_best"] == pytest.approx(1.0) and vgg["significant"] is False
    assert vgg["pretrained"] is False and vgg["inference_images_per_second"] == 250.0
    assert metrics["data_fingerprint"] == fingerprint
    assert [row["backbone"] for row in metrics["excluded"]] == ["resnet50"]
    assert metrics["champion"]["action"] == "promoted"
    champion = MlflowClient().get_model_version_by_alias("cxr-stage", CHAMPION_ALIAS)
    assert champion.run_id == best
    markdown = (paths.reports("compare") / "leaderboard.md").read_text()
    assert "efficientnetb0" in markdown and fingerprint in markdown
    assert "Excluded (other data" in markdown and "resnet50" in markdown
    assert (paths.reports("compare") / "leaderboard.png").stat().st_size > 0
    assert np.isfinite(metrics["leaderboard"]["efficientnetb0"]["test_accuracy_ci_low"])
