"""Frozen phase on cached features: run the frozen backbone once, then fit only the head.

With the backbone frozen (and in inference mode) and no random augmentation in front of it,
every epoch would recompute the same "head_pool" features; computing them once and fitting the
head layers on them gives the same head, many times faster.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from cxr.models import layer_names
from cxr.training.inputs import ONE_DEVICE, Pixels, Shards, predict_images


def use_cached_features(
    cache_features: str, pretrained: bool, model: keras.Model, processes: int = 1
) -> bool:
    """Whether the frozen phase fits the head on cached features (train.cache_features).

    auto: when the backbone is pretrained (so frozen) and the model has no augmentation;
    on: also with augmentation, which the frozen phase then skips (warned); off: never.
    A backbone trained from scratch has no frozen phase, so nothing is cached; nor does a run
    over several processes: their predictions span processes, and no one process can hold
    the features (the frozen phase then runs through the frozen backbone, same head).
    """
    if cache_features == "off" or not pretrained or processes > 1:
        return False
    augmented = any(layer.name == layer_names.AUGMENTATION for layer in model.layers)
    if augmented and cache_features == "on":
        warnings.warn(
            "train.cache_features = on: the frozen phase fits the head on un-augmented "
            "features; augmentation applies from fine-tuning on",
            stacklevel=2,
        )
    return cache_features == "on" or not augmented


def split_at_features(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The model up to "head_pool" (feature extractor) and from there on (head, shared layers)."""
    features = model.get_layer(layer_names.FEATURES).output
    extractor = keras.Model(model.inputs, features, name="feature_extractor")
    # keras builds a fresh input in place of the intermediate tensor and reuses the head layers,
    # so fitting `head` trains the very layers of `model`.
    head = keras.Model(features, model.outputs, name="head")
    return extractor, head


def extract_features(
    extractor: keras.Model, images: Pixels, batch_size: int, shards: Shards = ONE_DEVICE
) -> np.ndarray:
    """The extractor's output for every image, in order, as float32."""
    return np.asarray(predict_images(extractor, images, batch_size, shards), dtype=np.float32)
