import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from stages.evaluate import draw_confusion, draw_misclassified, one_vs_rest_auc, score_predictions

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
    raw = tmp_path / "raw"
    (raw / "covid").mkdir(parents=True)
    for index in range(3):
        Image.new("L", (40, 40), 60 * index).save(raw / "covid" / f"{index}.png")
    table = pd.DataFrame(
        {
            "path": [f"covid/{index}.png" for index in range(3)],
            "actual": ["covid"] * 3,
            "predicted": ["covid", "normal", "viral_pneumonia"],
            "confidence": [0.9, 0.7, 0.6],
        }
    )
    shown = draw_misclassified(table, raw, limit=16, path=tmp_path / "wrong.png")
    assert shown == 2
    assert draw_misclassified(table, raw, limit=1, path=tmp_path / "one.png") == 1
    assert draw_misclassified(table.iloc[:1], raw, limit=16, path=tmp_path / "none.png") == 0
    assert (tmp_path / "none.png").stat().st_size > 0
