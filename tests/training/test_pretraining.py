"""Self-supervised pre-training (cxr/training/pretraining.py): loss, pairs, a fit, the encoder."""

from __future__ import annotations

import json
import math

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from training_fixtures import fresh_copy, tiny_pretrain_params, write_prepared_project

from cxr.core.params import RunSettings, parse_params
from cxr.core.paths import ENCODER_WEIGHTS_FILE, PRETRAIN_RECORD_FILE, ProjectPaths
from cxr.core.tables import read_splits
from cxr.images.decoding import decode_file
from cxr.models.backbones import load_backbone
from cxr.models.classifier import build_classifier
from cxr.models.pixels import resize_batch
from cxr.models.pretrain_record import read_pretrain_record
from cxr.training.pretraining import (
    EXPERIMENT_SUFFIX,
    GroupLayout,
    NTXent,
    PairBatches,
    PretrainImages,
    ShuffleByEpoch,
    contrastive_loss,
    pretrain_backbone,
    pretraining_images,
)


def test_nt_xent_is_the_cross_entropy_of_the_scaled_cosine_similarities():
    # given two pairs whose two views point the same way (lengths differ: cosines ignore them),
    # the pairs orthogonal to each other
    agreeing = np.array([[[3.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 5.0]]], dtype="float32")
    # and the same views with the partners swapped, so each view matches the other pair's
    swapped = np.array([[[3.0, 0.0], [0.0, 5.0]], [[0.0, 2.0], [1.0, 0.0]]], dtype="float32")
    # when NT-Xent compares them at temperature 0.5 (similarities 1 and 0 become 2 and 0)
    matched = np.asarray(contrastive_loss(agreeing, 0.5))
    crossed = np.asarray(contrastive_loss(swapped, 0.5))
    # then each pair's loss is -log(e^2 / (e^2 + e^0)) when its own pair is the most similar,
    # -log(e^0 / (e^0 + e^2)) when the other pair is, the same in both directions
    assert matched == pytest.approx([math.log(1 + math.exp(-2))] * 2, rel=1e-5)
    assert crossed == pytest.approx([math.log(1 + math.exp(2))] * 2, rel=1e-5)


def test_a_partner_is_another_image_of_its_group_or_itself_when_alone():
    # given images of groups 0 (three images), 1 (two), 2 (one) and two of no group (-1)
    groups = np.array([0, 1, 0, -1, 2, 1, 0, -1])
    layout = GroupLayout.of(groups)
    # when partners are drawn for every image many times
    anchors = np.repeat(np.arange(len(groups)), 40)
    partners = layout.partners(anchors, np.random.default_rng(0))
    # then an image of a group of several is paired with each other image of it, never itself
    assert set(partners[anchors == 0]) == {2, 6}
    assert set(partners[anchors == 6]) == {0, 2}
    assert set(partners[anchors == 1]) == {5}
    # and an image alone (its own group, or none) with itself: two views of one image
    for alone in (3, 4, 7):
        assert set(partners[anchors == alone]) == {alone}
    assert layout.images_with_partner == 5


def test_pair_batches_read_images_and_partners_across_parts_and_drop_the_partial_batch():
    # given 7 images in two parts (each image filled with its position) in groups of two
    parts = (
        np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8),
        (np.arange(3, dtype=np.uint8) + 4)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8),
    )
    images = PretrainImages(parts, np.array([0, 0, 1, 1, 2, 2, -1]), {"train": 4, "extra:x": 3})
    by_group = PairBatches(images, 3, seed=5, by_group=True)
    by_image = PairBatches(images, 3, seed=5, by_group=False)
    # then an epoch holds two whole batches of 3 (the seventh image waits for another epoch)
    assert len(by_group) == 2
    seen = []
    for batch in range(len(by_group)):
        (first, second), targets = by_group[batch]
        anchors, partners = first[:, 0, 0, 0].astype(int), second[:, 0, 0, 0].astype(int)
        assert targets.shape == (3,)
        # and each partner is the other image of its group (image 6 has none: itself)
        assert [partner == (anchor ^ 1 if anchor < 6 else 6) for anchor, partner in zip(
            anchors, partners, strict=True
        )] == [True] * 3  # fmt: skip
        seen.extend(anchors)
        # and with positives by image, both views start from the same image
        (same_first, same_second), _ = by_image[batch]
        assert np.array_equal(same_first, same_second)
    assert len(set(seen)) == 6
    # and another epoch is another order, the same whenever it is read
    first_epoch = by_group[0][0][0]
    by_group.set_epoch(1)
    assert not np.array_equal(by_group[0][0][0], first_epoch)
    by_group.set_epoch(0)
    assert np.array_equal(by_group[0][0][0], first_epoch)


class ReadLog(PairBatches):
    """PairBatches that notes the epoch of every batch read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = []

    def __getitem__(self, batch):
        self.read.append((self.epoch, batch))
        return super().__getitem__(batch)


def test_fit_reads_each_epoch_in_its_own_order():
    # given pair batches of 8 tiny images and a two-input model that NT-Xent can train
    images = PretrainImages(
        (np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8),),
        np.full(8, -1),
        {"train": 8},
    )
    batches = ReadLog(images, 4, seed=1, by_group=False)
    inputs = [keras.Input((2, 2, 1)), keras.Input((2, 2, 1))]
    project = keras.layers.Dense(3)
    flatten = keras.layers.Flatten()
    outputs = keras.ops.stack([project(flatten(view)) for view in inputs], axis=1)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=NTXent(0.5))
    # when fit runs three epochs on them
    history = model.fit(
        batches, epochs=3, shuffle=False, verbose=0, callbacks=[ShuffleByEpoch(batches)]
    )
    # then epoch e read its two batches under order e (TensorFlow first reads two to learn
    # their shapes), and each epoch had a loss
    assert batches.read[-6:] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert len(history.history["loss"]) == 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project whose build and split outputs exist (pixel cache and split tables)."""
    return write_prepared_project(tmp_path_factory.mktemp("pretraining") / "prepared")


