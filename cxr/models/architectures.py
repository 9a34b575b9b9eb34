"""Backbones built here from their papers' layer tables, for training from scratch.

Each builder returns a headless feature extractor (a keras.Model named "backbone" whose output
is the last feature map), so the shared head of cxr.models.classifier sits on top of it exactly as
it does on a keras.applications backbone. Input: (S, S, 3) floats in [0, 1].

Deviations from the papers, the same in every model here and chosen for training from scratch
on a few hundred radiographs: BatchNormalization follows every convolution (in place of
AlexNet's and GoogLeNet's local response normalisation, as torchvision's GoogLeNet does), and
the convolution it follows has no bias. AlexNet is the usual single-tower variant (no two-GPU
grouping of conv2, conv4 and conv5): 62.4M parameters with its 1000-class head instead of the
paper's 61.0M. WRN uses the paper's CIFAR layout (stride-1 stem), so its cost grows with the
square of train.image_size; it is meant for 32-64 px inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from cxr.core.errors import PipelineError
from cxr.core.registry import wide_resnet_shape
from cxr.models import layer_names

# keras.applications use 0.99; a randomly initialised network needs statistics that follow
# its weights within a few hundred steps (see cxr.models.classifier.adapt_batchnorm_for_scratch).
BATCHNORM_MOMENTUM = 0.9
BATCHNORM_EPSILON = 1e-5

# GoogLeNet table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) per module.
GOOGLENET_MODULES: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
# The modules whose outputs feed GoogLeNet's auxiliary classifiers.
GOOGLENET_AUX_TAPS = ("inception_4a", "inception_4d")

# compact_cnn: filters of its four stages.
COMPACT_CNN_FILTERS = (32, 64, 128, 256)

# He et al. 2015, table 1: basic blocks per stage conv2_x .. conv5_x.
RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}


def conv_bn_relu(
    x: Any, filters: int, kernel: int, name: str, strides: int = 1, padding: str = "same"
) -> Any:
    """Convolution (no bias), BatchNorm, ReLU: the unit every scratch model here is made of."""
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv"
    )(x)
    x = batch_norm(x, f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def batch_norm(x: Any, name: str) -> Any:
    """BatchNormalization with statistics fast enough for training from scratch."""
    return keras.layers.BatchNormalization(
        momentum=BATCHNORM_MOMENTUM, epsilon=BATCHNORM_EPSILON, name=name
    )(x)


def alexnet(inputs: Any) -> Any:
    """AlexNet (Krizhevsky et al. 2012) convolutional body: 227 px in, 6x6x256 out."""
    x = conv_bn_relu(inputs, 96, 11, "conv1", strides=4, padding="valid")
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = conv_bn_relu(x, 256, 5, "conv2")
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = conv_bn_relu(x, 384, 3, "conv3")
    x = conv_bn_relu(x, 384, 3, "conv4")
    x = conv_bn_relu(x, 256, 3, "conv5")
    # The paper's fc6, fc7 (4096 units, dropout 0.5) belong to the head: see HeadParams.
    return keras.layers.MaxPooling2D(3, strides=2, name="pool5")(x)


def inception_module(x: Any, widths: tuple[int, int, int, int, int, int], name: str) -> Any:
    """One GoogLeNet inception module: 1x1, 3x3, 5x5 and pooled branches, concatenated."""
    one, three_reduce, three, five_reduce, five, pool_projection = widths
    branch_1 = conv_bn_relu(x, one, 1, f"{name}_1x1")
    branch_3 = conv_bn_relu(x, three_reduce, 1, f"{name}_3x3_reduce")
    branch_3 = conv_bn_relu(branch_3, three, 3, f"{name}_3x3")
    branch_5 = conv_bn_relu(x, five_reduce, 1, f"{name}_5x5_reduce")
    branch_5 = conv_bn_relu(branch_5, five, 5, f"{name}_5x5")
    pooled = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    pooled = conv_bn_relu(pooled, pool_projection, 1, f"{name}_pool_proj")
    return keras.layers.Concatenate(name=name)([branch_1, branch_3, branch_5, pooled])


def googlenet(inputs: Any) -> Any:
    """GoogLeNet / Inception v1 (Szegedy et al. 2014, table 1): 224 px in, 7x7x1024 out."""
    # "same" pooling rounds up like the paper's Caffe model: 112 -> 56 -> 28 -> 14 -> 7.
    x = conv_bn_relu(inputs, 64, 7, "conv1", strides=2)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = conv_bn_relu(x, 64, 1, "conv2_reduce")
    x = conv_bn_relu(x, 192, 3, "conv2")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    for module, widths in GOOGLENET_MODULES.items():
        if module in ("4a", "5a"):
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{module[0]}")(x)
        x = inception_module(x, widths, f"inception_{module}")
    # The paper's 7x7 average pool, 40% dropout and linear layer are the head (HeadParams).
    return x


def basic_block(x: Any, filters: int, strides: int, name: str) -> Any:
    """ResNet basic block: two 3x3 convolutions; projection shortcut when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        # Option B of the paper: a 1x1 projection only where dimensions increase.
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_shortcut_conv"
        )(x)
        shortcut = batch_norm(shortcut, f"{name}_shortcut_bn")
    x = conv_bn_relu(x, filters, 3, f"{name}_1", strides=strides)
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(x)
    x = batch_norm(x, f"{name}_2_bn")
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def resnet(inputs: Any, blocks: tuple[int, int, int, int]) -> Any:
    """ResNet with basic blocks (He et al. 2015, table 1): 224 px in, 7x7x512 out."""
    x = conv_bn_relu(inputs, 64, 7, "conv1", strides=2)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for stage, (count, filters) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
        for block in range(count):
            strides = 2 if stage > 0 and block == 0 else 1
            x = basic_block(x, filters, strides, f"conv{stage + 2}_block{block + 1}")
    return x


