import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from evaluation_fixtures import NAMES as NAMES_TINY
from evaluation_fixtures import sklearn_models_dir, write_project
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from stages.config import EvaluateParams
from stages.evaluate import (
    confidence_intervals,
    curve_tables,
    draw_confusion,
    draw_misclassified,
    evaluate_model,
    one_vs_rest_auc,
    per_source_scores,
    score_predictions,
    sensitivity_specificity,
)
from stages.tracking import use_experiment

NAMES = ["covid", "normal", "viral_pneumonia"]


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    true = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.2, 0.7, 0.1],  # one covid missed
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.6, 0.3],
            [0.5, 0.4, 0.1],  # one normal called covid
            [0.1, 0.1, 0.8],
            [0.1, 0.2, 0.7],
            [0.2, 0.2, 0.6],
        ]
    )
    return true, probabilities


def test_scores_match_scikit_learn(predictions):
    true, probabilities = predictions
    # when the test predictions are scored
    scores = score_predictions(true, probabilities, NAMES)
    predicted = probabilities.argmax(axis=1)
    # then every figure is scikit-learn's, and a hand count agrees
    assert scores["test_accuracy"] == pytest.approx(accuracy_score(true, predicted)) == 0.8
    assert scores["test_f1_macro"] == pytest.approx(f1_score(true, predicted, average="macro"))
    assert scores["test_f1_weighted"] == pytest.approx(
        f1_score(true, predicted, average="weighted")
    )
    assert scores["test_roc_auc_ovr"] == pytest.approx(
        roc_auc_score(true, probabilities, multi_class="ovr")
    )
    assert scores["per_class"]["covid"]["recall"] == pytest.approx(2 / 3)
    assert scores["per_class"]["covid"]["precision"] == pytest.approx(2 / 3)
    assert scores["per_class"]["viral_pneumonia"]["f1-score"] == pytest.approx(1.0)
    assert scores["test_loss"] == pytest.approx(
        -np.mean(np.log(probabilities[np.arange(10), true]))
    )


def test_auc_is_none_when_a_class_is_missing_from_the_test_labels(predictions):
    true, probabilities = predictions
    assert one_vs_rest_auc(true[true != 2], probabilities[true != 2], 3) is None


def test_binary_auc_uses_the_positive_class():
    true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    assert one_vs_rest_auc(true, probabilities, 2) == pytest.approx(
        roc_auc_score(true, probabilities[:, 1])
    )


def test_confusion_png_and_matrix(tmp_path, predictions):
    true, probabilities = predictions
    matrix = draw_confusion(true, probabilities.argmax(axis=1), NAMES, tmp_path / "confusion.png")
    assert matrix.tolist() == [[2, 1, 0], [1, 3, 0], [0, 0, 3]]
    assert Image.open(tmp_path / "confusion.png").format == "PNG"


def test_misclassified_grid_shows_only_wrong_images(tmp_path):
    pixels = np.stack([np.full((40, 40), 60 * index, np.uint8) for index in range(3)])
    table = pd.DataFrame(
        {
            "path": [f"covid/{index}.png" for index in range(3)],
            "actual": ["covid"] * 3,
            "predicted": ["covid", "normal", "viral_pneumonia"],
            "confidence": [0.9, 0.7, 0.6],
        }
    )
    shown = draw_misclassified(table, pixels, limit=16, path=tmp_path / "wrong.png")
    assert shown == 2
    assert draw_misclassified(table, pixels, limit=1, path=tmp_path / "one.png") == 1
    assert draw_misclassified(table.iloc[:1], pixels, limit=16, path=tmp_path / "none.png") == 0
    assert (tmp_path / "none.png").stat().st_size > 0


