"""The Keras classifier: raw gray pixels in, augmentation and preprocessing inside."""

from __future__ import annotations

from typing import Any

import keras

from stages.backbones import backbone_spec, load_backbone
from stages.config import AugmentParams, HeadParams


@keras.saving.register_keras_serializable(package="cxr")
class BackboneInput(keras.layers.Layer):
    """Turn raw grayscale pixels (0-255) into the 3-channel input the backbone was trained on."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images: Any) -> Any:
        """Repeat the gray channel three times and apply the backbone's own preprocess_input."""
        application = getattr(keras.applications, backbone_spec(self.backbone).module)
        # X-rays are grayscale; ImageNet backbones expect three identical channels.
        rgb = keras.ops.repeat(keras.ops.cast(images, "float32"), 3, axis=-1)
        return application.preprocess_input(rgb)

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Same spatial shape, three channels."""
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        """Serialise the backbone name so a saved model rebuilds its preprocessing."""
        return {**super().get_config(), "backbone": self.backbone}


def build_augmentation(augment: AugmentParams, seed: int) -> keras.Sequential | None:
    """Random flips, rotations, zooms and contrast changes, active only while training (or None)."""
    layers: list[keras.layers.Layer] = []
    if augment.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.rotation > 0:
        layers.append(keras.layers.RandomRotation(augment.rotation, seed=seed))
    if augment.zoom > 0:
        layers.append(keras.layers.RandomZoom(augment.zoom, seed=seed))
    if augment.contrast > 0:
        layers.append(
            keras.layers.RandomContrast(augment.contrast, seed=seed, value_range=(0, 255))
        )
    return keras.Sequential(layers, name="augmentation") if layers else None


def build_classifier(
    backbone_name: str,
    image_size: int,
    class_names: list[str],
    weights: str,
    head: HeadParams,
    augment: AugmentParams,
    seed: int,
) -> tuple[keras.Model, keras.Model, bool]:
    """Build the classifier; return it, its backbone and whether the backbone is pretrained."""
    backbone, pretrained = load_backbone(backbone_name, image_size, weights)
    backbone.name = "backbone"  # a stable name lets fine-tuning and Grad-CAM find it
    if not pretrained:
        adapt_batchnorm_for_scratch(backbone)
    inputs = keras.Input((image_size, image_size, 1), name="image")
    augmentation = build_augmentation(augment, seed)
    features = augmentation(inputs) if augmentation is not None else inputs
    features = BackboneInput(backbone_name, name="backbone_input")(features)
    # A pretrained backbone stays in inference mode so fine-tuning does not wreck its BatchNorm
    # statistics; a randomly initialised one must learn those statistics, so it trains normally.
    features = backbone(features, training=False if pretrained else None)
    pooling = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }[head.pooling]
    features = pooling(name="head_pool")(features)
    if head.dense_units > 0:
        features = keras.layers.Dense(head.dense_units, activation="relu", name="head_dense")(
            features
        )
    if head.dropout > 0:
        features = keras.layers.Dropout(head.dropout, seed=seed, name="head_dropout")(features)
    # float32 output keeps softmax stable under a mixed-precision policy.
    outputs = keras.layers.Dense(
        len(class_names), activation="softmax", dtype="float32", name="predictions"
    )(features)
    model = keras.Model(inputs, outputs, name=f"cxr_{backbone_name}")
    return model, backbone, pretrained


def adapt_batchnorm_for_scratch(backbone: keras.Model, momentum: float = 0.9) -> int:
    """Let BatchNorm statistics follow a randomly initialised backbone; return layers changed.

    keras.applications set momentum 0.99-0.999, tuned for ImageNet's millions of steps; on a few
    hundred images the moving averages would still describe the initial weights at the end of
    training, and validation (which uses them) would sit at chance.
    """
    changed = 0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > momentum:
            layer.momentum = momentum
            changed += 1
    return changed


def unfreeze_top_layers(backbone: keras.Model, count: int) -> int:
    """Make the top `count` backbone layers trainable, BatchNorm excepted; return how many."""
    backbone.trainable = True
    unfrozen = 0
    for index, layer in enumerate(backbone.layers):
        in_top = index >= len(backbone.layers) - count
        trainable = in_top and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable)
    return unfrozen
