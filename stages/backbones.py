"""The Keras backbones the pipeline can train, and the classifier built around one."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stages.errors import PipelineError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class BackboneSpec:
    """Where keras.applications keeps one backbone and the input size it was trained at."""

    module: str
    constructor: str
    default_image_size: int


# Each module's own preprocess_input is used: VGG/ResNet want caffe-style BGR mean subtraction,
# DenseNet torch-style normalisation, MobileNet [-1, 1], EfficientNet rescales inside the model.
BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("vgg16", "VGG16", 224),
    "vgg19": BackboneSpec("vgg19", "VGG19", 224),
    "resnet50": BackboneSpec("resnet", "ResNet50", 224),
    "densenet121": BackboneSpec("densenet", "DenseNet121", 224),
    "efficientnetb0": BackboneSpec("efficientnet", "EfficientNetB0", 224),
    "efficientnetb1": BackboneSpec("efficientnet", "EfficientNetB1", 240),
    "mobilenetv2": BackboneSpec("mobilenet_v2", "MobileNetV2", 224),
}

WEIGHT_CHOICES = ("auto", "imagenet", "none")


def backbone_spec(name: str) -> BackboneSpec:
    """Return the spec of backbone `name`, or fail listing the known names."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise PipelineError(f"model = {name!r}: unknown backbone; known: {known}") from None


def load_backbone(name: str, image_size: int, weights: str) -> tuple[keras.Model, bool]:
    """Build backbone `name` without its top; return it and whether it carries pretrained weights.

    `weights` is auto (ImageNet when cached or downloadable, else random with a warning),
    imagenet (fail if unavailable), none, or a path to a weights file.
    """
    import keras

    spec = backbone_spec(name)
    constructor = getattr(keras.applications, spec.constructor)
    shape = (image_size, image_size, 3)
    if weights == "none":
        return constructor(include_top=False, weights=None, input_shape=shape), False
    if weights not in ("auto", "imagenet"):
        path = Path(weights)
        if not path.is_file():
            raise PipelineError(
                f"train.weights = {weights!r}: no such file; use auto, imagenet, none "
                "or the path of a weights file"
            )
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
