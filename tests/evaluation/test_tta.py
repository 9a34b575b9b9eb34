import numpy as np
import pytest
from evaluation_fixtures import IMAGE_SIZE, NAMES
from sklearn.linear_model import LogisticRegression

from cxr.core.errors import PipelineError
from cxr.evaluation.tta import VIEW_COUNT, tta_views, with_tta
from cxr.models.loading import Predictor
from cxr.models.run_record import RunRecord


def sigmoid(value: float) -> float:
    return 1 / (1 + np.exp(-value))


def hand_set_predictor() -> Predictor:
    """A pixel logistic regression, weights set by hand: left half +, right half - (16 px)."""
    side = IMAGE_SIZE
    weights = np.where(np.arange(side) < side // 2, 1.0, -1.0) / (255 * side)
    model = LogisticRegression()
    model.classes_ = np.array([0, 1])
    model.coef_ = np.tile(weights, side).reshape(1, -1)  # row-major: column index = pixel % side
    model.intercept_ = np.zeros(1)
    model.n_features_in_ = side * side
    record = RunRecord(
        run_id="0" * 32,
        experiment_id="0",
        class_names=tuple(NAMES),
        model="pixel_logreg",
        kind="sklearn",
        image_size=side,
        cache_size=32,
        resize="pad",
        data_fingerprint="none",
    )
    return Predictor(model, record, "hand-set")


def test_views_are_the_image_its_mirror_and_four_black_filled_shifts():
    # given two distinct 16 px images with no zero pixel
    images = (np.arange(2 * 16 * 16).reshape(2, 16, 16, 1) % 250 + 1).astype(np.uint8)
    # when the TTA views are made
    views = tta_views(images)
    # then: the image, its left-right mirror, and shifts by 1 px (1/16 of the side)
    assert len(views) == VIEW_COUNT == 6
    assert all(view.shape == images.shape and view.dtype == np.uint8 for view in views)
    original, mirror, left, right, up, down = views
    np.testing.assert_array_equal(original, images)
    np.testing.assert_array_equal(mirror, images[:, :, ::-1])
    np.testing.assert_array_equal(left[:, :, :-1], images[:, :, 1:])
    np.testing.assert_array_equal(right[:, :, 1:], images[:, :, :-1])
    np.testing.assert_array_equal(up[:, :-1], images[:, 1:])
    np.testing.assert_array_equal(down[:, 1:], images[:, :-1])
    # the uncovered band is black, and no view is upside down
    assert not left[:, :, -1].any() and not right[:, :, 0].any()
    assert not up[:, -1].any() and not down[:, 0].any()
    assert not any(np.array_equal(view, images[:, ::-1]) for view in views)


def test_shift_is_a_sixteenth_of_the_side():
    # given 64 px images, when the views are made, then the shifts are 4 px
    images = np.full((1, 64, 64, 1), 9, np.uint8)
    left = tta_views(images)[2]
    assert not left[0, :, -4:].any() and (left[0, :, :-4] == 9).all()


def test_tta_probabilities_are_the_mean_over_the_views_computed_by_hand():
    # given a model scoring left-half minus right-half brightness, and an image bright on the left
    predictor = hand_set_predictor()
    image = np.zeros((1, 16, 16, 1), np.uint8)
    image[0, :, :8] = 255
    # when it predicts with TTA
    augmented, recorded = with_tta(predictor, enabled=True)
    probabilities = augmented.predict_proba(image)
    # then each view's logit follows from the bright pixels (16 per column, 1/16 per row):
    # image 8, mirror -8, left 7 (column 8 moves into the left half), right 7 - 1,
    # up and down 15 rows of 8 columns: 7.5
    logits = [8, -8, 7, 6, 7.5, 7.5]
    expected = np.mean([sigmoid(logit) for logit in logits])
    assert probabilities[0, 1] == pytest.approx(expected, abs=1e-6)
    assert probabilities[0].sum() == pytest.approx(1.0, abs=1e-6)
    # and it is the mean of the plain model over the views
    per_view = [predictor.predict_proba(view) for view in tta_views(image)]
    np.testing.assert_allclose(probabilities, np.mean(per_view, axis=0), atol=1e-6)
    assert recorded == {"tta": True, "tta_views": 6}


def test_mirror_and_image_average_out_for_a_mirror_antisymmetric_model():
    # given the same model, whose left and right weights are opposite, and any image
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 16, 16, 1)).astype(np.uint8)
    # when only the image and its mirror are scored by the plain model
    original, mirror = (hand_set_predictor().predict_proba(view) for view in tta_views(image)[:2])
    # then their mean is exactly undecided, whatever the image
    assert (original + mirror)[0, 1] / 2 == pytest.approx(0.5, abs=1e-6)


def test_tta_off_is_the_plain_predictor_and_shape_errors_still_name_the_input():
    # given a predictor
    predictor = hand_set_predictor()
    # when TTA is off, then it is returned unchanged: the same probabilities as before
    same, recorded = with_tta(predictor, enabled=False)
    assert same is predictor and recorded == {"tta": False, "tta_views": 1}
    # and with TTA on, wrong shapes fail as the plain predictor does
    augmented, _ = with_tta(predictor, enabled=True)
    with pytest.raises(PipelineError, match="the model takes"):
        augmented.predict_proba(np.zeros((2, 16, 16), np.uint8))
    assert augmented.predict_proba(np.zeros((0, 16, 16, 1), np.uint8)).shape == (0, 2)
