import json

import mlflow
import pandas as pd
import pytest

from stages.compare import compare, leaderboard, markdown_table
from stages.config import CompareParams
from stages.paths import ProjectPaths
from stages.tables import data_fingerprint
from stages.tracking import use_experiment


@pytest.fixture
def store(tmp_path, monkeypatch) -> dict[str, str]:
    environ = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", environ["MLFLOW_TRACKING_URI"])
    return environ


def log_run(experiment_id: str, backbone: str, fingerprint: str, accuracy: float | None) -> str:
    """A real MLflow run shaped like one made by train + evaluate."""
    with mlflow.start_run(
        experiment_id=experiment_id,
        tags={"backbone": backbone, "data_fingerprint": fingerprint, "pretrained": "false"},
    ) as run:
        mlflow.log_metrics({"parameters": 1000.0, "train_seconds": 12.0})
        if accuracy is not None:
            mlflow.log_metrics(
                {
                    "test_accuracy": accuracy,
                    "test_f1_macro": accuracy - 0.1,
                    "test_roc_auc_ovr": 0.9,
                }
            )
    return run.info.run_id


def test_leaderboard_ranks_latest_run_per_backbone_on_the_same_data(tmp_path, store):
    experiment_id = use_experiment("cxr-test", tmp_path, store)
    log_run(experiment_id, "vgg16", "data-a", 0.70)
    latest_vgg = log_run(experiment_id, "vgg16", "data-a", 0.80)
    log_run(experiment_id, "mobilenetv2", "data-a", 0.90)
    log_run(experiment_id, "resnet50", "data-b", 0.99)  # other data: never mixed in
    log_run(experiment_id, "densenet121", "data-a", None)  # trained but not evaluated
    board = leaderboard(experiment_id, "data-a", "test_accuracy")
    assert board["backbone"].tolist() == ["mobilenetv2", "vgg16"]
    assert board["best"].tolist() == [True, False]
    assert board.loc[1, "run_id"] == latest_vgg
    assert board.loc[1, "test_accuracy"] == pytest.approx(0.80)
    ranked_by_f1 = leaderboard(experiment_id, "data-a", "test_f1_macro")
    assert ranked_by_f1["backbone"].iloc[0] == "mobilenetv2"
    assert "**mobilenetv2** *" in markdown_table(board)


def test_empty_store_gives_an_empty_board(tmp_path, store):
    experiment_id = use_experiment("cxr-empty", tmp_path, store)
    board = leaderboard(experiment_id, "data-a", "test_accuracy")
    assert board.empty and "backbone" in board.columns


def test_compare_stage_writes_metrics_markdown_and_chart(tmp_path, store):
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
    log_run(experiment_id, "vgg16", fingerprint, 0.75)
    log_run(experiment_id, "efficientnetb0", fingerprint, 0.85)
    board = compare(CompareParams(rank_by="test_accuracy"), "cxr-stage", paths, store)
    assert len(board) == 2
    metrics = json.loads(paths.metrics("compare").read_text())
    assert metrics["best_backbone"] == "efficientnetb0" and metrics["models"] == 2
    assert metrics["leaderboard"]["vgg16"]["test_accuracy"] == pytest.approx(0.75)
    assert metrics["data_fingerprint"] == fingerprint
    markdown = (paths.reports("compare") / "leaderboard.md").read_text()
    assert "efficientnetb0" in markdown and fingerprint in markdown
    assert (paths.reports("compare") / "leaderboard.png").stat().st_size > 0
