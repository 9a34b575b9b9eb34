"""Backbones as Keras models: keras.applications ones and those built in architectures.py.

The names, input sizes and sources live in cxr.core.registry; this module builds them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras

from cxr.core.errors import PipelineError
from cxr.core.registry import WEIGHT_CHOICES, backbone_spec, check_image_size
from cxr.models.architectures import build_architecture


def preprocess_images(name: str, rgb: Any) -> Any:
    """Apply backbone `name`'s own input scaling to float RGB pixels in 0-255."""
    application = backbone_spec(name).application
    if application is None:
        # Scratch models: a plain rescale. Per-image standardisation would cancel the brightness
        # and contrast augmentation, and BatchNorm after the first convolution does the rest.
        return rgb / 255.0
    return getattr(keras.applications, application).preprocess_input(rgb)


def load_backbone(
    name: str, image_size: int, weights: str, init_weights: Path | None = None
) -> tuple[keras.Model, bool]:
    """Build backbone `name` without its top; return it and whether it carries pretrained weights.

    `weights` is auto (ImageNet when cached or downloadable, else random with a warning; always
    random for a backbone built here), imagenet (fail if unavailable), none, or a path to a
    weights file. `init_weights` (the pretrain stage's encoder) replaces it: the backbone starts
    from those weights and is returned as not pretrained, so it trains end to end as from
    scratch; the weights only initialise it.
    """
    spec = backbone_spec(name)
    check_image_size(name, image_size)
    if init_weights is not None:
        backbone, _ = load_backbone(name, image_size, "none")
        try:
            backbone.load_weights(init_weights)
        except ValueError as error:
            raise PipelineError(
                f"{init_weights}: not weights of {name} at {image_size} px "
                f"({str(error).splitlines()[0]}); run `dvc repro pretrain`"
            ) from None
        return backbone, False
    path = None if weights in WEIGHT_CHOICES else Path(weights)
    if path is not None and not path.is_file():
        raise PipelineError(
            f"train.weights = {weights!r}: no such file; use auto, imagenet, none "
            "or the path of a weights file"
        )
    if spec.application is None:
        return _load_built_here(name, image_size, weights, path)
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
    """Build architecture `name` (cxr/models/architectures.py), with weights from `path` if any."""
    if weights == "imagenet":
        raise PipelineError(
            f"train.weights = 'imagenet': no ImageNet weights exist for {name} (built in "
            "cxr/models/architectures.py, trained from scratch); use auto, none or a weights file"
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