def test_screening_and_agreement_figures_match_scikit_learn_and_a_hand_count(predictions):
    true, probabilities = predictions
    predicted = probabilities.argmax(axis=1)
    scores = score_predictions(true, probabilities, NAMES)
    assert scores["test_balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(true, predicted)
    )
    assert scores["test_cohen_kappa"] == pytest.approx(cohen_kappa_score(true, predicted))
    # covid: 2 of 3 found; of the 7 others, 1 (a normal) was called covid
    assert scores["test_covid_sensitivity"] == pytest.approx(2 / 3)
    assert scores["per_class"]["covid"]["specificity"] == pytest.approx(6 / 7)
    assert scores["per_class"]["normal"]["sensitivity"] == pytest.approx(3 / 4)
    assert scores["per_class"]["normal"]["specificity"] == pytest.approx(5 / 6)
    assert scores["per_class"]["viral_pneumonia"]["sensitivity"] == 1.0
    assert sensitivity_specificity(np.array([0, 0]), np.array([0, 1]), 2) == [
        (0.5, None),
        (None, 0.5),
    ]


def test_confidence_intervals_hold_the_estimate_and_are_seeded(predictions):
    true, probabilities = predictions
    intervals = confidence_intervals(true, probabilities, samples=100, seed=1)
    scores = score_predictions(true, probabilities, NAMES)
    for name in ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr"):
        low, high = intervals[name]
        assert low <= scores[name] <= high
    assert intervals == confidence_intervals(true, probabilities, samples=100, seed=1)
    assert confidence_intervals(true, probabilities, 0, 1)["test_accuracy"] == [None, None]


def test_curve_tables_are_scikit_learns_one_vs_rest_curves(predictions):
    true, probabilities = predictions
    tables = curve_tables(true, probabilities, NAMES)
    fpr, tpr, _ = roc_curve(true == 1, probabilities[:, 1])
    assert tables["roc"]["normal"]["fpr"].tolist() == pytest.approx(fpr.round(5).tolist())
    assert tables["roc"]["normal"]["tpr"].tolist() == pytest.approx(tpr.round(5).tolist())
    assert tables["roc"]["normal"]["threshold"].max() <= 1.0
    precision, recall, _ = precision_recall_curve(true == 2, probabilities[:, 2])
    assert tables["pr"]["viral_pneumonia"]["precision"].tolist() == pytest.approx(
        precision.round(5).tolist()
    )
    assert tables["pr"]["viral_pneumonia"]["recall"].tolist() == pytest.approx(
        recall.round(5).tolist()
    )
    # a class absent from the test labels has no curve
    assert (
        "viral_pneumonia"
        not in curve_tables(true[true != 2], probabilities[true != 2], NAMES)["roc"]
    )


def test_per_source_breakdown_only_for_several_sources():
    true = np.array([0, 1, 0, 1])
    predicted = np.array([0, 1, 1, 1])
    one = pd.DataFrame({"source": ["a"] * 4})
    assert per_source_scores(one, true, predicted, ["covid", "normal"]) is None
    two = pd.DataFrame({"source": ["a", "a", "b", "b"]})
    table = per_source_scores(two, true, predicted, ["covid", "normal"]).set_index("source")
    assert table.loc["a", "accuracy"] == 1.0 and table.loc["b", "accuracy"] == 0.5
    assert table.loc["b", "covid_sensitivity"] == 0.0 and table.loc["b", "images"] == 2


PARAMS = EvaluateParams(
    batch_size=8, misclassified_grid=4, bootstrap_samples=50, calibration_bins=5, gradcam_images=2
)


