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
from cxr.training.inputs import Pixels, StreamedPixels, array_dataset


def use_cached_features(cache_features: str, pretrained: bool, model: keras.Model) -> bool:
    """Whether the frozen phase fits the head on cached features (train.cache_features).

    auto: when the backbone is pretrained (so frozen) and the model has no augmentation;
    on: also with augmentation, which the frozen phase then skips (warned); off: never.
    A backbone trained from scratch has no frozen phase, so nothing is cached.
    """
    if cache_features == "off" or not pretrained:
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


def extract_features(extractor: keras.Model, images: Pixels, batch_size: int) -> np.ndarray:
    """The extractor's output for every image, in order, as float32."""
    if isinstance(images, StreamedPixels):
        labels = np.zeros(len(images), dtype=np.int64)  # unused: predict reads the images only
        batches = array_dataset(images, labels.tolist(), batch_size, None)
        features = extractor.predict(batches.map(lambda pixels, _: pixels), verbose=0)
    else:
        features = extractor.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(features, dtype=np.float32)
