import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from cxr.evaluation.statistics import (
    bootstrap_intervals,
    calibration_bins,
    expected_calibration_error,
    mcnemar_exact,
)


def test_bootstrap_interval_covers_a_known_accuracy_about_95_percent_of_the_time():
    # given many test sets of 80 images each classified right with probability 0.8
    truth, size, trials = 0.8, 80, 150
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(trials):
        correct = rng.random(size) < truth
        # when each gets a seeded 95% percentile-bootstrap interval of its accuracy
        low, high = bootstrap_intervals(lambda i, c=correct: c[i].mean(), size, 300, seed=trial)
        covered += int(low[0] <= truth <= high[0])
    # then about 95% of the intervals hold the true accuracy (binomial spread of 150 trials)
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_is_seeded_and_returns_one_interval_per_figure():
    values = np.linspace(0, 1, 40)

    def statistic(indices):
        return np.array([values[indices].mean(), values[indices].max()])

    first = bootstrap_intervals(statistic, 40, 200, seed=5)
    again = bootstrap_intervals(statistic, 40, 200, seed=5)
    other = bootstrap_intervals(statistic, 40, 200, seed=6)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (2,) and np.all(first[0] <= first[1])
    assert first[0][0] < values.mean() < first[1][0]


def test_resamples_where_a_figure_is_undefined_are_left_out_of_its_interval():
    labels = np.array([0] * 18 + [1] * 2)  # many resamples miss class 1 entirely

    def statistic(indices):
        sample = labels[indices]
        return np.array([sample.mean(), np.nan if sample.min() == sample.max() else 1.0])

    low, high = bootstrap_intervals(statistic, len(labels), 300, seed=1)
    assert low[1] == high[1] == 1.0
    assert 0.0 <= low[0] < high[0] <= 0.3

    always_undefined = bootstrap_intervals(lambda i: np.array([np.nan]), 10, 50, seed=1)
    assert np.isnan(always_undefined[0][0]) and np.isnan(always_undefined[1][0])


def test_mcnemar_exact_on_a_constructed_pair():
    # given 10 images only model A gets right, 2 only B, and 30 both get right
    a = np.array([True] * 10 + [False] * 2 + [True] * 30)
    b = np.array([False] * 10 + [True] * 2 + [True] * 30)
    # then p = 2 * P(Binomial(12, 1/2) <= 2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(a, b) == pytest.approx(158 / 4096)
    assert mcnemar_exact(b, a) == pytest.approx(158 / 4096)
    assert mcnemar_exact(a, a) == 1.0  # no discordant images: no evidence of a difference
    # 1 vs 1 discordant images is a coin toss
    assert mcnemar_exact([True, False], [False, True]) == pytest.approx(1.0)


def test_calibration_table_and_ece_by_hand():
    confidence = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 1, 1, 0, 1, 0])
    table = calibration_bins(confidence, correct, bins=10)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10)
    assert table["accuracy"].tolist() == pytest.approx(accuracy.tolist())
    assert table["confidence"].tolist() == pytest.approx(mean_confidence.tolist())
    assert table["images"].tolist() == [2, 4]
    # bin (0.5, 0.6]: 2 images, 0.55 vs 0.5; bin (0.9, 1.0]: 4 images, 0.95 vs 0.75
    expected = (2 * abs(0.55 - 0.5) + 4 * abs(0.95 - 0.75)) / 6
    assert expected_calibration_error(confidence, correct, 10) == pytest.approx(expected)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1]), 5) == 0.0
    assert np.isnan(expected_calibration_error(np.array([]), np.array([]), 5))
