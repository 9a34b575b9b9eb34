"""params.yaml, validated once on load into frozen typed objects.

Imports no TensorFlow, scikit-learn, SciPy or model code: the names it checks come from
cxr.core.registry, so every stage validates all of params.yaml in a fraction of a second.
"""

from __future__ import annotations

import codecs
import copy
import re
import string
from pathlib import Path, PureWindowsPath
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cxr.core.errors import ParamsError
from cxr.core.registry import (
    PHANTOM_CLASSES,
    WEIGHT_CHOICES,
    googlenet_aux_problem,
    image_size_problem,
    is_baseline,
    model_problem,
)


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
    exposure: float = Field(
        gt=0.0, le=4.0, description="gain on every intensity (another scanner); 1 = as drawn"
    )
    positioning: float = Field(
        ge=0.0, le=4.0, description="spread of the patients' pose (shift, tilt, scale); 1 = narrow"
    )

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


class CsvParams(Section):
    """The metadata table of the csv layout: which file, and which columns say what."""

    file: str = Field(description="path of the table inside the dataset root; '' = none")
    file_column: str = Field(min_length=1)
    file_template: str = Field(
        description="each row's image from its values when there is no file column, e.g. "
        "images/{patientid}.* (`*` matches one file); '' = read file_column"
    )
    label_column: str = Field(min_length=1)
    group_column: str = Field(description="e.g. a patient id column; '' = no groups")
    images_dir: str = Field(description="folder file_column and file_template are relative to")
    encoding: str = Field(
        min_length=1, description="auto (UTF-8, else cp1252, else latin-1) or a Python codec"
    )

    @field_validator("file", "file_template", "images_dir")
    @classmethod
    def _inside_the_dataset(cls, path: str, info: ValidationInfo) -> str:
        # A table or folder outside the source would not be copied into data/raw, so DVC
        # would not see it change; it has to travel with the images.
        parts = path.replace("\\", "/").split("/")
        if path.startswith(("/", "\\", "~")) or PureWindowsPath(path).drive or ".." in parts:
            what = "the table" if info.field_name == "file" else "it"
            raise ValueError(
                "must be a path inside the dataset (no leading /, ~ or '..'); put "
                f"{what} inside the data.source folder or archive, so DVC tracks it"
            )
        return path

    @field_validator("file_template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        if not template:
            return template
        try:
            fields = [
                (name, spec, conversion)
                for _text, name, spec, conversion in string.Formatter().parse(template)
                if name is not None
            ]
        except ValueError as error:
            raise ValueError(f"not a template ({error}); write {{{{ and }}}} for a brace") from None
        if not fields or any(not name or spec or conversion for name, spec, conversion in fields):
            raise ValueError(
                "needs one or more plain {column} fields (no format spec), e.g. "
                "images/{patientid}.*"
            )
        return template

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        if encoding != "auto":
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError(
                    "unknown encoding; use auto or a Python codec such as utf-8, cp1252, latin-1"
                ) from None
        return encoding


class DataParams(Section):
    """Where ingest takes the images from, and how their folders say the class."""

    source: str = Field(
        min_length=1,
        description="`synthetic`, a directory, a .zip/.tar/.tar.gz archive, an http(s) URL of "
        "one, or kaggle:<owner>/<dataset>",
    )
    sha256: str = Field(description="hex digest pinning a URL source; '' for other sources")
    csv: CsvParams
    # After csv, so its validator can see the csv section.
    layout: Literal["auto", "class_folders", "split_folders", "radiography", "binary", "csv"]
    label_map: dict[str, str] = Field(description="raw or canonical label -> class name")
    classes: list[str] = Field(description="classes to keep; empty = all")
    group_pattern: str = Field(
        description="regex on each file's path in the dataset; its first group is the group"
    )
    synthetic: SyntheticParams
    # Checked on an archive's member table before anything is written: a few hundred KB can
    # declare gigabytes (a zip bomb), and data/raw plus its DVC cache copy would hold them twice.
    max_extract_bytes: int = Field(
        ge=1, description="largest total uncompressed size an archive source may extract to"
    )
    max_extract_files: int = Field(
        ge=1, description="most members (files and folders) an archive source may hold"
    )

    # The label_map key of a blank label: `''` cannot be typed on the `dvc exp run -S` line
    # (Hydra's override grammar has no quoted or empty mapping keys); `''` in YAML means it too.
    BLANK_LABEL: ClassVar[str] = "_blank_"

    @field_validator("source")
    @classmethod
    def _kaggle_handle(cls, source: str) -> str:
        if source.startswith("kaggle:") and not re.fullmatch(
            r"kaggle:[\w.-]+/[\w.-]+(/versions/\d+)?", source
        ):
            raise ValueError(
                "write kaggle:<owner>/<dataset>, e.g. kaggle:pranavraikokte/covid19-image-dataset"
            )
        return source

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, sha256: str, info: ValidationInfo) -> str:
        if sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise ValueError("must be '' or the 64 hex digits of the archive's sha256")
        if not sha256 and str(info.data.get("source", "")).startswith(("http://", "https://")):
            raise ValueError(
                "a URL source needs the sha256 of its archive (e.g. from `sha256sum`), "
                "so the download is verified"
            )
        return sha256.lower()

    @field_validator("layout")
    @classmethod
    def _csv_table_given(cls, layout: str, info: ValidationInfo) -> str:
        csv = info.data.get("csv")
        if layout == "csv" and csv is not None and not csv.file:
            raise ValueError("needs data.csv.file, the metadata table relative to the dataset")
        return layout

    @field_validator("label_map", mode="before")
    @classmethod
    def _numeric_keys_as_text(cls, label_map: Any) -> Any:
        # YAML reads `0: normal` with an int key; folder names and CSV labels are text.
        if isinstance(label_map, dict):
            label_map = {
                str(key) if isinstance(key, int) and not isinstance(key, bool) else key: value
                for key, value in label_map.items()
            }
            # One spelling of the blank label, so logged params never hold an empty key.
            if "" in label_map:
                if cls.BLANK_LABEL in label_map:
                    raise ValueError(f"'' and {cls.BLANK_LABEL!r} both map the blank label")
                label_map[cls.BLANK_LABEL] = label_map.pop("")
        return label_map

    @field_validator("label_map")
    @classmethod
    def _named_classes(cls, label_map: dict[str, str]) -> dict[str, str]:
        for raw, name in label_map.items():
            if not any(character.isalpha() for character in name):
                raise ValueError(f"{raw!r} -> {name!r}: a class name needs a letter")
        return label_map

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: list[str]) -> list[str]:
        if not all(any(character.isalpha() for character in name) for name in classes):
            raise ValueError("class names need a letter")
        if len(classes) == 1:
            raise ValueError("a classifier needs at least two classes; use [] for all")
        return classes

    @field_validator("group_pattern")
    @classmethod
    def _one_capturing_group(cls, pattern: str) -> str:
        if not pattern:
            return pattern
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"not a regular expression ({error})") from None
        if compiled.groups < 1:
            raise ValueError(
                "needs a capturing group (...) whose text is the group, e.g. (\\d{8})_\\d+\\.png$"
            )
        return pattern

    @model_validator(mode="after")
    def _one_source_of_groups(self) -> DataParams:
        if self.group_pattern and self.csv.group_column:
            raise CrossKeyError(
                "data.group_pattern",
                self.group_pattern,
                f"data.csv.group_column = {self.csv.group_column!r} is set too; groups come "
                "from one of them, set the other to ''",
            )
        return self


