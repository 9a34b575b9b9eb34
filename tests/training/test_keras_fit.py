"""MixUp on the training batches (cxr.training.keras_fit.mixup_batches, phase_batches)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from training_fixtures import tiny_params

from cxr.core.params import parse_params
from cxr.training.keras_fit import Phase, mixup_batches, one_hot_targets, phase_callbacks


def batches(images: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    """One batch of uint8 images and one-hot labels, as phase_batches hands them on."""
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(images))


def test_mixup_blends_each_image_and_its_target_with_one_weight():
    # given 8 images that are each one constant grey and their one-hot classes
    greys = np.arange(8, dtype=np.uint8) * 30
    images = np.broadcast_to(greys[:, None, None, None], (8, 4, 4, 1)).copy()
    labels = np.eye(2, dtype=np.float32)[np.arange(8) % 2]
    # when the batch goes through MixUp
    mixed_images, mixed_labels = next(iter(mixup_batches(batches(images, labels), 0.4, seed=3)))
    mixed_images, mixed_labels = mixed_images.numpy(), mixed_labels.numpy()
    # then every image stays one grey inside the range of the batch, targets still sum to 1,
    # and some images really are blends (a weight strictly between 0 and 1)
    assert mixed_images.dtype == np.float32 and mixed_images.shape == images.shape
    assert np.allclose(mixed_images, mixed_images[:, :1, :1, :])
    assert mixed_images.min() >= 0 and mixed_images.max() <= greys.max()
    assert np.allclose(mixed_labels.sum(axis=1), 1.0)
    assert ((mixed_labels > 0.01) & (mixed_labels < 0.99)).any()
    assert not np.allclose(mixed_images, images)


def test_mixup_draws_the_same_blends_for_the_same_seed():
    # given the same batch and seed twice
    images = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 1), dtype=np.uint8)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    # when each is mixed in a fresh pipeline
    first = next(iter(mixup_batches(batches(images, labels), 0.2, seed=5)))
    second = next(iter(mixup_batches(batches(images, labels), 0.2, seed=5)))
    # then the blends are identical
    assert np.array_equal(first[0].numpy(), second[0].numpy())
    assert np.array_equal(first[1].numpy(), second[1].numpy())


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
