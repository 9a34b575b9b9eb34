import socket

import keras
import numpy as np
import pytest

from cxr.core.errors import PipelineError
from cxr.core.params import AugmentParams, HeadParams
from cxr.core.registry import BACKBONES, backbone_spec
from cxr.models.backbones import load_backbone
from cxr.models.classifier import (
    BackboneInput,
    adapt_batchnorm_for_scratch,
    build_augmentation,
    build_classifier,
    classifier_parameters,
    unfreeze_top_layers,
    weight_layers,
)

HEAD = HeadParams(
    pooling="avg", dense_units=[8], batch_norm=True, dropout=0.2, l2=1e-4, googlenet_aux=False
)
NO_AUGMENT = AugmentParams(
    horizontal_flip=False, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0, brightness=0.0
)
AUGMENT = AugmentParams(
    horizontal_flip=True, rotation=0.05, zoom=0.1, translation=0.1, contrast=0.1, brightness=0.1
)
CLASSES = ["covid", "normal", "viral_pneumonia"]


def head(**changes) -> HeadParams:
    values = {
        "pooling": "avg",
        "dense_units": [],
        "batch_norm": False,
        "dropout": 0.0,
        "l2": 0.0,
        "googlenet_aux": False,
    }
    return HeadParams(**{**values, **changes})


def imagenet_reachable() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
    except OSError:
        return False
    return True


def head_layers(model: keras.Model) -> list[tuple[str, str]]:
    names = [layer.name for layer in model.layers]
    return [
        (layer.name, type(layer).__name__) for layer in model.layers[names.index("head_pool") :]
    ]


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(
        PipelineError, match="unknown model; known: alexnet, compact_cnn, convnext_tiny, dense"
    ):
        backbone_spec("resnet9000")


# The largest (65-85M parameters, about 1,000 layers to build); they still run in `make test`.
SLOW_BACKBONES = {"efficientnetb7", "nasnetlarge"}
# Backbones of one keras.applications module are one builder at other widths and depths: the
# same layer classes go through training and serialisation, so the smallest of each family
# trains a step and round-trips for all of them; every backbone still builds and predicts.
FAMILY_SMALLEST = {
    "densenet": "densenet121",
    "efficientnet": "efficientnetb0",
    "efficientnet_v2": "efficientnetv2b0",
    "mobilenet_v3": "mobilenetv3small",
    "nasnet": "nasnetmobile",
    "resnet": "resnet50",
}
ROUND_TRIPPED = sorted(
    name
    for name, spec in BACKBONES.items()
    if spec.application not in FAMILY_SMALLEST or FAMILY_SMALLEST[spec.application] == name
)


def backbone_params(names: list[str]) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_BACKBONES else name
            for name in names]  # fmt: skip


def tiny_classifier(name: str) -> tuple[keras.Model, keras.Model, bool, np.ndarray]:
    """`name`'s classifier at the smallest input it takes, no pretrained weights; two images."""
    size = backbone_spec(name).min_image_size
    model, backbone, pretrained = build_classifier(name, size, CLASSES, "none", HEAD, AUGMENT, 1)
    images = np.random.default_rng(0).integers(0, 255, (2, size, size, 1)).astype("uint8")
    return model, backbone, pretrained, images


def test_every_keras_family_with_several_backbones_names_its_smallest():
    families: dict[str, set[str]] = {}
    for name, spec in BACKBONES.items():
        if spec.application is not None:
            families.setdefault(spec.application, set()).add(name)
    assert {family for family, names in families.items() if len(names) > 1} == set(FAMILY_SMALLEST)
    assert all(FAMILY_SMALLEST[family] in families[family] for family in FAMILY_SMALLEST)


