import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.params import AugmentParams, HeadParams, parse_params
from cxr.core.registry import BACKBONES, backbone_spec, wide_resnet_shape
from cxr.models.architectures import build_architecture
from cxr.models.backbones import load_backbone
from cxr.models.classifier import (
    BackboneInput,
    auxiliary_targets,
    build_classifier,
    googlenet_training_losses,
    googlenet_training_model,
)

NO_AUGMENT = AugmentParams(
    horizontal_flip=False, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0, brightness=0.0
)


def head(
    pooling: str = "avg", dense_units: list[int] | None = None, dropout: float = 0.0, aux=False
) -> HeadParams:
    return HeadParams(
        pooling=pooling,
        dense_units=dense_units or [],
        batch_norm=False,
        dropout=dropout,
        l2=0.0,
        googlenet_aux=aux,
    )


def trainable_parameters(model: keras.Model) -> int:
    # Papers (and Torch) count weights, not BatchNorm's moving statistics.
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


# The papers' classifiers: (model, input size, classes, head as in the paper, published
# parameter count, relative tolerance).
PUBLISHED_SIZES = [
    # He et al. 2015: 11.7M / 21.8M (the count of torchvision's reference models, which ours
    # match to the parameter: 11,689,512 / 21,797,672).
    ("resnet18", 224, 1000, head(), 11.7e6, 0.01),
    ("resnet34", 224, 1000, head(), 21.8e6, 0.01),
    # Zagoruyko & Komodakis 2016, table on CIFAR-10: WRN-28-10 36.5M, WRN-16-8 11.0M,
    # WRN-40-4 8.9M.
    ("wrn_28_10", 32, 10, head(), 36.5e6, 0.01),
    ("wrn_16_8", 32, 10, head(), 11.0e6, 0.01),
    ("wrn_40_4", 32, 10, head(), 8.9e6, 0.01),
    # Szegedy et al. 2014, table 1: about 6.8M (the table's per-layer figures are rounded and
    # leave out biases; with true 5x5 convolutions and BatchNorm we count 7.01M).
    ("googlenet", 224, 1000, head(dropout=0.4), 6.8e6, 0.05),
    # Krizhevsky et al. 2012: 60,965,224 with the two-GPU grouping of conv2/4/5; the single
    # tower built here has 62.38M (fc6 and fc7 of 4096 units are the head).
    ("alexnet", 227, 1000, head("flatten", [4096, 4096], 0.5), 60_965_224, 0.03),
]


@pytest.mark.parametrize(
    ("name", "image_size", "class_count", "paper_head", "published", "tolerance"),
    PUBLISHED_SIZES,
    ids=[case[0] for case in PUBLISHED_SIZES],
)
def test_parameter_count_matches_the_paper(
    name, image_size, class_count, paper_head, published, tolerance
):
    # given the paper's classifier: the backbone built here and the paper's head as params
    classes = [str(index) for index in range(class_count)]
    model, _, _ = build_classifier(
        name, image_size, classes, "none", paper_head, NO_AUGMENT, seed=1
    )
    # then its weights number what the paper says, within the stated tolerance
    assert trainable_parameters(model) == pytest.approx(published, rel=tolerance)


def test_resnets_match_the_reference_implementation_exactly():
    for name, reference in (("resnet18", 11_689_512), ("resnet34", 21_797_672)):
        classes = [str(index) for index in range(1000)]
        model, _, _ = build_classifier(name, 224, classes, "none", head(), NO_AUGMENT, seed=1)
        assert trainable_parameters(model) == reference


@pytest.mark.parametrize(
    ("name", "image_size", "feature_map"),
    [
        ("alexnet", 227, (6, 6, 256)),
        ("googlenet", 224, (7, 7, 1024)),
        ("resnet18", 224, (7, 7, 512)),
        ("resnet34", 224, (7, 7, 512)),
        ("wrn_16_4", 32, (8, 8, 256)),
        ("compact_cnn", 128, (8, 8, 256)),
    ],
)
def test_feature_maps_have_the_papers_shape(name, image_size, feature_map):
    backbone = build_architecture(name, image_size)
    assert backbone.name == "backbone"
    assert tuple(backbone.output.shape[1:]) == feature_map


def test_scratch_models_are_listed_without_imagenet_weights():
    for name in ("alexnet", "googlenet", "resnet18", "resnet34", "wrn_16_4", "wrn_28_10"):
        assert not BACKBONES[name].imagenet_weights
    assert BACKBONES["vgg16"].imagenet_weights


@pytest.mark.parametrize(("name", "shape"), [("wrn_22_2", (22, 2)), ("wrn_10_1", (10, 1))])
def test_any_valid_wide_resnet_name_is_a_backbone(name, shape):
    assert wide_resnet_shape(name) == shape
    assert not backbone_spec(name).imagenet_weights
    backbone, pretrained = load_backbone(name, 32, "auto")
    assert pretrained is False and backbone.output.shape[-1] == 64 * shape[1]


@pytest.mark.parametrize("name", ["wrn_15_2", "wrn_4_2", "wrn_16_0"])
def test_a_wide_resnet_depth_must_be_6n_plus_4(name):
    with pytest.raises(PipelineError, match=rf"model = '{name}': a wide ResNet is .*6n \+ 4"):
        backbone_spec(name)


