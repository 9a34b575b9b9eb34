"""Tests for the name registry (cxr/core/registry.py) that params and the model code share."""

from __future__ import annotations

import typing

import pytest

from cxr.core.errors import PipelineError
from cxr.core.params import TrainParams
from cxr.core.registry import (
    BACKBONES,
    BASELINE_NAMES,
    OPTIMIZERS,
    SCRATCH_OPTIMIZERS,
    backbone_spec,
    googlenet_aux_problem,
    image_size_problem,
    is_baseline,
    model_problem,
    training_optimizer,
    training_rate,
)


@pytest.mark.parametrize("name", [*BACKBONES, *BASELINE_NAMES, "wrn_22_2"])
def test_every_listed_name_and_any_valid_wide_resnet_is_a_model(name: str) -> None:
    assert model_problem(name) is None


def test_an_unknown_model_lists_every_known_name() -> None:
    problem = model_problem("resnet9000")
    assert problem is not None and problem.startswith("unknown model; known: ")
    assert all(name in problem for name in [*BACKBONES, *BASELINE_NAMES])
    assert "wrn_<depth>_<k>" in problem


def test_a_wide_resnet_with_a_bad_depth_says_which_depths_exist() -> None:
    assert model_problem("wrn_15_2") == (
        "a wide ResNet is wrn_<depth>_<k> with depth = 6n + 4 >= 10 and k >= 1, "
        "e.g. wrn_16_4 or wrn_28_10"
    )


def test_baselines_are_not_backbones() -> None:
    assert is_baseline("pixel_logreg") and not is_baseline("vgg16")
    with pytest.raises(PipelineError, match="'pixel_svm': a baseline, not a Keras backbone"):
        backbone_spec("pixel_svm")


def test_size_limits_come_from_the_spec() -> None:
    assert image_size_problem("inceptionv3", 75) is None
    assert image_size_problem("inceptionv3", 74) == (
        "inceptionv3 needs at least 75 px; set train.image_size >= 75"
    )
    assert googlenet_aux_problem("googlenet", 65) is None
    assert "need train.image_size >= 65" in str(googlenet_aux_problem("googlenet", 64))


@pytest.mark.parametrize(
    ("setting", "model", "pretrained", "expected"),
    [
        ("auto", "mobilenetv2", False, "sgd"),  # measured: adamw memorises, sgd generalises
        ("auto", "mobilenetv2", True, "adamw"),  # head and fine-tuning keep adamw
        ("auto", "resnet18", False, "sgd"),  # measured: as high or higher on every collection
        ("auto", "resnet50", False, "sgd"),  # measured: adamw fails the phantoms, sgd learns them
        ("auto", "resnet50", True, "adamw"),
        ("auto", "resnet34", False, "adamw"),  # not measured: the default
        ("auto", "compact_cnn", False, "adamw"),
        ("auto", "pixel_logreg", False, "adamw"),
        ("adam", "mobilenetv2", False, "adam"),  # a choice is kept
        ("sgd", "resnet18", True, "sgd"),
    ],
)
def test_the_optimizer_auto_gives_each_backbone(setting, model, pretrained, expected):
    assert training_optimizer(setting, model, pretrained) == expected


def test_the_rate_auto_follows_the_optimizer_and_a_number_is_kept():
    assert [training_rate("auto", name) for name in OPTIMIZERS] == [0.001, 0.001, 0.01]
    assert training_rate(0.05, "adam") == 0.05
    assert set(SCRATCH_OPTIMIZERS.values()) <= set(OPTIMIZERS)
    assert set(SCRATCH_OPTIMIZERS) <= set(BACKBONES)


def test_the_optimizer_param_offers_auto_and_every_optimizer():
    annotation = TrainParams.model_fields["optimizer"].annotation
    assert typing.get_args(annotation) == ("auto", *OPTIMIZERS)
