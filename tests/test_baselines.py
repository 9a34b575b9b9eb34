import json
import subprocess
import sys

import joblib
import mlflow
import numpy as np
import pandas as pd
import pytest
from training_fixtures import ROOT, fresh_copy, tiny_params, write_prepared_project

from stages import train
from stages.baselines import BASELINES, build_baseline, fitted_parameter_count, flatten_pixels
from stages.config import parse_params
from stages.errors import ParamsError, PipelineError
from stages.images import load_split_pixels
from stages.paths import ProjectPaths


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared_project(tmp_path_factory.mktemp("baselines") / "prepared")


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def baseline_params(model, **baseline):
    params = tiny_params()
    params["model"] = model
    params["train"]["baseline"].update(image_size=16, trees=20, **baseline)
    return params


@pytest.mark.parametrize("model", sorted(BASELINES))
def test_each_baseline_trains_saves_a_joblib_pipeline_and_an_mlflow_run(prepared, tmp_path, model):
    root = fresh_copy(prepared, tmp_path, baseline_params(model, pca_components=4))
    # when the train stage runs with a baseline as the model
    assert train.main(["--root", str(root)]) == 0
    paths = ProjectPaths(root)
    record = json.loads(paths.run_record.read_text())
    metrics = json.loads(paths.metrics("train").read_text())
    # then models/ holds the fitted pipeline and a run record saying how to feed it
    assert sorted(p.name for p in paths.models_dir.iterdir()) == ["model.joblib", "run.json"]
    assert record["kind"] == "sklearn" and record["backbone"] == model
    assert record["image_size"] == 16 and record["cache_size"] == 40
    pipeline = joblib.load(paths.sklearn_model_file)
    test = pd.read_parquet(paths.split_table("test"))
    pixels = flatten_pixels(load_split_pixels(paths.pixel_cache, test["cache_index"], 16))
    probabilities = pipeline.predict_proba(pixels)
    assert pixels.shape == (9, 256) and pixels.dtype == np.uint8
    assert probabilities.shape == (9, 3) and np.allclose(probabilities.sum(axis=1), 1)
    # the phantoms at difficulty 1 are easy: a baseline beats chance on val
    assert metrics["best_val_accuracy"] > 1 / 3 and metrics["parameters"] > 0
    assert len(pd.read_csv(paths.history)) == 1
    run = mlflow.get_run(record["run_id"])
    assert run.data.tags["kind"] == "sklearn" and run.data.tags["backbone"] == model
    assert run.data.params["train.baseline.image_size"] == "16"
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(metrics["best_val_accuracy"])
    artifacts = mlflow.artifacts.list_artifacts(run_id=record["run_id"], artifact_path="model")
    assert [artifact.path for artifact in artifacts] == ["model/model.joblib"]


def test_pca_and_regularisation_reach_the_pipeline():
    params = parse_params(baseline_params("pixel_svm", pca_components=8, c=3.0)).train.baseline
    pipeline = build_baseline("pixel_svm", params, seed=1)
    assert [name for name, _ in pipeline.steps] == ["scale", "pca", "classify"]
    assert pipeline.named_steps["pca"].n_components == 8
    assert pipeline.named_steps["classify"].estimator.C == 3.0
    no_pca = build_baseline("pixel_logreg", params.model_copy(update={"pca_components": 0}), 1)
    assert [name for name, _ in no_pca.steps] == ["scale", "classify"]


def test_parameter_count_counts_learned_values():
    params = parse_params(baseline_params("pixel_logreg")).train.baseline
    pipeline = build_baseline("pixel_logreg", params, seed=1)
    rows = np.random.default_rng(0).integers(0, 255, (30, 16), dtype=np.uint8)
    pipeline.fit(rows, np.arange(30) % 3)
    # scaler mean, var and scale (16 each), coefficients (3 x 16) and intercepts (3)
    assert fitted_parameter_count(pipeline) == 3 * 16 + 3 * 16 + 3


def test_unknown_model_lists_backbones_and_baselines():
    params = tiny_params()
    params["model"] = "pixel_knn"
    with pytest.raises(
        ParamsError, match=r"model = 'pixel_knn': unknown model; known: .*pixel_svm"
    ):
        parse_params(params)
    with pytest.raises(PipelineError, match="unknown baseline; known: pixel_logreg"):
        build_baseline("vgg16", parse_params(tiny_params()).train.baseline, 1)


def test_baselines_import_without_tensorflow():
    code = "import sys, stages.baselines; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
