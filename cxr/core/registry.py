"""The names params.yaml may use, defined once: backbones, baselines and phantom classes.

Pure data and string checks, no TensorFlow, scikit-learn or model code: params validation
(cxr.core.params) and the model code (cxr.models) both read the names from here, so every
stage can validate `model` without importing what trains it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cxr.core.errors import PipelineError

# The smallest square input every backbone here accepts; train.image_size has the same floor.
SMALLEST_IMAGE_SIZE = 32
WIDE_RESNET_PATTERN = re.compile(r"wrn_(\d+)_(\d+)")
WIDE_RESNET_NAMES = "wrn_<depth>_<k> (depth = 6n + 4)"
# GoogLeNet's auxiliary classifiers pool the 4a / 4d maps (1/16 of the input) with a 5x5 window.
GOOGLENET_AUX_MIN_IMAGE_SIZE = 65

# train.weights: anything else is a path to a weights file.
WEIGHT_CHOICES = ("auto", "imagenet", "none")

# build.resize: how a non-square image becomes the pixel cache's square (cxr.images.decoding).
RESIZE_MODES = ("pad", "crop", "stretch")

# The scikit-learn baselines of cxr.models.baselines (model: pixel_logreg, ...).
BASELINE_NAMES = ("pixel_logreg", "pixel_svm", "pixel_rf")

# Classes the embedded phantom generator (cxr.ingestion.phantoms) can draw, in its class order.
PHANTOM_CLASSES: tuple[str, ...] = ("covid", "normal", "viral_pneumonia", "lung_opacity")


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone comes from, the input size it was designed for and the least it takes.

    `application` is the keras.applications module whose preprocess_input the backbone uses and
    `constructor` its builder there; both are None for an architecture built in
    cxr/models/architectures.py, which has no ImageNet weights and takes pixels in [0, 1].
    """

    application: str | None
    constructor: str | None
    default_image_size: int
    min_image_size: int = SMALLEST_IMAGE_SIZE

    @property
    def imagenet_weights(self) -> bool:
        """Whether Keras publishes ImageNet weights for this backbone."""
        return self.application is not None


def _keras(application: str, constructor: str, size: int, minimum: int = 32) -> BackboneSpec:
    return BackboneSpec(application, constructor, size, minimum)


def _built_here(size: int, minimum: int = 32) -> BackboneSpec:
    return BackboneSpec(None, None, size, minimum)


# Each keras.applications module has its own preprocess_input: VGG/ResNet want caffe-style BGR
# mean subtraction, DenseNet torch-style normalisation, MobileNetV2/Inception/Xception/NASNet
# [-1, 1]. EfficientNet, EfficientNetV2, ConvNeXt and MobileNetV3 rescale inside the model
# (include_preprocessing, their default), so their preprocess_input passes pixels through.
BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": _keras("vgg16", "VGG16", 224),
    "vgg19": _keras("vgg19", "VGG19", 224),
    "resnet50": _keras("resnet", "ResNet50", 224),
    "resnet101": _keras("resnet", "ResNet101", 224),
    "resnet50v2": _keras("resnet_v2", "ResNet50V2", 224),
    "densenet121": _keras("densenet", "DenseNet121", 224),
    "densenet169": _keras("densenet", "DenseNet169", 224),
    "densenet201": _keras("densenet", "DenseNet201", 224),
    **{
        f"efficientnetb{index}": _keras("efficientnet", f"EfficientNetB{index}", size)
        for index, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    },
    **{
        f"efficientnetv2{variant.lower()}": _keras(
            "efficientnet_v2", f"EfficientNetV2{variant}", size
        )
        for variant, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384))
    },
    "mobilenetv2": _keras("mobilenet_v2", "MobileNetV2", 224),
    "mobilenetv3small": _keras("mobilenet_v3", "MobileNetV3Small", 224),
    "mobilenetv3large": _keras("mobilenet_v3", "MobileNetV3Large", 224),
    # Keras refuses smaller inputs for these two (their stems shrink the image by valid convs).
    "inceptionv3": _keras("inception_v3", "InceptionV3", 299, minimum=75),
    "xception": _keras("xception", "Xception", 299, minimum=71),
    "nasnetmobile": _keras("nasnet", "NASNetMobile", 224),
    "nasnetlarge": _keras("nasnet", "NASNetLarge", 331),
    "convnext_tiny": _keras("convnext", "ConvNeXtTiny", 224),
    # Built in cxr/models/architectures.py from the papers' layer tables; trained from scratch.
    # AlexNet's valid 11x11/4 stem and three valid 3x3/2 poolings need 67 px to keep 1x1.
    "alexnet": _built_here(227, minimum=67),
    "googlenet": _built_here(224),
    # A compact VGG-style network for a few hundred images trained from scratch.
    "compact_cnn": _built_here(128),
    "resnet18": _built_here(224),
    "resnet34": _built_here(224),
    # Two wide ResNets of the paper; any other wrn_<depth>_<k> is accepted too.
    "wrn_16_4": _built_here(32),
    "wrn_28_10": _built_here(32),
}