def test_extra_folders_are_decoded_as_build_decodes_them_and_all_adds_the_test_split(
    prepared, tmp_path
):
    # given the images table build writes (every image of the splits) and a folder of three
    # unlabelled radiographs of other shapes, beside a note and a hidden file
    params = tiny_pretrain_params(images="all", extra_folders=["unlabelled"])
    root = fresh_copy(prepared, tmp_path, params)
    paths = ProjectPaths(root)
    splits = read_splits(paths)
    pd.concat(splits.values()).to_parquet(paths.images_table, index=False)
    folder = root / "unlabelled"
    folder.mkdir()
    rng = np.random.default_rng(3)
    names = []
    for index, (height, width) in enumerate([(50, 40), (36, 64), (48, 48)]):
        names.append(f"study{index}.png")
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(
            folder / names[-1]
        )
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes((folder / names[0]).read_bytes())
    # when the pre-training images are gathered
    loaded = parse_params(params)
    images, digest = pretraining_images(loaded, paths, splits, tmp_path, RunSettings(workers=1))
    # then they are every split's images and the folder's three images (the note rejected)
    assert images.counts == {
        "train": 24, "val": 9, "test": 9, "unsplit": 0, "extra:unlabelled": 3,
    }  # fmt: skip
    assert len(images) == 45 and len(digest) == 16
    # and each of the folder's images is the build's pixels at the model's size, of no group
    build = loaded.build
    for offset, name in enumerate(names):
        square = decode_file(folder, name, build.max_pixels, build.cache_size, build.resize).pixels
        assert square is not None
        expected = resize_batch(square[np.newaxis, ..., np.newaxis], 32)[0]
        assert np.array_equal(images.read(np.array([42 + offset]))[0], expected)
    assert (images.groups[42:] == -1).all()


@pytest.fixture(scope="module")
def pretrained_project(prepared, tmp_path_factory, store):
    """A prepared project pre-trained by pretrain_backbone (compact_cnn, 32 px, 4 epochs)."""
    root = fresh_copy(prepared, tmp_path_factory.mktemp("pretrained"), tiny_pretrain_params())
    params = parse_params(tiny_pretrain_params())
    record = pretrain_backbone(params, RunSettings(), ProjectPaths(root), {})
    return root, params, record


@pytest.mark.slow
def test_a_short_pretraining_lowers_the_contrastive_loss_and_records_it(pretrained_project):
    root, params, record = pretrained_project
    paths = ProjectPaths(root)
    # then the loss of the last epoch is below the first's
    losses = record.loss_per_epoch
    assert len(losses) == record.epochs_run == 4 and losses[-1] < losses[0]
    # and pretrained/ holds the encoder and the record, which names what it learnt from
    assert sorted(p.name for p in paths.pretrained_dir.iterdir()) == sorted(
        [ENCODER_WEIGHTS_FILE, PRETRAIN_RECORD_FILE]
    )
    written = json.loads((paths.pretrained_dir / PRETRAIN_RECORD_FILE).read_text())
    assert read_pretrain_record(paths.pretrained_dir) == record
    assert written["images"] == {"train": 24, "val": 9} and written["model"] == "compact_cnn"
    assert written["image_size"] == 32 and written["positives"] == "group"
    # (the prepared project has no groups: each image is paired with itself)
    assert written["group_pairs"] == 0
    # and its MLflow run is in the pre-training experiment, with the loss per epoch
    run = mlflow.get_run(record.mlflow_run_id)
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == params.mlflow_experiment + EXPERIMENT_SUFFIX
    assert run.data.tags["kind"] == "pretrain" and run.data.params["pretrain.epochs"] == "4"
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [metric.step for metric in history] == [0, 1, 2, 3]


@pytest.mark.slow
def test_the_saved_encoder_starts_the_train_backbone_exactly(pretrained_project):
    root, params, _ = pretrained_project
    weights = ProjectPaths(root).pretrained_dir / ENCODER_WEIGHTS_FILE
    train = params.train
    # when train builds its classifier from the encoder, and from scratch
    built = {
        start: build_classifier(
            "compact_cnn", 32, ["a", "b", "c"], "none", train.head, train.augment, 1, start
        )
        for start in (weights, None)
    }
    model, backbone, pretrained = built[weights]
    # then the classifier's backbone holds every weight the encoder saved, and trains as from
    # scratch (not pretrained: one phase, BatchNorm learning)
    encoder, _ = load_backbone("compact_cnn", 32, "none")
    encoder.load_weights(weights)
    assert pretrained is False and model.get_layer("backbone") is backbone
    assert len(backbone.weights) == len(encoder.weights) > 10
    for started, saved in zip(backbone.get_weights(), encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(started, saved)
    # and a backbone that starts at random holds other weights
    scratch = built[None][1].get_weights()
    assert not any(
        np.array_equal(a, b)
        for a, b in zip(backbone.get_weights(), scratch, strict=True)
        if a.ndim > 1
    )
