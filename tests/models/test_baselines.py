import json
import subprocess
import sys

import joblib
import mlflow
import numpy as np
import pandas as pd
import pytest
from training_fixtures import ROOT, fresh_copy, tiny_params, write_prepared_project

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.registry import BASELINE_NAMES
from cxr.models.baselines import BASELINES, build_baseline, fitted_parameter_count, flatten_pixels
from cxr.models.pixels import load_split_pixels
from cxr.models.run_record import read_run_record
from stages import train

# Every test gets its own MLflow store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_store")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared_project(tmp_path_factory.mktemp("baselines") / "prepared")


def baseline_params(model, **baseline):
    params = tiny_params()
    params["model"] = model
    params["train"]["baseline"].update(image_size=16, trees=20, **baseline)
    return params


def test_every_registered_baseline_has_a_builder():
    # the registry (what params accept) and the builders (what train fits) name the same models
    assert sorted(BASELINES) == sorted(BASELINE_NAMES)


@pytest.mark.parametrize("model", BASELINE_NAMES)
def test_each_baseline_trains_saves_a_joblib_pipeline_and_an_mlflow_run(prepared, tmp_path, model):
    root = fresh_copy(prepared, tmp_path, baseline_params(model, pca_components=4))
    # when the train stage runs with a baseline as the model
    assert train.main(["--root", str(root)]) == 0
    paths = ProjectPaths(root)
    record = read_run_record(paths.models_dir)
    metrics = json.loads(paths.summary("train").read_text())
    # then models/ holds the fitted pipeline and a run record saying how to feed it
    assert sorted(p.name for p in paths.models_dir.iterdir()) == ["model.joblib", "run.json"]
    assert record.kind == "sklearn" and record.model == model == metrics["model"]
    assert record.image_size == 16 and record.cache_size == 40
    pipeline = joblib.load(paths.model_file("sklearn"))
    test = pd.read_parquet(paths.split_table("test"))
    pixels = flatten_pixels(load_split_pixels(paths.pixel_cache, test["cache_index"], 16))
    probabilities = pipeline.predict_proba(pixels)
    assert pixels.shape == (9, 256) and pixels.dtype == np.uint8
    assert probabilities.shape == (9, 3) and np.allclose(probabilities.sum(axis=1), 1)
    # the phantoms at difficulty 1 are easy: a baseline beats chance on val
    assert metrics["best_val_accuracy"] > 1 / 3 and metrics["parameters"] > 0
    # no epochs: an epoch log without rows, which the loss and accuracy plots draw as no curve
    assert pd.read_csv(paths.history).empty and metrics["epochs_run"] == 0
    run = mlflow.get_run(record.run_id)
    assert run.data.tags["kind"] == "sklearn" and run.data.tags["model"] == model
    assert run.data.params["train.baseline.image_size"] == "16"
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(metrics["best_val_accuracy"])
    artifacts = mlflow.artifacts.list_artifacts(run_id=record.run_id, artifact_path="model")
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
    code = "import sys, cxr.models.baselines; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