# An external dataset's options left out take these values: the defaults of params.yaml's
# `data` section (tests/core/test_params.py checks the two agree), never the training data's own
# values, whose layout, table or label map describe another collection.
EXTERNAL_DATA_DEFAULTS: dict[str, Any] = {
    "sha256": "",
    "layout": "auto",
    "label_map": {},
    "classes": [],
    "group_pattern": "",
    "csv": {
        "file": "",
        "file_column": "file",
        "file_template": "",
        "label_column": "label",
        "group_column": "",
        "images_dir": "",
        "encoding": "auto",
    },
    "synthetic": {
        "counts": {"covid": 120, "normal": 200, "viral_pneumonia": 90},
        "image_size": 128,
        "difficulty": 0.5,
        "seed": 2026,
        "exposure": 1.0,
        "positioning": 3.0,
    },
    "max_extract_bytes": 20_000_000_000,
    "max_extract_files": 2_000_000,
}
# evaluate.external.<name>: a name that is safe in a DVC stage name, a path and an MLflow metric.
EXTERNAL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
# compare.rank_by: the internal test metrics, or external_<name>_<one of these>.
RANK_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "test_balanced_accuracy")
EXTERNAL_RANK_METRICS = ("accuracy", "f1_macro", "roc_auc_ovr", "balanced_accuracy")


