"""A model saved under one Keras backend loads and predicts under the other (cxr/models/loading.py).

The test process runs one backend (TensorFlow unless KERAS_BACKEND says otherwise); the other
runs in a subprocess, which loads this side's model and saves one of its own for this side to
load. Both sides also compute Grad-CAM, whose gradient is each backend's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr.core.params import AugmentParams, HeadParams
from cxr.evaluation.gradcam import gradcam_heatmaps
from cxr.models.backend import JAX, TENSORFLOW, keep_tensorflow_out, keras_backend
from cxr.models.classifier import build_classifier
from cxr.models.loading import load_model_file

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["covid", "normal", "viral_pneumonia"]
SIZE = 32

# Run by the other backend: load `theirs`, answer for the images, save a model of its own.
OTHER_SIDE = """
import json, sys
from pathlib import Path
import numpy as np
from tests.models.test_loading import answers, tiny_classifier
from cxr.models.backend import keras_backend
from cxr.models.loading import load_model_file

theirs, images, out = Path(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]
np.savez(f"{out}/answers_for_theirs.npz", *answers(load_model_file(theirs, "keras"), images))
mine = tiny_classifier(seed=11)
mine.save(f"{out}/mine.keras")
np.savez(f"{out}/answers_for_mine.npz", *answers(mine, images))
print(json.dumps({"backend": keras_backend(), "tensorflow": "tensorflow" in sys.modules}))
"""


def tiny_classifier(seed: int) -> object:
    """compact_cnn at 32 px with random weights, as train builds it (no augmentation)."""
    import keras

    keep_tensorflow_out()  # on JAX, seeding would import TensorFlow otherwise
    keras.utils.set_random_seed(seed)  # whatever ran before in this process
    head = HeadParams(
        pooling="avg", dense_units=[8], batch_norm=False, dropout=0.0, l2=0.0, googlenet_aux=False
    )
    augment = AugmentParams(
        horizontal_flip=False, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0, brightness=0.0
    )
    model, _, _ = build_classifier("compact_cnn", SIZE, CLASSES, "none", head, augment, seed)
    return model


def answers(model: object, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and Grad-CAM maps (of the predicted class) for the images."""
    probabilities = np.asarray(model.predict(images, verbose=0))  # type: ignore[attr-defined]
    return probabilities, gradcam_heatmaps(model, images, probabilities.argmax(axis=1))


@pytest.mark.slow
def test_a_model_saved_on_one_backend_predicts_the_same_on_the_other(tmp_path: Path) -> None:
    # Given a classifier saved on this process's backend, and images
    here = keras_backend()
    other = JAX if here == TENSORFLOW else TENSORFLOW
    images = np.random.default_rng(3).integers(0, 256, (6, SIZE, SIZE, 1), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mine = tiny_classifier(seed=7)
    mine.save(tmp_path / "theirs.keras")  # type: ignore[attr-defined]

    # When the other backend loads it and saves its own, and this side loads that
    env = {**os.environ, "KERAS_BACKEND": other, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", OTHER_SIDE, str(tmp_path / "theirs.keras")]
        + [str(tmp_path / "images.npy"), str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    # Then each side's model answers the same on both backends: probabilities and Grad-CAM
    assert report["backend"] == other
    # (a JAX process never imports TensorFlow, though it is installed here)
    assert report["tensorflow"] is (other == TENSORFLOW)
    for model_here, answered_there in [
        (mine, tmp_path / "answers_for_theirs.npz"),
        (load_model_file(tmp_path / "mine.keras", "keras"), tmp_path / "answers_for_mine.npz"),
    ]:
        probabilities, heatmaps = answers(model_here, images)
        with np.load(answered_there) as there:
            np.testing.assert_allclose(probabilities, there["arr_0"], atol=1e-5)
            np.testing.assert_allclose(heatmaps, there["arr_1"], atol=1e-3)
        assert heatmaps.shape == (6, SIZE, SIZE) and heatmaps.max() > 0
