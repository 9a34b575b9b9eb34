import socket

import keras
import numpy as np
import pytest

from stages.backbones import BACKBONES, backbone_spec, load_backbone
from stages.classifier import (
    BackboneInput,
    adapt_batchnorm_for_scratch,
    build_augmentation,
    build_classifier,
    unfreeze_top_layers,
)
from stages.config import AugmentParams, HeadParams
from stages.errors import PipelineError

HEAD = HeadParams(pooling="avg", dense_units=8, dropout=0.2)
NO_AUGMENT = AugmentParams(horizontal_flip=False, rotation=0.0, zoom=0.0, contrast=0.0)
AUGMENT = AugmentParams(horizontal_flip=True, rotation=0.05, zoom=0.1, contrast=0.1)
CLASSES = ["covid", "normal", "viral_pneumonia"]


def imagenet_reachable() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
    except OSError:
        return False
    return True


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(PipelineError, match="unknown backbone; known: densenet121, efficientnetb0"):
        backbone_spec("alexnet")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_predicts_and_round_trips(tmp_path, name):
    # given a classifier on a tiny grayscale input without pretrained weights
    model, backbone, pretrained = build_classifier(name, 32, CLASSES, "none", HEAD, NO_AUGMENT, 1)
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1)).astype("uint8")
    # when it predicts, is saved and loaded again
    probabilities = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    # then it gives one probability row per image, unchanged by the round trip
    assert pretrained is False and backbone.name == "backbone"
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(restored.predict(images, verbose=0), probabilities, atol=1e-5)


def test_backbone_input_applies_each_backbones_own_preprocessing():
    gray = np.full((1, 4, 4, 1), 255.0, dtype="float32")
    mobilenet = keras.ops.convert_to_numpy(BackboneInput("mobilenetv2")(gray))
    vgg = keras.ops.convert_to_numpy(BackboneInput("vgg16")(gray))
    assert mobilenet.shape == (1, 4, 4, 3)
    assert np.allclose(mobilenet, 1.0)  # [-1, 1] scaling
    assert np.allclose(vgg[..., 0], 255 - 103.939, atol=1e-3)  # caffe: BGR mean subtraction


def test_weights_from_a_file_count_as_pretrained(tmp_path):
    backbone, _ = load_backbone("mobilenetv2", 32, "none")
    backbone.save_weights(tmp_path / "backbone.weights.h5")
    loaded, pretrained = load_backbone("mobilenetv2", 32, str(tmp_path / "backbone.weights.h5"))
    assert pretrained is True
    assert all(
        np.array_equal(a, b)
        for a, b in zip(backbone.get_weights(), loaded.get_weights(), strict=True)
    )


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="train.weights = .*no such file"):
        load_backbone("mobilenetv2", 32, str(tmp_path / "absent.h5"))


@pytest.mark.skipif(imagenet_reachable(), reason="ImageNet weights can be downloaded here")
def test_without_network_auto_falls_back_and_imagenet_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty weights cache
    with pytest.warns(UserWarning, match="training from scratch"):
        _, pretrained = load_backbone("mobilenetv2", 32, "auto")
    assert pretrained is False
    with pytest.raises(PipelineError, match="train.weights = 'imagenet'.*use auto or none"):
        load_backbone("mobilenetv2", 32, "imagenet")


def test_augmentation_is_off_at_inference_and_absent_when_disabled():
    assert build_augmentation(NO_AUGMENT, seed=1) is None
    augmentation = build_augmentation(AUGMENT, seed=1)
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    assert np.allclose(augmentation(images, training=False), images)
    assert not np.allclose(augmentation(images, training=True), images)


def test_fine_tuning_unfreezes_the_top_layers_but_keeps_batchnorm_frozen():
    backbone, _ = load_backbone("mobilenetv2", 32, "none")
    backbone.trainable = False
    unfrozen = unfreeze_top_layers(backbone, 10)
    top = backbone.layers[-10:]
    assert unfrozen == sum(not isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    assert all(not layer.trainable for layer in backbone.layers[:-10])
    assert all(
        not layer.trainable for layer in top if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_scratch_backbone_gets_fast_batchnorm_statistics():
    backbone, _ = load_backbone("mobilenetv2", 32, "none")
    assert adapt_batchnorm_for_scratch(backbone) > 0
    norms = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert all(layer.momentum == 0.9 for layer in norms)
