import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cxr.core.errors import PipelineError
from cxr.evaluation.operating_point import (
    candidate_weights,
    fit_covid_weight,
    reweighted,
    with_decision,
    with_evaluated_decision,
)
from cxr.models.loading import Predictor
from cxr.models.run_record import RunRecord

BINARY = ("covid", "normal")
# validation images: p(covid) falling, the first four covid (index 0), the last two normal
P_COVID = np.array([0.9, 0.6, 0.4, 0.3, 0.2, 0.1])
VAL_TRUE = np.array([0, 0, 0, 0, 1, 1])
VAL_PROBABILITIES = np.column_stack([P_COVID, 1 - P_COVID])


def covid_calls(weight: float) -> np.ndarray:
    moved = reweighted(VAL_PROBABILITIES, np.array([weight, 1.0]))
    return np.asarray(moved.argmax(axis=1) == 0)


def test_each_candidate_weight_gives_a_different_set_of_covid_calls_argmax_among_them():
    # when the candidates are made from the validation probabilities
    candidates = candidate_weights(VAL_PROBABILITIES, covid=0)
    # then they rise, include 1 (argmax), and every set of covid calls from none to all appears
    assert np.all(np.diff(candidates) > 0) and np.isclose(candidates, 1.0).any()
    called = [int(covid_calls(weight).sum()) for weight in candidates]
    assert called[0] == 0 and called[-1] == 6 and set(called) == set(range(7))


def test_covid_sensitivity_decision_is_the_most_specific_weight_reaching_the_target():
    # given argmax, which finds 2 of the 4 validation covid images (p 0.9 and 0.6)
    assert covid_calls(1.0).tolist() == [True, True, False, False, False, False]
    # when the weight is fit for a covid sensitivity of 0.75
    weight = fit_covid_weight(VAL_TRUE, VAL_PROBABILITIES, BINARY, "val_covid_sensitivity", 0.75)
    # then the image at 0.4 is called covid and the one at 0.3 not: 3 of 4, no false alarm;
    # the threshold 1 / (1 + w) lies between them (w * 0.4 > 0.6 and w * 0.3 < 0.7)
    assert covid_calls(weight).tolist() == [True, True, True, False, False, False]
    assert 0.3 < 1 / (1 + weight) < 0.4 and 1.5 < weight < 0.7 / 0.3


def test_macro_f1_decision_separates_the_validation_images_when_a_threshold_can():
    # when the weight is fit for the best validation macro F1
    weight = fit_covid_weight(VAL_TRUE, VAL_PROBABILITIES, BINARY, "val_macro_f1", 0.8)
    # then the threshold falls between 0.3 (covid) and 0.2 (normal): every image right
    assert covid_calls(weight).tolist() == (VAL_TRUE == 0).tolist()
    assert 0.2 < 1 / (1 + weight) < 0.3


def test_macro_f1_decision_keeps_argmax_when_argmax_is_already_best():
    # given validation images argmax already separates
    true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.2, 0.8]])
    # when the weight is fit, then of the equally good ones it is the smallest move: 1
    assert fit_covid_weight(true, probabilities, BINARY, "val_macro_f1", 0.8) == 1.0


