"""Batches for fit (cxr/training/inputs.py): ArrayBatches for any backend, tf.data's MixUp.

ArrayBatches is numpy through and through, so its tests run on whichever backend the tests do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cxr.models.pixels import open_pixel_cache
from cxr.training.inputs import (
    ArrayBatches,
    FollowEpochs,
    Shards,
    StreamedPixels,
    fit_batches,
    fit_class_weight,
    mixup_batches,
    read_images,
)

IMAGES = 13  # two full batches of 5 and one of 3


def pixels(count: int = IMAGES) -> np.ndarray:
    """Images that are each one grey, the grey their index: a row says which image it is."""
    greys = np.arange(count, dtype=np.uint8) * 7
    return np.broadcast_to(greys[:, None, None, None], (count, 4, 4, 1)).copy()


def image_ids(images: np.ndarray) -> list[int]:
    """Which image each row is (see pixels)."""
    return (np.asarray(images)[:, 0, 0, 0] / 7).round().astype(int).tolist()


def epoch(batches: ArrayBatches, number: int) -> list[tuple[np.ndarray, ...]]:
    """Every batch of epoch `number`, read last to first (as threads may read them)."""
    batches.set_epoch(number)
    return [batches[index] for index in reversed(range(len(batches)))][::-1]


def test_a_seeded_epoch_is_a_shuffle_of_every_image_fixed_by_seed_and_epoch() -> None:
    # Given 13 labelled images in batches of 5, seeded
    labels = np.arange(IMAGES) % 3
    batches = ArrayBatches(pixels(), labels, 5, shuffle_seed=3)

    # When two epochs are read, and the first again in another instance
    first, second = epoch(batches, 0), epoch(batches, 1)
    again = epoch(ArrayBatches(pixels(), labels, 5, shuffle_seed=3), 0)

    # Then each epoch holds every image once with its own label, in an order set by the seed
    # and the epoch alone: another epoch, another order; the same epoch, the same batches
    assert [len(batch[0]) for batch in first] == [5, 5, 3]
    for batches_of_epoch in (first, second):
        ids = [i for images, _ in batches_of_epoch for i in image_ids(images)]
        assert sorted(ids) == list(range(IMAGES))
        assert all(np.array_equal(y, labels[image_ids(x)]) for x, y in batches_of_epoch)
    assert image_ids(first[0][0]) != image_ids(second[0][0])
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    # unseeded (validation): in order, every epoch
    assert image_ids(ArrayBatches(pixels(), labels, 5)[1][0]) == [5, 6, 7, 8, 9]


def test_streamed_pixels_give_the_in_memory_batches(tmp_path) -> None:
    # Given the same images in memory and left in a pixel cache, read by three threads
    np.save(tmp_path / "pixels.npy", pixels()[..., 0])
    index = np.arange(IMAGES)
    streamed = StreamedPixels(tmp_path / "pixels.npy", open_pixel_cache(tmp_path / "pixels.npy"),
                              index, 4, readers=3)  # fmt: skip
    labels = np.arange(IMAGES) % 3

    # When both are batched with one seed
    held = ArrayBatches(pixels(), labels, 5, 8)
    read = ArrayBatches(streamed, labels, 5, 8)

    # Then every batch is the same, and the streamed ones read ahead on three threads
    for a, b in zip(epoch(held, 2), epoch(read, 2), strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert read.workers == 3 and held.workers == 1
    assert np.array_equal(read_images(streamed, np.array([4, 1])), pixels()[[4, 1]])


def test_two_processes_yield_halves_of_the_batches_of_one_padded_with_zero_weights() -> None:
    # Given 13 images, batches of 5, class weights, split over two devices in two processes
    labels = np.arange(IMAGES) % 3
    weights = {0: 1.0, 1: 2.0, 2: 0.5}

    def share(process: int, processes: int) -> list[tuple[np.ndarray, ...]]:
        shards = Shards(process, processes, devices=2)
        return epoch(ArrayBatches(pixels(), labels, 5, 4, class_weight=weights, shards=shards), 1)

    alone, first, second = share(0, 1), share(0, 2), share(1, 2)
    unsplit = epoch(ArrayBatches(pixels(), labels, 5, 4), 1)

    # Then one process's batches (5 and 3 padded to 6 and 4) are the two halves side by side,
    # the padding rows repeat the batch's first images with weight 0
    assert [len(batch[0]) for batch in alone] == [6, 6, 4]
    assert [len(batch[0]) for batch in first] == [3, 3, 2]
    for whole, half_0, half_1, plain in zip(alone, first, second, unsplit, strict=True):
        for part in range(3):
            assert np.array_equal(whole[part], np.concatenate([half_0[part], half_1[part]]))
        real = len(plain[0])
        assert np.array_equal(whole[0][:real], plain[0]) and (whole[2][real:] == 0).all()
        assert np.array_equal(whole[0][real:], plain[0][: len(whole[0]) - real])
    # and the real rows weigh their class weight times padded / real rows (16 / 13), so the
    # weighted epoch loss Keras computes is the mean over the real images
    rows = np.concatenate([batch[1] for batch in alone])
    given = np.concatenate([batch[2] for batch in alone])
    padded = given == 0
    expected = np.array([weights[int(label)] for label in rows]) * 16 / 13
    np.testing.assert_allclose(given[~padded], expected[~padded], rtol=1e-6)
    assert padded.sum() == 3
    # each process knows which of its rows are images: 8 and 5 of the 13
    real = [ArrayBatches(pixels(), labels, 5, shards=Shards(p, 2, 2)).real_rows() for p in (0, 1)]
    assert [rows.sum() for rows in real] == [8, 5]
    # fit gets the class weights only where the batches do not carry them already
    assert fit_class_weight(ArrayBatches(pixels(), labels, 5, 4), weights) == weights
    assert (
        fit_class_weight(ArrayBatches(pixels(), labels, 5, shards=Shards(0, 1, 2)), weights) is None
    )


def test_mixup_blends_one_hot_targets_the_same_way_on_one_process_or_two() -> None:
    # Given one-hot targets and MixUp, on one device and on two processes
    labels = np.arange(IMAGES) % 3

    def batch(process: int, processes: int, devices: int) -> tuple[np.ndarray, ...]:
        shards = Shards(process, processes, devices)
        batches = ArrayBatches(pixels(), labels, 5, 9, depth=3, mixup=0.4, shards=shards)
        batches.set_epoch(2)
        return batches[0]

    images, targets = batch(0, 1, 1)
    halves = [batch(0, 2, 2), batch(1, 2, 2)]

    # Then images become float32 blends of two greys, targets rows of weights summing to 1,
    # some truly blended, and the two processes' rows are those of the one-process batch
    assert images.dtype == np.float32 and targets.shape == (5, 3)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert ((targets > 0.01) & (targets < 0.99)).any()
    together = np.concatenate([halves[0][0], halves[1][0]])
    np.testing.assert_allclose(together[:5], images)
    with pytest.raises(ValueError, match="one-hot"):
        fit_batches(pixels(), labels, 5, 1, mixup=0.2)


def test_fit_hands_the_batches_the_epoch_counted_from_the_phase() -> None:
    # Given batches of a phase whose first epoch is 3 (a fine-tuning phase, or a resumed one)
    batches = ArrayBatches(pixels(), np.zeros(IMAGES, int), 5, 1)
    follow = FollowEpochs(batches, first_epoch=3)
    # When fit begins its global epoch 5, Then the batches shuffle as the phase's epoch 2
    follow.on_epoch_begin(5)
    assert batches.epoch == 2


# tf.data's MixUp (the TensorFlow backend's batches)


def tf_batches(images: np.ndarray, labels: np.ndarray) -> Any:
    """One batch of uint8 images and one-hot labels, as phase_batches hands them on."""
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(images))


def test_tf_mixup_blends_each_image_and_its_target_with_one_weight():
    # given 8 images that are each one constant grey and their one-hot classes
    greys = np.arange(8, dtype=np.uint8) * 30
    images = np.broadcast_to(greys[:, None, None, None], (8, 4, 4, 1)).copy()
    labels = np.eye(2, dtype=np.float32)[np.arange(8) % 2]
    # when the batch goes through MixUp
    mixed_images, mixed_labels = next(iter(mixup_batches(tf_batches(images, labels), 0.4, seed=3)))
    mixed_images, mixed_labels = mixed_images.numpy(), mixed_labels.numpy()
    # then every image stays one grey inside the range of the batch, targets still sum to 1,
    # and some images really are blends (a weight strictly between 0 and 1)
    assert mixed_images.dtype == np.float32 and mixed_images.shape == images.shape
    assert np.allclose(mixed_images, mixed_images[:, :1, :1, :])
    assert mixed_images.min() >= 0 and mixed_images.max() <= greys.max()
    assert np.allclose(mixed_labels.sum(axis=1), 1.0)
    assert ((mixed_labels > 0.01) & (mixed_labels < 0.99)).any()
    assert not np.allclose(mixed_images, images)


def test_tf_mixup_draws_the_same_blends_for_the_same_seed():
    # given the same batch and seed twice
    images = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 1), dtype=np.uint8)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    # when each is mixed in a fresh pipeline
    first = next(iter(mixup_batches(tf_batches(images, labels), 0.2, seed=5)))
    second = next(iter(mixup_batches(tf_batches(images, labels), 0.2, seed=5)))
    # then the blends are identical
    assert np.array_equal(first[0].numpy(), second[0].numpy())
    assert np.array_equal(first[1].numpy(), second[1].numpy())
