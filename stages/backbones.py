"""The backbones the pipeline can train: keras.applications ones and those built here.

Kept free of a module-level keras import: stages.config validates `model` against this registry
and must stay fast to import.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.errors import PipelineError

if TYPE_CHECKING:
    import keras

# The smallest square input every backbone here accepts; train.image_size has the same floor.
SMALLEST_IMAGE_SIZE = 32
WIDE_RESNET_PATTERN = re.compile(r"wrn_(\d+)_(\d+)")
WIDE_RESNET_NAMES = "wrn_<depth>_<k> (depth = 6n + 4)"


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone comes from, the input size it was designed for and the least it takes.

    `application` is the keras.applications module whose preprocess_input the backbone uses and
    `constructor` its builder there; both are None for an architecture built in
    stages/architectures.py, which has no ImageNet weights and takes pixels rescaled to [0, 1].
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
    # Built here from the papers' layer tables (stages/architectures.py); trained from scratch.
    # AlexNet's valid 11x11/4 stem and three valid 3x3/2 poolings need 67 px to keep 1x1.
    "alexnet": _built_here(227, minimum=67),
    "googlenet": _built_here(224),
    "resnet18": _built_here(224),
    "resnet34": _built_here(224),
    # Two wide ResNets of the paper; any other wrn_<depth>_<k> is accepted too.
    "wrn_16_4": _built_here(32),
    "wrn_28_10": _built_here(32),
}

WEIGHT_CHOICES = ("auto", "imagenet", "none")


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


def backbone_problem(name: str, also_known: Iterable[str] = ()) -> str | None:
    """Why `name` is not a backbone (a message listing the known ones), or None when it is.

    `also_known` adds other valid `model` names (the baselines) to the list in the message.
    """
    if name in BACKBONES:
        return None
    try:
        if wide_resnet_shape(name) is not None:
            return None
    except ValueError as error:
        return str(error)
    known = ", ".join(sorted([*BACKBONES, *also_known]))
    return f"unknown model; known: {known}, {WIDE_RESNET_NAMES}"


def backbone_spec(name: str) -> BackboneSpec:
    """Return the spec of backbone `name`, or fail listing the known names."""
    problem = backbone_problem(name)
    if problem is not None:
        raise PipelineError(f"model = {name!r}: {problem}")
    return BACKBONES.get(name) or _built_here(SMALLEST_IMAGE_SIZE)


def check_image_size(name: str, image_size: int) -> None:
    """Fail in one line when `image_size` is below what backbone `name` accepts."""
    minimum = backbone_spec(name).min_image_size
    if image_size < minimum:
        raise PipelineError(
            f"train.image_size = {image_size}: {name} needs at least {minimum} px; "
            f"set train.image_size >= {minimum}"
        )


def preprocess_images(name: str, rgb: Any) -> Any:
    """Apply backbone `name`'s own input scaling to float RGB pixels in 0-255."""
    import keras

    application = backbone_spec(name).application
    if application is None:
        # Scratch models: a plain rescale. Per-image standardisation would cancel the brightness
        # and contrast augmentation, and BatchNorm after the first convolution does the rest.
        return rgb / 255.0
    return getattr(keras.applications, application).preprocess_input(rgb)


def load_backbone(name: str, image_size: int, weights: str) -> tuple[keras.Model, bool]:
    """Build backbone `name` without its top; return it and whether it carries pretrained weights.

    `weights` is auto (ImageNet when cached or downloadable, else random with a warning; always
    random for a backbone built here), imagenet (fail if unavailable), none, or a path to a
    weights file.
    """
    spec = backbone_spec(name)
    check_image_size(name, image_size)
    path = None if weights in WEIGHT_CHOICES else Path(weights)
    if path is not None and not path.is_file():
        raise PipelineError(
            f"train.weights = {weights!r}: no such file; use auto, imagenet, none "
            "or the path of a weights file"
        )
    if spec.application is None:
        return _load_built_here(name, image_size, weights, path)
    import keras

    constructor = getattr(keras.applications, str(spec.constructor))
    shape = (image_size, image_size, 3)
    if weights == "none":
        return constructor(include_top=False, weights=None, input_shape=shape), False
    if path is not None:
        return constructor(include_top=False, weights=str(path), input_shape=shape), True
    try:
        # Keras looks in ~/.keras/models first and downloads only when the file is missing.
        return constructor(include_top=False, weights="imagenet", input_shape=shape), True
    except Exception as error:  # keras raises a bare Exception for URL fetch failures
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if weights == "imagenet":
            raise PipelineError(
                f"train.weights = 'imagenet': ImageNet weights for {name} are not cached in "
                f"~/.keras/models and could not be downloaded ({reason}); use auto or none"
            ) from None
        warnings.warn(
            f"ImageNet weights for {name} unavailable ({reason}); training from scratch "
            "(recorded as pretrained: false)",
            stacklevel=2,
        )
        return constructor(include_top=False, weights=None, input_shape=shape), False


def _load_built_here(
    name: str, image_size: int, weights: str, path: Path | None
) -> tuple[keras.Model, bool]:
    """Build architecture `name` from stages/architectures.py, with weights from `path` if any."""
    from stages.architectures import build_architecture

    if weights == "imagenet":
        raise PipelineError(
            f"train.weights = 'imagenet': no ImageNet weights exist for {name} (built in "
            "stages/architectures.py, trained from scratch); use auto, none or a weights file"
        )
    backbone = build_architecture(name, image_size)
    if path is None:
        return backbone, False
    try:
        backbone.load_weights(path)
    except ValueError as error:
        raise PipelineError(
            f"train.weights = {weights!r}: not weights of {name} at {image_size} px "
            f"({str(error).splitlines()[0]})"
        ) from None
    return backbone, True
