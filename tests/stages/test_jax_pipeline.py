"""The pipeline on JAX (KERAS_BACKEND=jax): train, evaluate, compare and predict, no TensorFlow.

One subprocess (Keras reads KERAS_BACKEND once per process) runs the stages on the tiny prepared
project of training_fixtures and reports which of them imported TensorFlow, installed here; a
machine with JAX and no TensorFlow (an accelerator machine) runs them only if none does. The
rest of the suite runs every stage on TensorFlow, the default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from training_fixtures import fresh_copy, tiny_params, write_prepared_project

from cxr.core.paths import ProjectPaths
from cxr.models.loading import load_model_file
from cxr.models.run_record import read_run_record

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

STAGES_ON_JAX = """
import json, sys
from pathlib import Path
root = sys.argv[1]
from stages import compare, evaluate, train
seen = {}
for name, stage in (("train", train), ("evaluate", evaluate), ("compare", compare)):
    assert stage.main(["--root", root]) == 0, name
    seen[name] = "tensorflow" in sys.modules
# cxr-predict with the classifier evaluate logged to MLflow (the pyfunc), on a PNG file
import mlflow
from cxr.models.run_record import read_run_record
from cxr.serving.predict import main as predict
run_id = read_run_record(Path(root) / "models").run_id
assert predict([sys.argv[2], "--model", f"runs:/{run_id}"]) == 0
seen["predict"] = "tensorflow" in sys.modules
import keras
seen["backend"] = keras.backend.backend()
print(json.dumps(seen))
"""


def test_train_evaluate_compare_and_predict_run_on_jax_without_tensorflow(
    tmp_path: Path,
) -> None:
    # Given a prepared tiny project and a PNG of one of its test images
    prepared = write_prepared_project(tmp_path / "prepared")
    params = tiny_params(epochs=2, fine_tune_epochs=0)
    params["model"] = "compact_cnn"
    params["evaluate"]["bootstrap_samples"] = 50
    root = fresh_copy(prepared, tmp_path, params)
    paths = ProjectPaths(root)
    png = tmp_path / "scan.png"
    Image.fromarray(np.load(paths.pixel_cache)[0]).save(png)

    # When the stages run on JAX, in one process, and cxr-predict asks the logged model
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MLFLOW_") and key not in ("XLA_FLAGS", "CXR_CPU_DEVICES")
    }
    env.update(KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="0")
    done = subprocess.run(
        [sys.executable, "-c", STAGES_ON_JAX, str(root), str(png)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    # Then they ran on JAX, and not one of them imported TensorFlow
    assert seen == {
        "train": False,
        "evaluate": False,
        "compare": False,
        "predict": False,
        "backend": "jax",
    }
    assert "scan.png" in done.stdout  # cxr-predict's line for the image
    # and wrote what they write on TensorFlow: the run says JAX, the leaderboard too
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(read_run_record(paths.models_dir).run_id)
    assert run.data.tags["keras_backend"] == "jax" and "jax_version" in run.data.tags
    assert "tensorflow_version" not in run.data.tags
    assert "test_accuracy" in run.data.metrics
    assert (root / "reports" / "evaluate" / "gradcam").is_dir()
    board = json.loads((root / "reports" / "compare" / "leaderboard.json").read_text())
    assert board["leaderboard"]["compact_cnn"]["backend"] == "jax"
    # and the model JAX saved predicts here, on TensorFlow
    probabilities = load_model_file(paths.model_file(), "keras").predict(
        np.load(paths.pixel_cache)[:2, :32, :32, None], verbose=0
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