def test_evaluate_stage_continues_the_train_run_and_writes_everything(tmp_path, store):
    # given a trained tiny CNN whose train run is in the store, and a test split of two sources
    experiment_id = use_experiment("cxr-evaluate", tmp_path, store)
    with mlflow.start_run(experiment_id=experiment_id) as train_run:
        mlflow.log_metric("parameters", 100)
    paths = write_project(tmp_path, run_id=train_run.info.run_id, sources=("site-a", "site-b"))
    # when evaluate runs
    metrics = evaluate_model(PARAMS, 42, 10**7, "cxr-evaluate", paths, store)
    # then metrics/evaluate.json keeps the keys compare and the README read, and the new ones
    written = json.loads(paths.metrics("evaluate").read_text())
    for key in (
        "test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "test_balanced_accuracy",
        "test_cohen_kappa", "test_covid_sensitivity", "test_ece", "inference_images_per_second",
        "test_accuracy_ci_low", "test_accuracy_ci_high", "per_source", "model_uri",
    ):  # fmt: skip
        assert key in written, key
    assert written["mlflow_run_id"] == train_run.info.run_id
    assert set(written["per_source"]) == {"site-a", "site-b"}
    assert written["test_images"] == 12 and metrics["gradcam"] == "4 images"
    # plots data for DVC and the figures
    plots = paths.metrics_dir / "evaluate_plots"
    assert sorted(p.name for p in (plots / "roc").iterdir()) == ["covid.csv", "normal.csv"]
    assert list(pd.read_csv(plots / "roc" / "covid.csv").columns) == ["fpr", "tpr", "threshold"]
    assert list(pd.read_csv(plots / "pr" / "normal.csv").columns) == [
        "recall",
        "precision",
        "threshold",
    ]
    assert list(pd.read_csv(plots / "calibration.csv").columns) == [
        "confidence",
        "accuracy",
        "images",
    ]
    figures = paths.reports("evaluate")
    for name in (
        "confusion_matrix.png", "roc_curves.png", "pr_curves.png", "reliability.png",
        "misclassified.png", "gradcam/covid.png", "gradcam/normal.png", "per_source.csv",
    ):  # fmt: skip
        assert (figures / name).stat().st_size > 0, name
    table = pd.read_csv(paths.predictions)
    assert {"path", "sha256", "actual", "predicted", "correct", "p_covid"} <= set(table.columns)
    # and the train run got the metrics, figures, predictions table and a servable model
    run = MlflowClient().get_run(train_run.info.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(written["test_accuracy"])
    assert "test_sensitivity_covid" in run.data.metrics
    assert "source_site-a_accuracy" in run.data.metrics
    logged = {item.path for item in MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/roc_curves.png", "evaluate/test_predictions.json", "evaluate/plots"} <= logged
    served = mlflow.pyfunc.load_model(written["model_uri"])
    raw = sorted(paths.raw_dir.rglob("*.png"))[:2]
    result = served.predict(pd.DataFrame({"image": [file.read_bytes() for file in raw]}))
    assert list(result["class"]) != [] and set(result["class"]) <= set(NAMES_TINY)


def test_evaluate_a_scikit_learn_model_says_grad_cam_is_unavailable(tmp_path, store):
    paths = write_project(tmp_path, epochs=1)
    pixels = np.load(paths.pixel_cache)
    train = pd.read_parquet(paths.split_table("train"))
    labels = train["label"].map({"covid": 0, "normal": 1}).to_numpy()
    sklearn_models_dir(paths.models_dir, pixels[train["cache_index"]], labels)
    (paths.models_dir / "model.keras").unlink()
    metrics = evaluate_model(PARAMS, 42, 10**7, "cxr-evaluate", paths, store)
    assert metrics["gradcam"].startswith("unavailable: a Pipeline has no convolutional feature map")
    assert not (paths.reports("evaluate") / "gradcam").exists() or not any(
        (paths.reports("evaluate") / "gradcam").iterdir()
    )
    assert 0 <= metrics["test_accuracy"] <= 1


def test_dvc_plots_show_renders_the_evaluate_plots(tmp_path, store, project_root):
    # given the evaluate outputs and the repository's plot definitions in a DVC project
    paths = write_project(tmp_path, epochs=1)
    evaluate_model(PARAMS, 42, 10**7, "cxr-evaluate", paths, store)
    definitions = yaml.safe_load((project_root / "dvc.yaml").read_text())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": definitions}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    # when dvc renders them
    shown = subprocess.run(
        [dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True
    )
    rendered = json.loads(shown.stdout)
    # then confusion, calibration, ROC and PR (one per class) and the figures have data
    data = rendered["data"]
    assert data["confusion"] and data["calibration"]
    for kind in ("roc", "pr"):
        for name in NAMES_TINY:
            assert data[f"metrics/evaluate_plots/{kind}/{name}.csv"], (kind, name)
    for figure in ("roc_curves", "pr_curves", "reliability", "confusion_matrix"):
        assert data[f"reports/evaluate/{figure}.png"]
    assert any(key.startswith("reports/evaluate/gradcam/") for key in data)
    failed = {error["name"] for error in rendered.get("errors", [])}
    assert not failed & {"confusion", "calibration"}
    assert not any("evaluate" in name for name in failed), failed