def external_metric(dataset: str, metric: str) -> str:
    """The MLflow and leaderboard name of an external dataset's metric."""
    return f"external_{dataset}_{metric}"


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `defaults`, mappings merged key by key (label_map and counts replaced whole)."""
    merged = dict(defaults)
    for key, value in given.items():
        sections = key in ("csv", "synthetic") and isinstance(value, dict)
        merged[key] = _merged(defaults[key], value) if sections else value
    return merged


class ExternalDataParams(DataParams):
    """One external dataset (evaluate.external.<name>): `source` and any option of `data`."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, raw: Any) -> Any:
        # A user writes only what differs from the defaults, e.g. {source: ~/site-b}.
        if not isinstance(raw, dict):
            return raw
        return _merged(copy.deepcopy(EXTERNAL_DATA_DEFAULTS), raw)


class BuildParams(Section):
    """Decoding every image once into the pixel cache, and the exploration plots."""

    cache_size: int = Field(ge=32, le=1024, description="side of the cached gray squares")
    resize: Literal["pad", "crop", "stretch"] = Field(
        description="non-square images: pad to a square (aspect kept), crop the centre, or stretch"
    )
    # Pillow refuses images above 2 x 89,478,485 pixels as decompression bombs; the build's
    # own limit stays below its warning threshold so only this limit ever applies.
    max_pixels: int = Field(ge=1, le=89_478_485, description="larger images are rejected")
    workers: int = Field(ge=0, description="decoding processes; 0 = every available core")
    histogram_images_per_class: int = Field(ge=1)
    histogram_bins: int = Field(ge=2, le=256)


class SplitParams(Section):
    """Leakage-safe stratified train / val / test split and optional undersampling of train."""

    val_fraction: float = Field(gt=0.0, lt=1.0)
    test_fraction: float = Field(gt=0.0, lt=1.0)
    undersample: bool
    resplit: bool = Field(description="ignore the source's own train / test folders")
    duplicates: Literal["drop-from-test", "keep", "fail"] = Field(
        description="copies of one image across the given train and test splits"
    )
    near_duplicate_distance: int = Field(
        ge=0, le=32, description="perceptual-hash bits; images this close stay together, 0 = off"
    )
    folds: int = Field(
        ge=0, le=20, description="K-fold: units dealt into K folds, fold `fold` is test; 0 = off"
    )
    fold: int = Field(ge=0, description="the test fold when folds > 0 (0 .. folds - 1)")

    @property
    def test_share(self) -> float:
        """The share of units held out for test: one fold, or test_fraction."""
        return 1.0 / self.folds if self.folds else self.test_fraction

    @model_validator(mode="after")
    def _positive_train_share(self) -> SplitParams:
        if self.folds == 1:
            raise ValueError("folds = 1: use 0 (one split by test_fraction) or 2 and more")
        if self.fold >= max(self.folds, 1):
            allowed = f"0 .. {self.folds - 1}" if self.folds else "0 while folds = 0"
            raise ValueError(f"fold = {self.fold}: must be {allowed}")
        if self.val_fraction + self.test_share >= 1.0:
            held = "1 / folds" if self.folds else "test_fraction"
            raise ValueError(
                f"val_fraction + {held} = {self.val_fraction + self.test_share:g}: "
                "must be < 1 to leave a positive train share"
            )
        return self


