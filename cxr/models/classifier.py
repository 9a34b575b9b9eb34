"""The Keras classifier: raw gray pixels in, augmentation and preprocessing inside.

Layer names are a contract training, Grad-CAM and serving rely on: cxr.models.layer_names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from cxr.core.errors import PipelineError
from cxr.core.registry import BACKBONES, googlenet_aux_problem
from cxr.models import layer_names
from cxr.models.architectures import GOOGLENET_AUX_TAPS, googlenet_auxiliary_classifier
from cxr.models.backbones import load_backbone, preprocess_images
from cxr.models.backend import keep_tensorflow_out, let_xla_compile
from cxr.models.layer_names import GOOGLENET_AUX_OUTPUTS

if TYPE_CHECKING:  # at run time only classifier_parameters needs them: building needs no pydantic
    from cxr.core.params import AugmentParams, HeadParams

# The paper weights each auxiliary loss by 0.3 and discards the classifiers at inference.
GOOGLENET_AUX_LOSS_WEIGHT = 0.3


@keras.saving.register_keras_serializable(package="cxr")
class BackboneInput(keras.layers.Layer):
    """Turn raw grayscale pixels (0-255) into the 3-channel input the backbone was trained on."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images: Any) -> Any:
        """Repeat the gray channel three times and apply the backbone's own preprocessing."""
        # X-rays are grayscale; ImageNet backbones expect three identical channels.
        rgb = keras.ops.repeat(keras.ops.cast(images, "float32"), 3, axis=-1)
        return preprocess_images(self.backbone, rgb)

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Same spatial shape, three channels."""
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        """Serialise the backbone name so a saved model rebuilds its preprocessing."""
        return {**super().get_config(), "backbone": self.backbone}


def build_augmentation(augment: AugmentParams, seed: int) -> keras.Sequential | None:
    """Random flip, rotation, zoom, shift, contrast and brightness, active only in training.

    Returns None when every augmentation is off, so the model has no "augmentation" layer.
    """
    # One seed per layer: layers sharing a seed would draw the same random numbers.
    wanted: list[tuple[bool, Any]] = [
        (augment.horizontal_flip, lambda s: keras.layers.RandomFlip("horizontal", seed=s)),
        (augment.rotation > 0, lambda s: keras.layers.RandomRotation(augment.rotation, seed=s)),
        (augment.zoom > 0, lambda s: keras.layers.RandomZoom(augment.zoom, seed=s)),
        (
            augment.translation > 0,
            lambda s: keras.layers.RandomTranslation(
                augment.translation, augment.translation, seed=s
            ),
        ),
        (
            augment.contrast > 0,
            lambda s: keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=s),
        ),
        (
            augment.brightness > 0,
            lambda s: keras.layers.RandomBrightness(
                augment.brightness, value_range=(0, 255), seed=s
            ),
        ),
    ]
    layers = [make(seed + index) for index, (on, make) in enumerate(wanted) if on]
    if not layers:
        return None
    return let_xla_compile(keras.Sequential(layers, name=layer_names.AUGMENTATION))


def build_head(features: Any, head: HeadParams, class_count: int, seed: int) -> Any:
    """Pool the backbone's feature map, add the hidden layers and the softmax; return the output.

    Each hidden layer is Dense (ReLU) -> BatchNorm (head.batch_norm) -> Dropout (head.dropout);
    without hidden layers the dropout follows the pooling. head.l2 regularises every Dense kernel.
    """
    pooling = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }[head.pooling]
    features = pooling(name=layer_names.FEATURES)(features)

    def regulariser() -> keras.regularizers.Regularizer | None:
        return keras.regularizers.L2(head.l2) if head.l2 > 0 else None

    for index, units in enumerate(head.dense_units, start=1):
        features = keras.layers.Dense(
            units, activation="relu", kernel_regularizer=regulariser(), name=f"head_dense_{index}"
        )(features)
        if head.batch_norm:
            features = keras.layers.BatchNormalization(name=f"head_bn_{index}")(features)
        if head.dropout > 0:
            features = keras.layers.Dropout(
                head.dropout, seed=seed + index, name=f"head_dropout_{index}"
            )(features)
    if not head.dense_units and head.dropout > 0:
        features = keras.layers.Dropout(head.dropout, seed=seed, name="head_dropout")(features)
    # float32 output keeps softmax stable under a mixed-precision policy.
    return keras.layers.Dense(
        class_count,
        activation="softmax",
        kernel_regularizer=regulariser(),
        dtype="float32",
        name=layer_names.PREDICTIONS,
    )(features)


def build_classifier(
    model_name: str,
    image_size: int,
    class_names: list[str],
    weights: str,
    head: HeadParams,
    augment: AugmentParams,
    seed: int,
    init_weights: Path | None = None,
) -> tuple[keras.Model, keras.Model, bool]:
    """Build the classifier; return it, its backbone and whether the backbone is pretrained.

    `init_weights`: the pretrain stage's encoder, which the backbone starts from (load_backbone).
    """
    if head.googlenet_aux:
        check_googlenet_aux(model_name, image_size)
    backbone, pretrained = load_backbone(model_name, image_size, weights, init_weights)
    backbone.name = layer_names.BACKBONE  # a stable name lets fine-tuning and Grad-CAM find it
    if not pretrained:
        adapt_batchnorm_for_scratch(backbone)
    inputs = keras.Input((image_size, image_size, 1), name=layer_names.INPUT)
    augmentation = build_augmentation(augment, seed)
    features = augmentation(inputs) if augmentation is not None else inputs
    features = BackboneInput(model_name, name=layer_names.BACKBONE_INPUT)(features)
    # A pretrained backbone stays in inference mode so fine-tuning does not wreck its BatchNorm
    # statistics; a randomly initialised one must learn those statistics, so it trains normally.
    features = backbone(features, training=False if pretrained else None)
    outputs = build_head(features, head, len(class_names), seed)
    model = keras.Model(inputs, outputs, name=f"cxr_{model_name}")
    return model, backbone, pretrained


def load_classifier(path: Path) -> keras.Model:
    """A saved classifier, to predict with on this process's backend (this module's layers).

    A .keras file holds no backend: a model saved on one loads and predicts on the other. It
    is not compiled: it only predicts, and its predictions then take XLA wherever the backend
    can (training's compile settings would fix that choice when it loads).
    """
    keep_tensorflow_out()
    return let_xla_compile(keras.models.load_model(path, compile=False))


def average_members(members: Sequence[keras.Model], model_name: str) -> keras.Model:
    """One model whose output is the mean of the `members`' probabilities (a seed ensemble).

    Each member stays a whole classifier inside it (layer member_<k>), so Grad-CAM explains
    each one and a single .keras file serves the ensemble like any model.
    """
    inputs = keras.Input(members[0].input.shape[1:], name=layer_names.INPUT)
    outputs = [
        keras.Model(member.input, member.output, name=f"{layer_names.MEMBER_PREFIX}{k}")(inputs)
        for k, member in enumerate(members)
    ]
    mean = keras.layers.Average(dtype="float32", name=layer_names.PREDICTIONS)(outputs)
    return keras.Model(inputs, mean, name=f"cxr_{model_name}_x{len(members)}")


def ensemble_members(model: Any) -> list[keras.Model]:
    """The classifiers a seed ensemble built by average_members averages; [] for any other."""
    if not isinstance(model, keras.Model):
        return []
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.name.startswith(layer_names.MEMBER_PREFIX)
    ]


def check_googlenet_aux(model_name: str, image_size: int) -> None:
    """Fail in one line unless train.head.googlenet_aux can apply to this model and size."""
    problem = googlenet_aux_problem(model_name, image_size)
    if problem is not None:
        raise PipelineError(f"train.head.googlenet_aux = true: {problem}")


def googlenet_training_model(model: keras.Model, model_name: str, seed: int) -> keras.Model:
    """GoogLeNet with its two auxiliary classifiers, for training only; shares `model`'s layers.

    Outputs a dict: "predictions" (the classifier's own) and "aux_1" / "aux_2" (softmax on the
    inception 4a / 4d maps, Szegedy et al. 2014). Compile it with
    `**googlenet_training_losses()`, map the dataset through auxiliary_targets and fit it: that
    trains `model`, which alone is saved and used for inference, as in the paper.
    """
    check_googlenet_aux(model_name, int(model.input.shape[1]))
    backbone = model.get_layer(layer_names.BACKBONE)
    taps = [backbone.get_layer(name).output for name in GOOGLENET_AUX_TAPS]
    tapped = keras.Model(backbone.inputs, [*taps, backbone.output], name="backbone_with_taps")
    inputs = keras.Input(model.input.shape[1:], name=layer_names.INPUT)
    position = [layer.name for layer in model.layers].index(layer_names.BACKBONE)
    features = inputs
    for layer in model.layers[1:position]:  # augmentation (when present) and backbone_input
        features = layer(features)
    *tap_outputs, features = tapped(features)
    for layer in model.layers[position + 1 :]:  # the head: one chain from head_pool on
        features = layer(features)
    class_count = int(model.output.shape[-1])
    outputs = {layer_names.PREDICTIONS: features}
    for name, tap in zip(GOOGLENET_AUX_OUTPUTS, tap_outputs, strict=True):
        outputs[name] = googlenet_auxiliary_classifier(tap, class_count, name, seed)
    return keras.Model(inputs, outputs, name="cxr_googlenet_aux_training")


def googlenet_training_losses(loss: Any = "sparse_categorical_crossentropy") -> dict[str, Any]:
    """compile() arguments for googlenet_training_model: `loss` per output, aux weighted 0.3."""
    weights = {layer_names.PREDICTIONS: 1.0}
    weights.update({name: GOOGLENET_AUX_LOSS_WEIGHT for name in GOOGLENET_AUX_OUTPUTS})
    return {"loss": {name: loss for name in weights}, "loss_weights": weights}


def auxiliary_targets(images: Any, labels: Any) -> tuple[Any, dict[str, Any]]:
    """Map (images, labels) to the targets googlenet_training_model expects (Dataset.map)."""
    return images, {name: labels for name in (layer_names.PREDICTIONS, *GOOGLENET_AUX_OUTPUTS)}


def weight_layers(model: Any) -> int:
    """The convolution and dense layers of `model`, nested models included: its depth.

    What the papers count (VGG16's 13 convolutions and 3 dense layers), over every branch: a
    ResNet's projection shortcuts and a head's hidden layers count too.
    """
    count = 0
    for layer in model.layers:
        if hasattr(layer, "layers"):
            count += weight_layers(layer)
        elif any(hasattr(layer, kernel) for kernel in ("kernel", "depthwise_kernel")):
            count += 1
    return count


def classifier_parameters(backbone_name: str, image_size: int, class_count: int) -> int:
    """Parameters of backbone `backbone_name` plus a softmax on its average-pooled features."""
    from cxr.core.params import AugmentParams, HeadParams

    head = HeadParams(
        pooling="avg", dense_units=[], batch_norm=False, dropout=0.0, l2=0.0, googlenet_aux=False
    )
    augment = AugmentParams(
        horizontal_flip=False,
        rotation=0.0,
        zoom=0.0,
        translation=0.0,
        contrast=0.0,
        brightness=0.0,
    )
    classes = [f"class_{index}" for index in range(class_count)]
    model, _, _ = build_classifier(backbone_name, image_size, classes, "none", head, augment, 0)
    return int(model.count_params())


def model_registry(image_size: int = 224, class_count: int = 3) -> list[dict[str, Any]]:
    """Every listed backbone: input sizes, ImageNet weights and parameters (with a softmax top).

    Builds each model once (a few seconds each, minutes for all), so it is for documentation.
    """
    rows = []
    for name, spec in BACKBONES.items():
        rows.append(
            {
                "name": name,
                "default_image_size": spec.default_image_size,
                "min_image_size": spec.min_image_size,
                "imagenet_weights": spec.imagenet_weights,
                "parameters": classifier_parameters(
                    name, max(image_size, spec.min_image_size), class_count
                ),
            }
        )
        keras.backend.clear_session()  # each model's graph would otherwise stay in memory
    return rows


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