def test_params_accept_a_wide_resnet_beyond_the_listed_ones(valid_params_dict):
    valid_params_dict["model"] = "wrn_22_2"
    assert parse_params(valid_params_dict).model == "wrn_22_2"
    valid_params_dict["model"] = "wrn_21_2"
    with pytest.raises(ParamsError, match=r"model = 'wrn_21_2': a wide ResNet is wrn_<depth>"):
        parse_params(valid_params_dict)


def test_alexnet_below_its_minimum_input_is_a_one_line_error():
    with pytest.raises(PipelineError, match=r"^train.image_size = 64: alexnet needs at least 67"):
        load_backbone("alexnet", 64, "none")


def test_scratch_models_have_no_imagenet_weights_to_ask_for():
    with pytest.raises(PipelineError, match="no ImageNet weights exist for resnet18"):
        load_backbone("resnet18", 32, "imagenet")


def test_scratch_weights_from_a_file_count_as_pretrained(tmp_path):
    backbone, _ = load_backbone("resnet18", 32, "none")
    backbone.save_weights(tmp_path / "resnet18.weights.h5")
    loaded, pretrained = load_backbone("resnet18", 32, str(tmp_path / "resnet18.weights.h5"))
    assert pretrained is True
    assert all(
        np.array_equal(a, b)
        for a, b in zip(backbone.get_weights(), loaded.get_weights(), strict=True)
    )
    with pytest.raises(PipelineError, match="not weights of resnet34 at 32 px"):
        load_backbone("resnet34", 32, str(tmp_path / "resnet18.weights.h5"))


def test_scratch_models_see_pixels_rescaled_to_unit_range():
    gray = np.array([0.0, 51.0, 255.0], dtype="float32").reshape(1, 1, 3, 1)
    rgb = keras.ops.convert_to_numpy(BackboneInput("googlenet")(gray))
    assert rgb.shape == (1, 1, 3, 3)
    assert np.allclose(rgb[0, 0, :, 0], [0.0, 0.2, 1.0]) and np.allclose(rgb[..., 2], rgb[..., 0])


def test_scratch_batchnorm_follows_the_weights_quickly():
    backbone = build_architecture("resnet18", 32)
    norms = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and all(layer.momentum == 0.9 for layer in norms)


@pytest.mark.slow  # a graph-mode fit of GoogLeNet
def test_googlenet_auxiliary_classifiers_train_the_saved_model(tmp_path):
    # given GoogLeNet with auxiliary classifiers, at the smallest size they accept
    classes = ["covid", "normal", "viral_pneumonia"]
    aux_head = head(dropout=0.4, aux=True)
    model, backbone, _ = build_classifier("googlenet", 65, classes, "none", aux_head, NO_AUGMENT, 1)
    training = googlenet_training_model(model, "googlenet", seed=1)
    training.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, clipnorm=1.0),
        metrics={"predictions": ["accuracy"]},
        jit_compile=False,  # as train compiles on a CPU: XLA would spend its time compiling
        **googlenet_training_losses(),
    )
    images = np.random.default_rng(0).integers(0, 255, (2, 65, 65, 1)).astype("uint8")
    labels = np.array([0, 2])
    stem_before = backbone.get_layer("conv1_conv").get_weights()[0].copy()
    # when the training variant takes one step on a dataset of auxiliary targets
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2).map(auxiliary_targets)
    history = training.fit(dataset, epochs=1, verbose=0).history
    # then the classifier's own weights moved, it keeps one output, and it round-trips
    assert set(training.output) == {"predictions", "aux_1", "aux_2"}
    assert {"aux_1_loss", "aux_2_loss", "predictions_accuracy"} <= set(history)
    assert not np.array_equal(backbone.get_layer("conv1_conv").get_weights()[0], stem_before)
    assert model.output.shape == (None, 3)
    assert np.allclose(
        training.predict(images, verbose=0)["predictions"], model.predict(images, verbose=0)
    )
    model.save(tmp_path / "googlenet.keras")
    restored = keras.models.load_model(tmp_path / "googlenet.keras")
    assert np.allclose(restored.predict(images, verbose=0), model.predict(images, verbose=0))


def test_auxiliary_classifiers_only_for_googlenet_at_65_px_or_more():
    classes = ["a", "b"]
    with pytest.raises(PipelineError, match="only googlenet has auxiliary classifiers"):
        build_classifier("resnet18", 64, classes, "none", head(aux=True), NO_AUGMENT, 1)
    with pytest.raises(PipelineError, match="^train.head.googlenet_aux = true: GoogLeNet's aux"):
        build_classifier("googlenet", 64, classes, "none", head(aux=True), NO_AUGMENT, 1)
    plain, _, _ = build_classifier("googlenet", 64, classes, "none", head(), NO_AUGMENT, 1)
    with pytest.raises(PipelineError, match="GoogLeNet's auxiliary classifiers need"):
        googlenet_training_model(plain, "googlenet", seed=1)


def test_compact_cnn_is_a_tenth_of_resnet18():
    # the small-data backbone: four conv stages, 1.18M weights against ResNet-18's 11.2M
    assert build_architecture("compact_cnn", 128).count_params() == 1_175_136