class HeadParams(Section):
    """Classification head on the backbone: pool, then hidden Dense layers, then softmax.

    Each hidden layer is Dense (ReLU, L2) -> BatchNorm (if batch_norm) -> Dropout; without
    hidden layers the dropout follows the pooling. L2 applies to every head Dense layer.
    """

    pooling: Literal["avg", "max", "flatten"]
    dense_units: list[int] = Field(description="hidden Dense widths, e.g. [512, 256]; [] = none")
    batch_norm: bool = Field(description="BatchNormalization after each hidden Dense layer")
    dropout: float = Field(ge=0.0, lt=1.0)
    l2: float = Field(ge=0.0, description="L2 kernel regulariser factor of the head; 0 = none")
    googlenet_aux: bool = Field(description="GoogLeNet's two auxiliary classifiers in training")

    @field_validator("dense_units", mode="before")
    @classmethod
    def _one_layer_shorthand(cls, units: Any) -> Any:
        # `-S train.head.dense_units=256` is one hidden layer; 0 is none (the old int form).
        if isinstance(units, int) and not isinstance(units, bool):
            return [] if units == 0 else [units]
        return units

    @field_validator("dense_units")
    @classmethod
    def _positive_widths(cls, units: list[int]) -> list[int]:
        if any(width < 1 for width in units):
            raise ValueError("every hidden layer needs >= 1 unit; use [] for no hidden layer")
        return units


class AugmentParams(Section):
    """Random augmentation layers inside the model (active only while training)."""

    horizontal_flip: bool
    rotation: float = Field(ge=0.0, le=0.5, description="fraction of a full turn")
    zoom: float = Field(ge=0.0, lt=1.0)
    translation: float = Field(ge=0.0, le=0.5, description="fraction of the image side")
    contrast: float = Field(ge=0.0, lt=1.0)
    brightness: float = Field(ge=0.0, le=1.0, description="fraction of the 0-255 range")


class CosineParams(Section):
    """Cosine annealing per step (train.schedule: cosine), optionally warm and restarting."""

    warmup_epochs: int = Field(ge=0, description="linear warmup from 0 to the phase's rate")
    restart_epochs: int = Field(ge=0, description="first restart period; 0 = no restarts")
    restart_multiplier: float = Field(ge=1.0, description="each period is this times the last")
    final_fraction: float = Field(ge=0.0, lt=1.0, description="floor, as a fraction of the rate")

    @model_validator(mode="after")
    def _warmup_or_restarts(self) -> CosineParams:
        # keras' CosineDecayRestarts has no warmup; a custom schedule would need registering
        # wherever the saved model is loaded.
        if self.warmup_epochs > 0 and self.restart_epochs > 0:
            raise ValueError(
                "warmup_epochs and restart_epochs cannot both be > 0; set one of them to 0"
            )
        return self


class AdaptiveParams(Section):
    """The seed's adaptive rate (train.schedule: adaptive): train accuracy, then val loss."""

    accuracy_threshold: float = Field(
        gt=0.0, le=1.0, description="watch train accuracy until it reaches this, then val loss"
    )
    patience: int = Field(ge=1, description="epochs without improvement before a reduction")
    factor: float = Field(gt=0.0, lt=1.0, description="the rate is multiplied by this")
    stop_patience: int = Field(ge=1, description="stop after this many reductions in a row")


class BaselineParams(Section):
    """Classical scikit-learn baselines (model: pixel_logreg, pixel_svm, pixel_rf)."""

    image_size: int = Field(ge=8, le=256, description="side of the flattened gray pixels")
    pca_components: int = Field(ge=0, description="PCA before the classifier; 0 = none")
    c: float = Field(gt=0.0, description="inverse regularisation of logreg and svm")
    trees: int = Field(ge=1, description="trees of pixel_rf")


