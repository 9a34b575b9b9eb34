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

from cxr.core.errors import PipelineError
from cxr.core.params import EvaluateParams
from cxr.core.tables import fold_design_json
from cxr.evaluation.metrics import evaluation_line
from cxr.evaluation.tta import tta_views
from cxr.models.loading import load_models_dir
from cxr.models.pixels import load_split_pixels
from cxr.tracking.store import use_experiment
from stages.evaluate import EVALUATE_HEADLINE, evaluate, main

BATCH_SIZE = 8  # CXR_INFERENCE_BATCH_SIZE: smaller than the test split, so it takes batches
PARAMS = EvaluateParams(
    misclassified_grid=4,
    bootstrap_samples=50,
    calibration_bins=5,
    gradcam_images=2,
    tta=False,
)


def test_evaluate_stage_continues_the_train_run_and_writes_everything(tmp_path, store):
    # given a trained tiny CNN whose train run is in the store, and a test split of two sources
    experiment_id = use_experiment("cxr-evaluate", tmp_path, store)
    with mlflow.start_run(experiment_id=experiment_id) as train_run:
        mlflow.log_metric("parameters", 100)
    paths = write_project(tmp_path, run_id=train_run.info.run_id, sources=("site-a", "site-b"))
    # when evaluate runs
    metrics = evaluate(PARAMS, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    # then metrics/summary/evaluate.json keeps the keys compare and the README read
    written = json.loads(paths.summary("evaluate").read_text())
    for key in (
        "test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "test_balanced_accuracy",
        "test_cohen_kappa", "test_covid_sensitivity", "test_ece", "inference_images_per_second",
        "test_accuracy_ci_low", "test_accuracy_ci_high", "per_source", "model_uri",
    ):  # fmt: skip
        assert key in written, key
    assert written["mlflow_run_id"] == train_run.info.run_id
    assert set(written["per_source"]) == {"site-a", "site-b"}
    assert written["test_images"] == 12 and metrics["gradcam"] == "4 images"
    # and no list or sentence, which `dvc metrics show` would print as a wide column: the
    # intervals are the _ci_low / _ci_high keys, the Grad-CAM line a tag of the run
    assert "confidence_intervals" not in written and "gradcam" not in written
    # and the DVC metric holds the headline alone (`dvc exp show` prints a column per key)
    headline = json.loads(paths.metrics("evaluate").read_text())
    assert headline == {key: written[key] for key in EVALUATE_HEADLINE}
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
    assert run.data.tags["gradcam"] == "4 images"
    assert "source_site-a_accuracy" in run.data.metrics
    logged = {item.path for item in MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/roc_curves.png", "evaluate/test_predictions.json", "evaluate/plots"} <= logged
    served = mlflow.pyfunc.load_model(written["model_uri"])
    raw = sorted(paths.raw_dir.rglob("*.png"))[:2]
    result = served.predict(pd.DataFrame({"image": [file.read_bytes() for file in raw]}))
    assert list(result["class"]) != [] and set(result["class"]) <= set(NAMES_TINY)


def test_evaluate_a_scikit_learn_model_says_grad_cam_is_unavailable(tmp_path, store, capsys):
    # given a scikit-learn model of fold 1 of a 3-fold design whose train run (1...1) is not in
    # this store
    paths = write_project(tmp_path, epochs=1)
    paths.fold_design.write_text(json.dumps(fold_design_json("d3sign", 3, 1)), encoding="utf-8")
    pixels = np.load(paths.pixel_cache)
    train = pd.read_parquet(paths.split_table("train"))
    labels = train["label"].map({"covid": 0, "normal": 1}).to_numpy()
    sklearn_models_dir(paths.models_dir, pixels[train["cache_index"]], labels)
    (paths.models_dir / "model.keras").unlink()
    metrics = evaluate(PARAMS, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    assert metrics["gradcam"].startswith("unavailable: a Pipeline has no convolutional feature map")
    assert not (paths.reports("evaluate") / "gradcam").exists() or not any(
        (paths.reports("evaluate") / "gradcam").iterdir()
    )
    assert 0 <= metrics["test_accuracy"] <= 1
    # and the results went to a new run linked to the train run, tagged with the model
    assert "run 11111111111111111111111111111111 is not in this store" in capsys.readouterr().out
    linked = MlflowClient().get_run(metrics["mlflow_run_id"])
    assert linked.info.run_id != "1" * 32
    assert linked.data.tags["trained_in_run"] == "1" * 32
    assert linked.data.tags["model"] == "pixel_logreg" and "backbone" not in linked.data.tags
    # and with its fold's tags, so compare pools it with the design's other folds
    assert {key: linked.data.tags[key] for key in ("cv_design", "folds", "fold")} == {
        "cv_design": "d3sign",
        "folds": "3",
        "fold": "1",
    }
    assert linked.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_main_stops_on_test_labels_the_model_does_not_know(
    tmp_path, store, small_params_dict, write_params, capsys
):
    # given a test split holding a class the trained model never saw
    paths = write_project(tmp_path, epochs=1)
    test = pd.read_parquet(paths.split_table("test"))
    test.loc[0, "label"] = "lung_opacity"
    test.to_parquet(paths.split_table("test"))
    write_params(tmp_path, small_params_dict)
    # when the stage runs, then it fails in one line naming the label, and writes nothing
    assert main(["--root", str(tmp_path)]) == 2
    assert "test labels ['lung_opacity'] unknown to the model" in capsys.readouterr().err
    assert not paths.metrics("evaluate").exists() and not paths.evaluate_plots.exists()
    with pytest.raises(PipelineError, match="lung_opacity"):
        evaluate(PARAMS, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)


def test_dvc_plots_show_renders_the_evaluate_plots(tmp_path, store, project_root):
    # given the evaluate outputs and the repository's plot definitions in a DVC project
    paths = write_project(tmp_path, epochs=1)
    evaluate(PARAMS, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    pipeline = yaml.safe_load((project_root / "dvc.yaml").read_text())
    # The top-level plots, and the figures evaluate declares as its own plots output (there
    # is no stage in this bare project, so its figures folder is given as a plot here).
    assert "reports/evaluate" in pipeline["stages"]["evaluate"]["plots"]
    definitions = [*pipeline["plots"], "reports/evaluate"]
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


def test_tta_scores_the_mean_over_the_views_and_off_keeps_the_plain_probabilities(tmp_path, store):
    # given a trained tiny CNN and its test images
    paths = write_project(tmp_path, epochs=1)
    predictor = load_models_dir(paths.models_dir)
    test = pd.read_parquet(paths.split_table("test"))
    images = load_split_pixels(paths.pixel_cache, test["cache_index"], predictor.image_size)
    columns = [f"p_{name}" for name in NAMES_TINY]
    quick = PARAMS.model_copy(update={"gradcam_images": 0, "bootstrap_samples": 0})
    # when evaluate runs with TTA off
    plain = evaluate(quick, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    plain_table = pd.read_csv(paths.predictions)
    # then the probabilities are the plain model's, and TTA is recorded as off
    np.testing.assert_allclose(
        plain_table[columns], predictor.predict_proba(images).round(4), atol=1e-4
    )
    assert plain["tta"] is False and plain["tta_views"] == 1
    # when it runs with TTA on
    augmented = evaluate(
        quick.model_copy(update={"tta": True}), 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE
    )
    table = pd.read_csv(paths.predictions)
    # then each image's probabilities are the mean of the model's over its six views
    expected = np.mean([predictor.predict_proba(view) for view in tta_views(images)], axis=0)
    np.testing.assert_allclose(table[columns], expected.round(4), atol=1e-4)
    assert not np.allclose(table[columns], plain_table[columns])
    # and metrics/summary/evaluate.json and the MLflow run say so; the speed is per test image
    written = json.loads(paths.summary("evaluate").read_text())
    assert written["tta"] is True and written["tta_views"] == 6
    assert written["inference_images_per_second"] > 0
    run = MlflowClient().get_run(augmented["mlflow_run_id"])
    assert run.data.tags["tta"] == "true" and run.data.metrics["tta_views"] == 6
    assert MlflowClient().get_run(plain["mlflow_run_id"]).data.tags["tta"] == "false"


def test_decision_fits_on_the_validation_split_and_moves_every_test_figure(tmp_path, store):
    # given a tiny CNN trained one epoch, its validation and test images
    paths = write_project(tmp_path, epochs=1)
    predictor = load_models_dir(paths.models_dir)
    val, test = (pd.read_parquet(paths.split_table(split)) for split in ("val", "test"))
    val_images, test_images = (
        load_split_pixels(paths.pixel_cache, table["cache_index"], predictor.image_size)
        for table in (val, test)
    )
    val_covid = predictor.predict_proba(val_images)[:, 0]
    columns = [f"p_{name}" for name in NAMES_TINY]
    quick = PARAMS.model_copy(
        update={"gradcam_images": 0, "bootstrap_samples": 0, "decision": "val_covid_sensitivity"}
    )
    # when evaluate runs deciding for a validation covid sensitivity of 1
    metrics = evaluate(
        quick.model_copy(update={"target_sensitivity": 1.0}),
        42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE,
    )  # fmt: skip
    # then the threshold is at or under every validation covid image's probability
    threshold = metrics["decision_covid_threshold"]
    assert threshold <= val_covid[val["label"] == "covid"].min()
    assert metrics["decision_val_images"] == len(val) == 12
    # and the test probabilities are the model's with covid weighted, the figures from them
    weight = metrics["decision_covid_weight"]
    assert weight != 1.0  # moved off argmax
    plain = predictor.predict_proba(test_images)
    expected = plain * [weight, 1.0] / (plain * [weight, 1.0]).sum(axis=1, keepdims=True)
    table = pd.read_csv(paths.predictions)
    np.testing.assert_allclose(table[columns], expected.round(4), atol=1e-4)
    called = expected.argmax(axis=1) == 0
    truly = (test["label"] == "covid").to_numpy()
    assert metrics["test_covid_sensitivity"] == pytest.approx(called[truly].mean())
    assert (table["predicted"] == "covid").tolist() == called.tolist()
    # and the summary, the MLflow run and the printed line say how it decided
    written = json.loads(paths.summary("evaluate").read_text())
    assert written["decision"] == "val_covid_sensitivity"
    assert written["decision_covid_weight"] == weight
    run = MlflowClient().get_run(metrics["mlflow_run_id"])
    assert run.data.tags["decision"] == "val_covid_sensitivity"
    assert run.data.metrics["decision_covid_threshold"] == pytest.approx(threshold)
    assert "decision val_covid_sensitivity (covid weight" in evaluation_line(metrics)
    # when it runs again under argmax, then the plain probabilities come back
    again = evaluate(
        quick.model_copy(update={"decision": "argmax"}),
        42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE,
    )  # fmt: skip
    np.testing.assert_allclose(pd.read_csv(paths.predictions)[columns], plain.round(4), atol=1e-4)
    assert again["decision_covid_weight"] == 1.0 and "decision" not in evaluation_line(again)
    assert MlflowClient().get_run(again["mlflow_run_id"]).data.tags["decision"] == "argmax"


def test_a_second_evaluation_of_a_run_replaces_the_first(tmp_path, store):
    # given a train run evaluated once, whose classifier the registry holds as a version
    experiment_id = use_experiment("cxr-evaluate", tmp_path, store)
    with mlflow.start_run(experiment_id=experiment_id) as train_run:
        mlflow.log_metric("parameters", 100)
    run_id = train_run.info.run_id
    paths = write_project(tmp_path, run_id=run_id, epochs=1)
    quick = PARAMS.model_copy(update={"gradcam_images": 0, "bootstrap_samples": 20})
    first = evaluate(quick, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    client = MlflowClient()

    def classifiers() -> list[str]:
        found = client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = 'classifier'"
        )
        return [model.model_id for model in found]

    # when it is evaluated again with the same params (`dvc repro -f evaluate`), twice
    evaluate(quick, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    second = evaluate(quick, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    # then the run holds one classifier (the newest), one value of each test metric, and a
    # predictions table of the test images once, not appended to the earlier ones
    assert classifiers() == [second["model_uri"].removeprefix("models:/")]
    assert first["model_uri"] != second["model_uri"]
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 1
    assert len(client.get_metric_history(run_id, "test_f1_macro")) == 1
    table = client.load_table(experiment_id, "evaluate/test_predictions.json", [run_id])
    assert len(table) == second["test_images"] == 12
    assert mlflow.pyfunc.load_model(f"runs:/{run_id}/classifier") is not None
    # when the classifier is registered and the run is evaluated with other params
    version = mlflow.register_model(second["model_uri"], "cxr-evaluate-test")
    other = quick.model_copy(update={"bootstrap_samples": 30})
    third = evaluate(other, 42, 10**7, "cxr-evaluate", paths, store, BATCH_SIZE)
    # then the registered classifier is kept (the registry serves it) beside the new one, and
    # only the metrics whose value changed got a second point
    assert set(classifiers()) == {
        second["model_uri"].removeprefix("models:/"),
        third["model_uri"].removeprefix("models:/"),
    }
    assert mlflow.pyfunc.load_model(f"models:/cxr-evaluate-test/{version.version}") is not None
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 1
    changed = (
        third["confidence_intervals"]["test_accuracy"]
        != first["confidence_intervals"]["test_accuracy"]
    )
    assert len(client.get_metric_history(run_id, "test_accuracy_ci_low")) == (2 if changed else 1)
