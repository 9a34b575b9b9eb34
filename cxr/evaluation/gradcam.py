"""Grad-CAM: where in the image the backbone's feature map drove a class score.

Written in keras.ops; only the gradient itself is the backend's own (feature_gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # stages run headless
import keras
import matplotlib.pyplot as plt
import numpy as np

from cxr.core.outputs import save_figure
from cxr.models import layer_names
from cxr.models.backend import JAX, TENSORFLOW, keras_backend
from cxr.models.classifier import ensemble_members

SKIPPED_LAYERS = (layer_names.AUGMENTATION,)  # random layers are identities at inference


class NoFeatureMapError(Exception):
    """The model has no convolutional feature map to explain (e.g. a scikit-learn model)."""


def backbone_split(model: Any) -> tuple[list[Any], Any, list[Any]]:
    """The layers before the "backbone" layer, the backbone, and the layers after it.

    Raises NoFeatureMapError when there is no Keras model, no layer named "backbone", or its
    output is not a 4-D (batch, height, width, channels) feature map.
    """
    if not isinstance(model, keras.Model):
        raise NoFeatureMapError(f"a {type(model).__name__} has no convolutional feature map")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if layer_names.BACKBONE not in names:
        raise NoFeatureMapError(f"model {model.name!r} has no layer named {layer_names.BACKBONE!r}")
    position = names.index(layer_names.BACKBONE)
    backbone = layers[position]
    rank = len(backbone.output.shape) if hasattr(backbone, "output") else 0
    if rank != 4:
        raise NoFeatureMapError(
            f"the {layer_names.BACKBONE!r} output has rank {rank}, "
            "not a 4-D convolutional feature map"
        )
    before = [layer for layer in layers[:position] if layer.name not in SKIPPED_LAYERS]
    return before, backbone, layers[position + 1 :]


def check_explainable(model: Any) -> None:
    """Raise NoFeatureMapError unless gradcam_heatmaps can explain `model` (or every member)."""
    for explained in ensemble_members(model) or [model]:
        backbone_split(explained)


def _class_scores(head: list[Any], features: Any) -> Any:
    """The head's output before its softmax, so confident predictions still have gradients."""
    ops = keras.ops
    scores = features
    for layer in head[:-1]:
        scores = layer(scores, training=False)
    last = head[-1]
    if isinstance(last, keras.layers.Dense):
        logits = ops.matmul(ops.cast(scores, "float32"), ops.cast(last.kernel, "float32"))
        return logits + ops.cast(last.bias, "float32") if last.use_bias else logits
    return ops.cast(last(scores, training=False), "float32")


def feature_gradients(head: list[Any], features: Any, chosen: np.ndarray) -> Any:
    """d(score of class chosen[i]) / d(features[i]) for every image i, by the backend's autodiff.

    Each image's score depends on its own features only, so the gradient of their sum gives
    every image's at once.
    """
    ops = keras.ops
    backend = keras_backend()

    def total_score(features: Any) -> Any:
        scores = _class_scores(head, features)
        return ops.sum(ops.take_along_axis(scores, ops.convert_to_tensor(chosen[:, None]), 1))

    if backend == JAX:
        import jax

        return jax.grad(total_score)(features)
    if backend == TENSORFLOW:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(features)
            total = total_score(features)
        return tape.gradient(total, features)
    raise NotImplementedError(f"Grad-CAM has no gradient for the {backend} backend")


def gradcam_heatmaps(
    model: Any, images: np.ndarray, class_indices: Sequence[int] | np.ndarray, batch_size: int = 32
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] for uint8 images (N, H, W, 1), one class each.

    For a seed ensemble (train.members), the mean of its members' maps, rescaled to [0, 1].
    """
    members = ensemble_members(model)
    if members:
        mean = np.mean(
            [gradcam_heatmaps(member, images, class_indices, batch_size) for member in members],
            axis=0,
        )
        peak = mean.max(axis=(1, 2), keepdims=True) if len(mean) else 1.0
        return (mean / np.where(peak > 0, peak, 1.0)).astype(np.float32)
    before, backbone, head = backbone_split(model)
    ops = keras.ops
    size = images.shape[1:3]
    maps = []
    for start in range(0, len(images), batch_size):
        inputs = ops.convert_to_tensor(images[start : start + batch_size], dtype="float32")
        chosen = np.asarray(class_indices[start : start + batch_size], np.int32)
        for layer in before:
            inputs = layer(inputs, training=False)
        features = backbone(inputs, training=False)
        gradients = ops.cast(feature_gradients(head, features, chosen), "float32")
        weights = ops.mean(gradients, axis=(1, 2), keepdims=True)
        cam = ops.relu(ops.sum(weights * ops.cast(features, "float32"), axis=-1))
        cam = ops.image.resize(cam[..., None], size, interpolation="bilinear")[..., 0]
        cam = ops.convert_to_numpy(cam)
        peak = cam.max(axis=(1, 2), keepdims=True)
        maps.append((cam / np.where(peak > 0, peak, 1.0)).astype(np.float32))
    return np.concatenate(maps) if maps else np.zeros((0, *size), np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """An RGB float image: the gray X-ray with the heat map blended on top (jet colours)."""
    gray = np.repeat(image.reshape(image.shape[:2])[..., np.newaxis] / 255.0, 3, axis=-1)
    colours = plt.get_cmap("jet")(heatmap)[..., :3]
    return np.clip((1 - alpha) * gray + alpha * colours, 0.0, 1.0)


def draw_gradcam_grid(
    images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str], title: str, path: Path
) -> None:
    """Save overlays of images and their heat maps in a grid of at most 4 columns."""
    columns = max(1, min(4, len(images)))
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, heatmap, caption in zip(axes.ravel(), images, heatmaps, titles, strict=False):
        axis.imshow(overlay(image, heatmap))
        axis.set_title(caption, fontsize=8)
    if len(images) == 0:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    figure.suptitle(title)
    save_figure(figure, path)


def save_overlay(image: np.ndarray, heatmap: np.ndarray, caption: str, path: Path) -> None:
    """Save one image with its Grad-CAM overlay, side by side, as a PNG."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(6, 3.3))
    left.imshow(image.reshape(image.shape[:2]), cmap="gray", vmin=0, vmax=255)
    right.imshow(overlay(image, heatmap))
    for axis in (left, right):
        axis.axis("off")
    figure.suptitle(caption, fontsize=9)
    save_figure(figure, path)
