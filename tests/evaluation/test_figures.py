import numpy as np
import pandas as pd
from evaluation_fixtures import tiny_keras_model
from PIL import Image
from sklearn.dummy import DummyClassifier

from cxr.core.params import EvaluateParams
from cxr.evaluation.figures import (
    draw_confusion,
    draw_evaluation_figures,
    draw_gradcam,
    draw_misclassified,
    write_plots_data,
)
from cxr.evaluation.metrics import Predictions, prediction_table

NAMES = ["covid", "normal", "viral_pneumonia"]


def test_confusion_png_and_matrix(tmp_path):
    true = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1, 0, 2, 2, 2])
    matrix = draw_confusion(true, predicted, NAMES, tmp_path / "confusion.png")
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


def small_test_set(count: int = 8) -> tuple[np.ndarray, Predictions]:
    """Noise images, alternating labels, and probabilities that get every fourth image wrong."""
    images = np.random.default_rng(0).integers(0, 255, (count, 16, 16, 1), dtype=np.uint8)
    true = np.arange(count) % 2
    wrong = np.arange(count) % 4 == 3
    predicted = np.where(wrong, 1 - true, true)
    probabilities = np.where(predicted[:, None] == [0, 1], 0.8, 0.2)
    return images, Predictions(true, probabilities, ("covid", "normal"))


def test_gradcam_grids_per_true_class_or_the_reason_there_are_none(tmp_path):
    images, predictions = small_test_set()
    # a CNN with a feature map: one grid per class, with up to 2 right and 2 wrong images each
    text = draw_gradcam(tiny_keras_model(), images, predictions, 2, 0, tmp_path / "cnn")
    assert text == "6 images"
    assert sorted(path.name for path in (tmp_path / "cnn").iterdir()) == [
        "covid.png",
        "normal.png",
    ]
    # a model without one, and Grad-CAM switched off
    dummy = DummyClassifier().fit(np.zeros((2, 1)), [0, 1])
    reason = draw_gradcam(dummy, images, predictions, 2, 0, tmp_path / "dummy")
    assert reason.startswith("unavailable: a DummyClassifier has no convolutional feature map")
    assert draw_gradcam(dummy, images, predictions, 0, 0, tmp_path / "off").startswith("disabled")
    assert not (tmp_path / "off").exists()


def test_every_evaluate_figure_is_drawn(tmp_path):
    images, predictions = small_test_set()
    per_image = prediction_table(pd.DataFrame({"path": [""] * 8}), predictions)
    settings = EvaluateParams(
        misclassified_grid=1, bootstrap_samples=0, calibration_bins=5,
        gradcam_images=0, tta=False,
    )  # fmt: skip
    drawn = draw_evaluation_figures(
        tmp_path, tiny_keras_model(), images, predictions, per_image, settings, 0
    )
    assert drawn == {"misclassified_shown": 1, "gradcam": "disabled (evaluate.gradcam_images = 0)"}
    for name in (
        "confusion_matrix.png", "roc_curves.png", "pr_curves.png", "reliability.png",
        "misclassified.png",
    ):  # fmt: skip
        assert Image.open(tmp_path / name).format == "PNG", name


def test_plots_data_are_one_csv_per_class_and_curve_and_a_reliability_table(tmp_path):
    _, predictions = small_test_set()
    write_plots_data(tmp_path, predictions, bins=5)
    for kind in ("roc", "pr"):
        assert sorted(path.name for path in (tmp_path / kind).iterdir()) == [
            "covid.csv",
            "normal.csv",
        ]
    assert list(pd.read_csv(tmp_path / "roc" / "normal.csv").columns) == ["fpr", "tpr", "threshold"]
    calibration = pd.read_csv(tmp_path / "calibration.csv")
    assert list(calibration.columns) == ["confidence", "accuracy", "images"]
    assert calibration["images"].sum() == 8 and calibration["accuracy"].tolist() == [0.75]