# train.optimizer: auto trains a backbone from scratch with adamw, except those listed here,
# each by a measurement in docs/measurements.md ("An optimizer per backbone"): with adamw
# MobileNetV2 memorises a few hundred phantoms and predicts one class on the rest; SGD with
# Nesterov momentum generalises. ResNet-18 scored as high or higher with SGD on the phantoms,
# CT and three X-ray splits. ResNet50 with adamw does not fit the phantoms (0.452, with sgd
# 0.871), ties on three X-ray splits and scored higher with sgd on one CT split. A pretrained
# backbone (head, then fine-tuning) keeps adamw.
SCRATCH_OPTIMIZERS: dict[str, str] = {"mobilenetv2": "sgd", "resnet18": "sgd", "resnet50": "sgd"}
DEFAULT_OPTIMIZER = "adamw"
OPTIMIZERS = ("adam", "adamw", "sgd")
# train.learning_rate: auto, each optimizer's usual rate for these networks.
OPTIMIZER_RATES: dict[str, float] = {"adam": 0.001, "adamw": 0.001, "sgd": 0.01}


def training_optimizer(setting: str, model: str, pretrained: bool) -> str:
    """The optimizer train.optimizer = `setting` means for `model` (auto: SCRATCH_OPTIMIZERS)."""
    if setting != "auto":
        return setting
    if pretrained:
        return DEFAULT_OPTIMIZER
    return SCRATCH_OPTIMIZERS.get(model, DEFAULT_OPTIMIZER)


def training_rate(setting: float | str, optimizer: str) -> float:
    """The rate train.learning_rate = `setting` means with `optimizer` (auto: OPTIMIZER_RATES)."""
    return OPTIMIZER_RATES[optimizer] if setting == "auto" else float(setting)


def wide_resnet_shape(name: str) -> tuple[int, int] | None:
    """Depth and widening factor of a `wrn_<depth>_<k>` name; None for any other name.

    Raises ValueError for a wrn name whose depth is not 6n + 4 (n >= 1) or whose k is 0.
    """
    match = WIDE_RESNET_PATTERN.fullmatch(name)
    if match is None:
        return None
    depth, width = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 != 0 or width < 1:
        raise ValueError(
            "a wide ResNet is wrn_<depth>_<k> with depth = 6n + 4 >= 10 and k >= 1, "
            "e.g. wrn_16_4 or wrn_28_10"
        )
    return depth, width


def is_baseline(name: str) -> bool:
    """Whether `model` names a scikit-learn baseline rather than a Keras backbone."""
    return name in BASELINE_NAMES


def model_problem(name: str) -> str | None:
    """Why `name` is not a valid `model` (a message listing the known ones), or None when it is."""
    if name in BACKBONES or is_baseline(name):
        return None
    try:
        if wide_resnet_shape(name) is not None:
            return None
    except ValueError as error:
        return str(error)
    known = ", ".join(sorted([*BACKBONES, *BASELINE_NAMES]))
    return f"unknown model; known: {known}, {WIDE_RESNET_NAMES}"


def backbone_spec(name: str) -> BackboneSpec:
    """Return the spec of backbone `name`, or fail listing the known names."""
    problem = "a baseline, not a Keras backbone" if is_baseline(name) else model_problem(name)
    if problem is not None:
        raise PipelineError(f"model = {name!r}: {problem}")
    return BACKBONES.get(name) or _built_here(SMALLEST_IMAGE_SIZE)


def image_size_problem(name: str, image_size: int) -> str | None:
    """Why backbone `name` cannot take `image_size` px (with the fix), or None when it can."""
    minimum = backbone_spec(name).min_image_size
    if image_size < minimum:
        return f"{name} needs at least {minimum} px; set train.image_size >= {minimum}"
    return None


def check_image_size(name: str, image_size: int) -> None:
    """Fail in one line when `image_size` is below what backbone `name` accepts."""
    problem = image_size_problem(name, image_size)
    if problem is not None:
        raise PipelineError(f"train.image_size = {image_size}: {problem}")


def googlenet_aux_problem(name: str, image_size: int) -> str | None:
    """Why train.head.googlenet_aux cannot apply to `name` at `image_size`, or None."""
    if name != "googlenet":
        return (
            f"only googlenet has auxiliary classifiers, model is {name}; "
            "set train.head.googlenet_aux to false"
        )
    if image_size < GOOGLENET_AUX_MIN_IMAGE_SIZE:
        return (
            f"GoogLeNet's auxiliary classifiers need train.image_size >= "
            f"{GOOGLENET_AUX_MIN_IMAGE_SIZE} (it is {image_size}); raise it or set "
            "train.head.googlenet_aux to false"
        )
    return None


def known_names(also: Iterable[str] = ()) -> str:
    """Every valid `model` name, comma-separated, for messages and docs."""
    return ", ".join(sorted([*BACKBONES, *BASELINE_NAMES, *also]))