@pytest.mark.parametrize("name", backbone_params(sorted(BACKBONES)))
def test_every_backbone_builds_and_gives_one_probability_row_per_image(name):
    # given a classifier at the smallest input the backbone takes, without pretrained weights
    model, backbone, pretrained, images = tiny_classifier(name)
    # when it predicts two images
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    # then it gives one probability row per image, through the layers every model has
    assert pretrained is False and backbone.name == "backbone"
    assert [model.layers[index].name for index in (0, 1, 2, 3, -1)] == [
        "image",
        "augmentation",
        "backbone_input",
        "backbone",
        "predictions",
    ]
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("name", backbone_params(ROUND_TRIPPED))
def test_each_backbone_family_trains_a_step_and_round_trips(tmp_path, name):
    # given a classifier at the smallest input the backbone takes, without pretrained weights
    model, _, _, images = tiny_classifier(name)
    # Eagerly: tracing a graph of hundreds of layers costs 10-80 s per model on two cores and
    # tests TensorFlow's tracer, not the model (graph-mode fit is tested in test_train). SGD has
    # no slot variables to create, save and load; clipped, because BatchNorm over two random
    # images on 1x1 feature maps gives gradients that would blow the weights up in one step.
    optimizer = keras.optimizers.SGD(learning_rate=0.01, clipnorm=1.0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", run_eagerly=True)
    # when it trains one step, is saved and loaded again
    loss = model.train_on_batch(images, np.array([0, 2]))
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras", compile=False)
    # then its loss is finite and its probabilities are unchanged by the round trip
    assert np.isfinite(loss)
    restored_probabilities = keras.ops.convert_to_numpy(restored(images, training=False))
    assert np.allclose(restored_probabilities, probabilities, atol=1e-5)


@pytest.mark.parametrize(("name", "minimum"), [("inceptionv3", 75), ("xception", 71)])
def test_below_the_minimum_input_is_a_one_line_error(name, minimum):
    with pytest.raises(
        PipelineError, match=rf"^train.image_size = 64: {name} needs at least {minimum} px"
    ):
        build_classifier(name, 64, CLASSES, "none", HEAD, NO_AUGMENT, 1)


def test_backbone_input_applies_each_backbones_own_preprocessing():
    gray = np.full((1, 4, 4, 1), 255.0, dtype="float32")
    mobilenet = keras.ops.convert_to_numpy(BackboneInput("mobilenetv2")(gray))
    vgg = keras.ops.convert_to_numpy(BackboneInput("vgg16")(gray))
    densenet = keras.ops.convert_to_numpy(BackboneInput("densenet121")(gray))
    # these rescale inside the model (include_preprocessing), so pixels pass through
    efficientnet = keras.ops.convert_to_numpy(BackboneInput("efficientnetv2b0")(gray))
    assert mobilenet.shape == (1, 4, 4, 3)
    assert np.allclose(mobilenet, 1.0)  # [-1, 1] scaling
    assert np.allclose(vgg[..., 0], 255 - 103.939, atol=1e-3)  # caffe: BGR mean subtraction
    assert np.allclose(densenet[..., 0], (1 - 0.485) / 0.229, atol=1e-3)  # torch: ImageNet std
    assert np.allclose(efficientnet, 255.0)


@pytest.mark.parametrize(
    ("seed_head", "expected"),
    [
        # seeds 000 / 001: VGG16, Flatten, Dense 1024, Dropout 0.5
        (
            head(pooling="flatten", dense_units=[1024], dropout=0.5),
            [
                ("head_pool", "Flatten"),
                ("head_dense_1", "Dense"),
                ("head_dropout_1", "Dropout"),
                ("predictions", "Dense"),
            ],
        ),
        # seed 004: Dense 512 -> 256, each with BatchNorm and Dropout
        (
            head(dense_units=[512, 256], batch_norm=True, dropout=0.3),
            [
                ("head_pool", "GlobalAveragePooling2D"),
                ("head_dense_1", "Dense"),
                ("head_bn_1", "BatchNormalization"),
                ("head_dropout_1", "Dropout"),
                ("head_dense_2", "Dense"),
                ("head_bn_2", "BatchNormalization"),
                ("head_dropout_2", "Dropout"),
                ("predictions", "Dense"),
            ],
        ),
        # GoogLeNet's own: average pooling, 40% dropout, linear + softmax
        (
            head(dropout=0.4),
            [
                ("head_pool", "GlobalAveragePooling2D"),
                ("head_dropout", "Dropout"),
                ("predictions", "Dense"),
            ],
        ),
        (
            head(pooling="max"),
            [("head_pool", "GlobalMaxPooling2D"), ("predictions", "Dense")],
        ),
    ],
    ids=["vgg_seed", "two_dense_bn", "dropout_only", "max_pool_linear"],
)
def test_head_from_params_expresses_the_seeds_heads(seed_head, expected):
    model, _, _ = build_classifier("mobilenetv2", 32, CLASSES, "none", seed_head, NO_AUGMENT, 1)
    assert head_layers(model) == expected
    widths = [layer.units for layer in model.layers if layer.name.startswith("head_dense_")]
    assert widths == seed_head.dense_units
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"


def test_head_l2_regularises_every_head_dense_layer():
    model, _, _ = build_classifier(
        "mobilenetv2", 32, CLASSES, "none", head(dense_units=[16, 8], l2=0.01), NO_AUGMENT, 1
    )
    regularised = [
        layer.name for layer in model.layers if getattr(layer, "kernel_regularizer", None)
    ]
    assert regularised == ["head_dense_1", "head_dense_2", "predictions"]
    model(np.zeros((1, 32, 32, 1), "float32"))
    assert len(model.losses) == 3


@pytest.mark.parametrize(
    ("raw", "units"), [(128, [128]), (0, []), ([512, 256], [512, 256]), ([], [])]
)
def test_dense_units_take_a_list_or_one_width(raw, units):
    values = head().model_dump()
    assert HeadParams.model_validate({**values, "dense_units": raw}).dense_units == units


@pytest.mark.parametrize("raw", [[512, 0], [-1], True, "128"])
def test_dense_units_reject_non_positive_or_non_integer_widths(raw):
    with pytest.raises(ValueError, match="dense_units"):
        HeadParams.model_validate({**head().model_dump(), "dense_units": raw})


def test_augmentation_is_off_at_inference_and_absent_when_disabled():
    assert build_augmentation(NO_AUGMENT, seed=1) is None
    augmentation = build_augmentation(AUGMENT, seed=1)
    assert [type(layer).__name__ for layer in augmentation.layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
    ]
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    assert np.allclose(augmentation(images, training=False), images)
    assert not np.allclose(augmentation(images, training=True), images)


def test_brightness_shifts_within_the_pixel_range():
    only_brightness = NO_AUGMENT.model_copy(update={"brightness": 0.5})
    augmentation = build_augmentation(only_brightness, seed=3)
    images = np.full((8, 4, 4, 1), 128.0, dtype="float32")
    shifted = keras.ops.convert_to_numpy(augmentation(images, training=True))
    # a shift of up to half the 0-255 range, clipped to it
    assert shifted.min() >= 0 and shifted.max() <= 255
    assert np.ptp(shifted[:, 0, 0, 0]) > 10


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


def test_parameter_count_for_the_model_table():
    # backbone + a softmax on 1280 average-pooled MobileNetV2 features
    assert classifier_parameters("mobilenetv2", 64, 3) == 2_257_984 + 1280 * 3 + 3


def test_depth_counts_the_convolutions_and_dense_layers_of_backbone_and_head():
    # given VGG16 (13 convolutions) with no hidden head layer, and with two
    for hidden, depth in (([], 14), ([16, 8], 16)):
        model, _, _ = build_classifier(
            "vgg16", 32, CLASSES, "none", head(dense_units=hidden), NO_AUGMENT, 0
        )
        # then its depth is those plus the head's dense layers, the softmax included
        assert weight_layers(model) == depth
    # and depthwise convolutions count as layers too (MobileNetV2: 52 convolutions + softmax)
    model, _, _ = build_classifier("mobilenetv2", 32, CLASSES, "none", head(), NO_AUGMENT, 0)
    assert weight_layers(model) == 53