def test_reweighting_three_classes_moves_covid_against_the_others_and_keeps_their_ratio():
    # given probabilities over covid, normal and viral pneumonia
    probabilities = np.array([[0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])
    # when covid is weighted 3
    moved = reweighted(probabilities, np.array([3.0, 1.0, 1.0]))
    # then rows sum to 1, normal : pneumonia keeps its ratio, and covid is 3 x 0.2 / 1.4
    np.testing.assert_allclose(moved.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(moved[:, 1] / moved[:, 2], [5 / 3, 0.5], rtol=1e-5)
    assert moved[0, 0] == pytest.approx(0.6 / 1.4, abs=1e-6)
    assert moved[0].argmax() == 0 and moved[1].argmax() == 2


def pixel_predictor(names: tuple[str, ...]) -> Predictor:
    """A two-class pixel logistic regression: p(class 1) = sigmoid(2 - the mean pixel / 64)."""
    side = 4
    model = LogisticRegression()
    model.classes_ = np.array([0, 1])
    model.coef_ = np.full((1, side * side), -1 / (64 * side * side))
    model.intercept_ = np.array([2.0])
    model.n_features_in_ = side * side
    record = RunRecord(
        run_id="0" * 32, experiment_id="0", class_names=names, model="pixel_logreg",
        kind="sklearn", image_size=side, cache_size=side, resize="pad", data_fingerprint="none",
    )  # fmt: skip
    return Predictor(model, record, "hand-set")


def test_with_decision_reweights_every_later_prediction_and_records_the_threshold():
    # given a predictor and validation probabilities
    predictor = pixel_predictor(BINARY)
    images = np.stack([np.full((4, 4, 1), value, np.uint8) for value in (0, 100, 200)])
    plain = predictor.predict_proba(images)
    # when the decision is fit for a validation covid sensitivity of 1
    moved, recorded = with_decision(
        predictor, "val_covid_sensitivity", 1.0, VAL_TRUE, VAL_PROBABILITIES
    )
    # then every covid image of the validation split is called covid (the one at 0.3 included)
    weight = recorded["decision_covid_weight"]
    assert covid_calls(weight)[:4].all() and not covid_calls(weight)[4]
    assert recorded["decision_covid_threshold"] == pytest.approx(1 / (1 + weight), abs=1e-6)
    assert recorded["decision"] == "val_covid_sensitivity" and recorded["decision_val_images"] == 6
    # and the images' probabilities are the plain ones with covid weighted, the timed path too
    expected = reweighted(plain, np.array([weight, 1.0]))
    np.testing.assert_allclose(moved.predict_proba(images), expected, atol=1e-6)
    np.testing.assert_allclose(moved.timed_predict_proba(images, 2)[0], expected, atol=1e-6)
    assert moved.class_names == BINARY and moved.model is predictor.model


@pytest.mark.parametrize(
    ("names", "true", "message"),
    [
        (
            ("normal", "pneumonia"), VAL_TRUE,
            "evaluate.decision = 'val_macro_f1' moves the 'covid' decision, but this model's "
            "classes are ['normal', 'pneumonia']; set evaluate.decision: argmax",
        ),
        (
            BINARY, np.ones(6, int),
            "evaluate.decision = 'val_macro_f1' needs covid and other images in the validation "
            "split to fit on; it has 6 image(s), 0 of them covid (raise split.val_fraction, or "
            "set evaluate.decision: argmax)",
        ),
    ],
)  # fmt: skip
def test_a_decision_that_cannot_be_fit_is_a_one_line_error(names, true, message):
    with pytest.raises(PipelineError) as raised:
        with_decision(pixel_predictor(names), "val_macro_f1", 0.8, true, VAL_PROBABILITIES)
    assert str(raised.value) == message


def test_external_validation_decides_by_the_weight_evaluate_recorded():
    # given a predictor and what evaluate recorded after fitting a covid weight of 3
    predictor = pixel_predictor(BINARY)
    images = np.stack([np.full((4, 4, 1), value, np.uint8) for value in (0, 100, 200)])
    plain = predictor.predict_proba(images)
    evaluated = {"decision": "val_macro_f1", "decision_covid_weight": 3.0, "test_accuracy": 0.9}
    # when the decision is taken from it, then that weight is applied, nothing fit again
    moved, recorded = with_evaluated_decision(predictor, evaluated)
    np.testing.assert_allclose(
        moved.predict_proba(images), reweighted(plain, np.array([3.0, 1.0])), atol=1e-6
    )
    assert recorded == {"decision": "val_macro_f1", "decision_covid_weight": 3.0}
    # and a summary from argmax, or from before the decision existed, keeps the predictor
    for summary in ({"decision": "argmax", "decision_covid_weight": 1.0}, {"test_accuracy": 0.9}):
        same, recorded = with_evaluated_decision(predictor, summary)
        assert same is predictor and recorded["decision"] == "argmax"