MEMBER_SEED_STEP = 100  # member k of a seed ensemble trains with seed + 100 k


def member_seed(seed: int, member: int) -> int:
    """The seed of member `member` of a seed ensemble (train.members); member 0 has `seed`."""
    return seed + MEMBER_SEED_STEP * member


class TrainParams(Section):
    """Training of one backbone."""

    image_size: int = Field(ge=32, le=1024)
    batch_size: int = Field(ge=1)
    memory_cache_mb: float = Field(
        ge=0.0, description="resized train+val pixels held in memory up to this size, else streamed"
    )
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    optimizer: Literal["adam", "adamw"]
    weight_decay: float = Field(ge=0.0, lt=1.0, description="decoupled weight decay of adamw")
    label_smoothing: float = Field(ge=0.0, lt=0.5, description="0 = hard one-hot targets")
    mixup: float = Field(
        ge=0.0, le=1.0, description="MixUp alpha on training batches (keras.layers.MixUp); 0 = off"
    )
    ema_momentum: float = Field(
        ge=0.0,
        lt=1.0,
        description="moving average of the weights (Adam's use_ema), validated and saved; 0 = off",
    )
    members: int = Field(
        ge=1,
        le=20,
        description="networks trained on the same split, seeds seed + 100 k; the saved model "
        "averages their probabilities (1 = one network)",
    )
    fine_tune_epochs: int = Field(ge=0)
    fine_tune_layers: int = Field(ge=0)
    fine_tune_learning_rate: float = Field(gt=0.0)
    weights: str = Field(min_length=1)
    early_stopping_patience: int = Field(
        ge=0, description="epochs without a better val_loss before stopping; 0 = never stop early"
    )
    restore_best_weights: bool = Field(
        description="end each phase on its best val_loss epoch's weights; false = the last epoch's"
    )
    time_budget_minutes: float = Field(
        ge=0.0, description="stop after the epoch that passes this much training time; 0 = none"
    )
    reduce_lr_patience: int = Field(ge=1)
    reduce_lr_factor: float = Field(gt=0.0, lt=1.0)
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"]
    deterministic: bool
    schedule: Literal["constant", "cosine", "adaptive"]
    cosine: CosineParams
    adaptive: AdaptiveParams
    class_weight: Literal["none", "balanced"]
    cache_features: Literal["auto", "on", "off"]
    jit_compile: Literal["auto", "on", "off"]
    resume: bool
    baseline: BaselineParams
    head: HeadParams
    augment: AugmentParams

    @model_validator(mode="after")
    def _decay_needs_adamw(self) -> TrainParams:
        if self.optimizer == "adam" and self.weight_decay > 0:
            raise CrossKeyError(
                "train.weight_decay",
                self.weight_decay,
                "needs train.optimizer: adamw (decoupled decay); set it, or weight_decay: 0",
            )
        return self

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
    bootstrap_samples: int = Field(
        ge=0, le=100_000, description="resamples for the 95% intervals; 0 = no intervals"
    )
    calibration_bins: int = Field(ge=2, le=100, description="equal-width confidence bins")
    gradcam_images: int = Field(
        ge=0, le=16, description="correct and wrong images per class explained; 0 = none"
    )
    tta: bool = Field(
        description="test-time augmentation: mean probabilities over the image, its mirror "
        "and four small shifts"
    )
    # Defaults to none, so a params.yaml from before external validation still loads.
    external: dict[str, ExternalDataParams] = Field(
        default_factory=dict,
        description="named datasets from other sources, each scored by its own DVC stage",
    )

    @field_validator("external", mode="before")
    @classmethod
    def _safe_names(cls, external: Any) -> Any:
        for name in external if isinstance(external, dict) else ():
            if not isinstance(name, str) or not re.fullmatch(EXTERNAL_NAME_PATTERN, name):
                raise ValueError(
                    f"dataset name {name!r}: use letters, digits, '_' and '-' (up to 64, "
                    "starting with a letter or digit); it names a DVC stage, a folder and "
                    "MLflow metrics"
                )
        return external


