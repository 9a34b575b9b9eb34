import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr.core.errors import PipelineError
from cxr.evaluation.metrics import (
    Predictions,
    confidence_intervals,
    curve_tables,
    evaluation_metrics,
    flat_metrics,
    known_label_indices,
    one_vs_rest_auc,
    per_source_json,
    per_source_scores,
    prediction_table,
    score_predictions,
    sensitivity_specificity,
)
from cxr.evaluation.statistics import expected_calibration_error

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


def test_undefined_rates_are_none_and_raise_no_warning():
    # given labels where class 0 has no negative image and class 1 no positive one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # when the one-vs-rest rates are computed
        rates = sensitivity_specificity(np.array([0, 0]), np.array([0, 1]), 2)
        # then the undefined ones are None, not imbalanced-learn's 0.0, and nothing warned
        assert rates == [(0.5, None), (None, 0.5)]
        # a class absent from both arrays has no sensitivity, and a perfect specificity
        assert sensitivity_specificity(np.array([0, 1]), np.array([0, 1]), 3) == [
            (1.0, 1.0),
            (1.0, 1.0),
            (None, 1.0),
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


def test_evaluation_metrics_join_scores_intervals_and_calibration(predictions):
    true, probabilities = predictions
    scored = Predictions(true, probabilities, tuple(NAMES))
    metrics = evaluation_metrics(scored, bootstrap_samples=50, calibration_bins=5, seed=3)
    assert metrics["test_accuracy"] == pytest.approx(0.8)
    low, high = metrics["confidence_intervals"]["test_f1_macro"]
    assert (metrics["test_f1_macro_ci_low"], metrics["test_f1_macro_ci_high"]) == (low, high)
    assert metrics["test_ece"] == pytest.approx(
        expected_calibration_error(probabilities.max(axis=1), scored.correct, 5)
    )
    assert evaluation_metrics(scored, 0, 5, 3)["test_accuracy_ci_low"] is None
    # the covid sensitivity has an interval from the same resamples, holding the estimate
    low, high = metrics["test_covid_sensitivity_ci_low"], metrics["test_covid_sensitivity_ci_high"]
    assert low <= metrics["test_covid_sensitivity"] <= high and low < high
    without = confidence_intervals(true, probabilities, samples=50, seed=3)
    assert without["test_accuracy"] == metrics["confidence_intervals"]["test_accuracy"]
    # and a model without a covid class has none
    other = Predictions(true, probabilities, ("a", "b", "c"))
    assert "test_covid_sensitivity_ci_low" not in evaluation_metrics(other, 50, 5, 3)


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
    by_source = per_source_scores(two, true, predicted, ["covid", "normal"])
    table = by_source.set_index("source")
    assert table.loc["a", "accuracy"] == 1.0 and table.loc["b", "accuracy"] == 0.5
    assert table.loc["b", "covid_sensitivity"] == 0.0 and table.loc["b", "images"] == 2
    as_json = per_source_json(by_source)
    assert as_json["b"]["accuracy"] == 0.5 and as_json["a"]["images"] == 2


def test_labels_the_model_does_not_know_stop_evaluate():
    test = pd.DataFrame({"label": ["normal", "covid", "normal"]})
    assert known_label_indices(test, ("covid", "normal")).tolist() == [1, 0, 1]
    with pytest.raises(PipelineError, match=r"test labels \['lung_opacity'\] unknown"):
        known_label_indices(pd.DataFrame({"label": ["lung_opacity"]}), ("covid", "normal"))


def test_prediction_table_has_one_row_per_image(predictions):
    true, probabilities = predictions
    test = pd.DataFrame({"path": [f"{i}.png" for i in range(10)], "source": "site"})
    table = prediction_table(test, Predictions(true, probabilities, tuple(NAMES)))
    assert len(table) == 10 and table["sha256"].eq("").all()
    assert table.loc[2, ["actual", "predicted", "correct"]].tolist() == ["covid", "normal", False]
    assert table.loc[2, "confidence"] == 0.7 and table.loc[2, "p_covid"] == 0.2


def test_flat_metrics_name_classes_and_sources_and_drop_the_undefined():
    metrics = {
        "test_accuracy": 0.75,
        "test_images": 4,
        "test_roc_auc_ovr": None,
        "test_ece": float("nan"),
        "gradcam": "2 images",
        "per_class": {"covid": {"f1-score": 0.5, "support": 2.0, "specificity": None}},
        "per_source": {"site-a": {"accuracy": 1.0, "covid_sensitivity": None}},
    }
    assert flat_metrics(metrics) == {
        "test_accuracy": 0.75,
        "test_images": 4.0,
        "test_f1_covid": 0.5,
        "source_site-a_accuracy": 1.0,
    }
