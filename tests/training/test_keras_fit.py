"""Targets and callbacks of a Keras fit (cxr/training/keras_fit.py)."""

from __future__ import annotations

import keras
import pytest
from training_fixtures import tiny_params

from cxr.core.params import parse_params
from cxr.training.keras_fit import Phase, one_hot_targets, phase_callbacks


@pytest.mark.parametrize(
    ("smoothing", "mixup", "expected"), [(0.0, 0.0, False), (0.1, 0.0, True), (0.0, 0.2, True)]
)
def test_targets_are_one_hot_for_smoothing_or_mixup(smoothing, mixup, expected):
    # given train params with label smoothing and MixUp as parametrised
    train = parse_params(tiny_params(label_smoothing=smoothing, mixup=mixup)).train
    # then the loss is fed one-hot targets exactly when either is on
    assert one_hot_targets(train) is expected


@pytest.mark.parametrize(
    ("schedule", "first_epoch", "judged_from"),
    [("cosine", 0, 3), ("cosine", 40, 43), ("constant", 40, 40)],
)
def test_early_stopping_does_not_judge_the_warm_up_epochs(
    tmp_path, schedule, first_epoch, judged_from
):
    # given a phase that starts at `first_epoch`, with the default 3 warm-up epochs of cosine
    train = parse_params(tiny_params(schedule=schedule, early_stopping_patience=2)).train
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    phase = Phase("scratch", 0.001, first_epoch, 10)
    # when its callbacks are made, then early stopping starts judging after the warm-up
    [stopping] = [
        callback
        for callback in phase_callbacks(train, phase, model, tmp_path, [])
        if isinstance(callback, keras.callbacks.EarlyStopping)
    ]
    assert stopping.start_from_epoch == judged_from
