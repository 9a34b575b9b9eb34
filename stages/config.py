"""params.yaml, validated once on load into frozen typed objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.backbones import BACKBONES, WEIGHT_CHOICES
from stages.errors import ParamsError
from stages.phantoms import PHANTOM_CLASSES


class Section(BaseModel):
    """A params section: immutable, and an unknown key is an error rather than silently ignored."""

    # strict: YAML `yes` or `true` must not pass as an epoch count.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SyntheticParams(Section):
    """The embedded phantom generator used when data.source is `synthetic`."""

    counts: dict[str, int] = Field(description="images per class")
    image_size: int = Field(ge=32, le=1024)
    difficulty: float = Field(ge=0.0, le=1.0, description="lesion contrast: 0 subtle, 1 obvious")
    seed: int

    @field_validator("counts")
    @classmethod
    def _known_classes(cls, counts: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(counts) - set(PHANTOM_CLASSES))
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}; allowed: {', '.join(PHANTOM_CLASSES)}")
        if any(count < 0 for count in counts.values()):
            raise ValueError("counts must be >= 0")
        if sum(1 for count in counts.values() if count > 0) < 2:
            raise ValueError("at least two classes need a positive count")
        return counts


class DataParams(Section):
    """Where ingest takes the images from."""

    source: str = Field(min_length=1, description="`synthetic` or a directory of class folders")
    synthetic: SyntheticParams


class BuildParams(Section):
    """Exploration plots drawn by the dataframe build."""

    histogram_images_per_class: int = Field(ge=1)
    histogram_bins: int = Field(ge=2, le=256)


class SplitParams(Section):
    """Stratified train / val / test split and optional undersampling of train."""

    val_fraction: float = Field(gt=0.0, lt=1.0)
    test_fraction: float = Field(gt=0.0, lt=1.0)
    undersample: bool

    @model_validator(mode="after")
    def _positive_train_share(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g}: "
                "must be < 1 to leave a positive train share"
            )
        return self


class HeadParams(Section):
    """Classification head on top of the backbone."""

    pooling: Literal["avg", "max", "flatten"]
    dense_units: int = Field(ge=0, description="0 means no hidden dense layer")
    dropout: float = Field(ge=0.0, lt=1.0)


class AugmentParams(Section):
    """Random augmentation layers inside the model (active only while training)."""

    horizontal_flip: bool
    rotation: float = Field(ge=0.0, le=0.5, description="fraction of a full turn")
    zoom: float = Field(ge=0.0, lt=1.0)
    contrast: float = Field(ge=0.0, lt=1.0)


class TrainParams(Section):
    """Training of one backbone."""

    image_size: int = Field(ge=32, le=1024)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    fine_tune_epochs: int = Field(ge=0)
    fine_tune_layers: int = Field(ge=0)
    fine_tune_learning_rate: float = Field(gt=0.0)
    weights: str = Field(min_length=1)
    early_stopping_patience: int = Field(ge=1)
    reduce_lr_patience: int = Field(ge=1)
    reduce_lr_factor: float = Field(gt=0.0, lt=1.0)
    mixed_precision: Literal["auto", "on", "off"]
    deterministic: bool
    head: HeadParams
    augment: AugmentParams

    @field_validator("weights")
    @classmethod
    def _weights_choice(cls, weights: str) -> str:
        # Anything else is taken as a weights file path, checked when the backbone is built.
        if weights.lower() in WEIGHT_CHOICES:
            return weights.lower()
        if not weights.endswith((".h5", ".keras", ".weights.h5")):
            raise ValueError(
                f"must be one of {', '.join(WEIGHT_CHOICES)} or a .h5 / .keras weights file path"
            )
        return weights


class EvaluateParams(Section):
    """Evaluation on the test split."""

    batch_size: int = Field(ge=1)
    misclassified_grid: int = Field(ge=0, description="most misclassified images drawn")


class CompareParams(Section):
    """The leaderboard across backbones."""

    rank_by: Literal["test_accuracy", "test_f1_macro", "test_roc_auc_ovr"]


class Params(Section):
    """All of params.yaml."""

    seed: int
    model: str
    mlflow_experiment: str = Field(min_length=1)
    data: DataParams
    build: BuildParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    compare: CompareParams

    @field_validator("model")
    @classmethod
    def _known_backbone(cls, model: str) -> str:
        if model not in BACKBONES:
            raise ValueError(f"unknown backbone; known: {', '.join(sorted(BACKBONES))}")
        return model


def _one_line(error: ValidationError, source: Path) -> str:
    """Describe the first validation error as `file: key = value: what is allowed`."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key; remove it or check its spelling"
    if first["type"] == "missing":
        return f"{source}: {key}: missing; add it to {source.name}"
    return f"{source}: {key} = {first.get('input')!r}: {message}"


def parse_params(raw: Any, source: Path = Path("params.yaml")) -> Params:
    """Validate an already-loaded params mapping."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: must be a YAML mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_one_line(error, source)) from None


def load_params(path: Path) -> Params:
    """Read and validate params.yaml; any problem raises ParamsError naming the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_params(raw, path)


def flatten_params(params: Params) -> dict[str, Any]:
    """Flatten params into dotted keys (train.head.dropout) for MLflow."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", params.model_dump())
    return flat