class CompareParams(Section):
    """The leaderboard across models, and the registry's champion."""

    rank_by: str = Field(
        description="a test metric, or external_<name>_<metric> of an evaluate.external dataset"
    )
    significance: float = Field(gt=0.0, lt=1.0, description="McNemar p below this: significant")
    registered_model: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="MLflow registry name whose `champion` alias compare moves",
    )
    ensemble_size: int = Field(
        ge=0, description="top models whose mean probabilities make the ensemble row; 0 = none"
    )

    @field_validator("rank_by")
    @classmethod
    def _rankable(cls, rank_by: str) -> str:
        # Which external names exist is checked with evaluate.external, in Params.
        external = rf"external_{EXTERNAL_NAME_PATTERN}_({'|'.join(EXTERNAL_RANK_METRICS)})"
        if rank_by not in RANK_METRICS and not re.fullmatch(external, rank_by):
            raise ValueError(
                f"must be one of {', '.join(RANK_METRICS)}, or external_<name>_<metric> with "
                f"<metric> one of {', '.join(EXTERNAL_RANK_METRICS)}"
            )
        return rank_by

    @field_validator("ensemble_size")
    @classmethod
    def _ensemble_of_two_or_more(cls, size: int) -> int:
        if size == 1:
            raise ValueError("an ensemble needs at least 2 models; use 0 for no ensemble row")
        return size


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
    def _known_model(cls, model: str) -> str:
        # Any wrn_<depth>_<k> with a valid depth is a backbone too, beyond the names listed.
        problem = model_problem(model)
        if problem is not None:
            raise ValueError(problem)
        return model

    @model_validator(mode="after")
    def _rank_by_a_known_dataset(self) -> Params:
        rank_by = self.compare.rank_by
        if rank_by in RANK_METRICS:
            return self
        names = sorted(self.evaluate.external)
        if not any(
            rank_by == external_metric(name, metric)
            for name in names
            for metric in EXTERNAL_RANK_METRICS
        ):
            known = f"evaluate.external holds {', '.join(names)}" if names else "it is empty"
            raise CrossKeyError(
                "compare.rank_by", rank_by, f"names no evaluate.external dataset ({known})"
            )
        return self

    @model_validator(mode="after")
    def _sizes_fit(self) -> Params:
        # Checked here, not when train starts, so a bad combination stops `dvc repro` before
        # ingest and build spend minutes on the data.
        image_size = self.train.baseline.image_size if is_baseline(self.model) else None
        key = "train.baseline.image_size" if image_size is not None else "train.image_size"
        image_size = image_size or self.train.image_size
        if image_size > self.build.cache_size:
            raise CrossKeyError(
                key,
                image_size,
                f"larger than build.cache_size = {self.build.cache_size}; raise "
                f"build.cache_size to at least {image_size} or lower {key}",
            )
        if is_baseline(self.model):
            return self
        problem = image_size_problem(self.model, self.train.image_size)
        if problem is not None:
            raise CrossKeyError("train.image_size", self.train.image_size, problem)
        if self.train.head.googlenet_aux:
            problem = googlenet_aux_problem(self.model, self.train.image_size)
            if problem is not None:
                raise CrossKeyError("train.head.googlenet_aux", True, problem)
        return self


class CrossKeyError(ValueError):
    """A value that is valid alone but not with another key's value; names the key."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        super().__init__(f"{key} = {value!r}: {problem}")
        self.key = key


def _one_line(error: ValidationError, source: Path) -> str:
    """Describe the first validation error as `file: key = value: what is allowed`."""
    first = error.errors()[0]
    cross_key = (first.get("ctx") or {}).get("error")
    if isinstance(cross_key, CrossKeyError):
        return f"{source}: {cross_key}"
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