def wide_basic_block(x: Any, filters: int, strides: int, name: str) -> Any:
    """Pre-activation wide block B(3,3): BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus shortcut."""
    activated = keras.layers.ReLU(name=f"{name}_preact_relu")(batch_norm(x, f"{name}_preact_bn"))
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_shortcut_conv"
        )(activated)
    y = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_1_conv"
    )(activated)
    y = keras.layers.ReLU(name=f"{name}_1_relu")(batch_norm(y, f"{name}_1_bn"))
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def wide_resnet(inputs: Any, depth: int, width: int) -> Any:
    """WRN-depth-width (Zagoruyko & Komodakis 2016, CIFAR layout): S px in, S/4 x S/4 x 64k out."""
    blocks = (depth - 4) // 6
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    for group, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks):
            strides = 2 if group > 0 and block == 0 else 1
            x = wide_basic_block(x, filters, strides, f"conv{group + 2}_block{block + 1}")
    # Pre-activation blocks end on an addition; the last BN-ReLU belongs to the body.
    return keras.layers.ReLU(name="final_relu")(batch_norm(x, "final_bn"))


def compact_cnn(inputs: Any) -> Any:
    """A compact VGG-style network for small datasets trained from scratch: S px in, S/16 out.

    Four stages of two 3x3 conv-BN-ReLU units (32, 64, 128, 256 filters) with 2x2 max pooling
    between them: 1.2M parameters, about a tenth of ResNet-18, so a few hundred radiographs
    fit it without it memorising them, and its last map (6x6 at the default 96 px, 8x8 at 128)
    still localises for Grad-CAM.
    """
    x = inputs
    for stage, filters in enumerate(COMPACT_CNN_FILTERS, start=1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{stage - 1}")(x)
        x = conv_bn_relu(x, filters, 3, f"conv{stage}_1")
        x = conv_bn_relu(x, filters, 3, f"conv{stage}_2")
    return keras.layers.MaxPooling2D(2, name=f"pool{len(COMPACT_CNN_FILTERS)}")(x)


def architecture_body(name: str) -> Callable[[Any], Any]:
    """The function that adds model `name`'s layers to an input tensor."""
    if name == "alexnet":
        return alexnet
    if name == "googlenet":
        return googlenet
    if name == "compact_cnn":
        return compact_cnn
    if name in RESNET_BLOCKS:
        blocks = RESNET_BLOCKS[name]
        return lambda inputs: resnet(inputs, blocks)
    wide = wide_resnet_shape(name)
    if wide is not None:
        depth, width = wide
        return lambda inputs: wide_resnet(inputs, depth, width)
    raise PipelineError(
        f"model = {name!r}: not an architecture built in cxr/models/architectures.py"
    )


def build_architecture(name: str, image_size: int) -> keras.Model:
    """Headless model `name` for (image_size, image_size, 3) inputs in [0, 1], named backbone."""
    inputs = keras.Input((image_size, image_size, 3), name="backbone_image")
    outputs = architecture_body(name)(inputs)
    return keras.Model(inputs, outputs, name=layer_names.BACKBONE)


def googlenet_auxiliary_classifier(tap: Any, class_count: int, name: str, seed: int) -> Any:
    """GoogLeNet's auxiliary classifier on a 4a / 4d feature map (needs it at least 5x5).

    5x5/3 average pooling, 1x1 convolution to 128, fully connected 1024, 70% dropout, softmax.
    """
    x = keras.layers.AveragePooling2D(5, strides=3, name=f"{name}_pool")(tap)
    x = conv_bn_relu(x, 128, 1, f"{name}_reduce")
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    x = keras.layers.Dense(1024, activation="relu", name=f"{name}_dense")(x)
    x = keras.layers.Dropout(0.7, seed=seed, name=f"{name}_dropout")(x)
    return keras.layers.Dense(class_count, activation="softmax", dtype="float32", name=name)(x)
