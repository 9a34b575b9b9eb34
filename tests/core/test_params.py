"""Tests for params.yaml validation (cxr/core/params.py)."""

from __future__ import annotations

import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.params import (
    EXTERNAL_DATA_DEFAULTS,
    MOVED_TO_ENVIRONMENT,
    Params,
    RunSettings,
    flatten_params,
    load_params,
    parse_params,
    run_settings,
)
from cxr.core.registry import BACKBONES, PHANTOM_CLASSES

# A run setting's variable, a value and what it reads as.
SETTING_VALUES = [
    ("CXR_WORKERS", " 4 ", {"workers": 4}),
    ("CXR_MEMORY_CACHE_MB", "0.5", {"memory_cache_mb": 0.5}),
    ("CXR_RESUME", "YES", {"resume": True}),
    ("CXR_RESUME", "1", {"resume": True}),
    ("CXR_RESUME", "false", {"resume": False}),
    ("CXR_INFERENCE_BATCH_SIZE", "8", {"inference_batch_size": 8}),
    ("CXR_WORKERS", "", {"workers": 0}),
]


def _params_error(raw: Any) -> str:
    """The message of the ParamsError that parsing `raw` raises."""
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_repository_params_validate(project_root: Path) -> None:
    # Given the params.yaml committed in the repository
    path = project_root / "params.yaml"

    # When it is loaded
    params = load_params(path)

    # Then it validates into frozen typed sections
    assert isinstance(params, Params)
    assert params.model in BACKBONES
    assert 0 < params.split.val_fraction + params.split.test_fraction < 1
    with pytest.raises(ValueError):
        params.seed = 1  # type: ignore[misc]


def test_params_error_is_a_pipeline_error() -> None:
    # Given the error type stages raise for params
    # Then the stage wrapper turns it into one line like every other user error
    assert issubclass(ParamsError, PipelineError)


@pytest.mark.parametrize(
    ("section", "dotted_key"),
    [
        ((), "colour"),
        (("train",), "train.colour"),
        (("train", "head"), "train.head.colour"),
        (("data", "synthetic"), "data.synthetic.colour"),
    ],
)
def test_unknown_key_is_named_with_its_dotted_path(
    valid_params_dict: dict[str, Any], section: tuple[str, ...], dotted_key: str
) -> None:
    # Given valid params with one misspelled key added at some depth
    target = valid_params_dict
    for name in section:
        target = target[name]
    target["colour"] = "red"

    # When they are parsed
    message = _params_error(valid_params_dict)

    # Then one line names the dotted key and says it is unknown
    assert f"{dotted_key}: unknown key" in message
    assert message.startswith("params.yaml: ")


def test_missing_key_is_named(valid_params_dict: dict[str, Any]) -> None:
    # Given valid params without train.epochs
    del valid_params_dict["train"]["epochs"]

    # When they are parsed
    message = _params_error(valid_params_dict)

    # Then the message names the missing key
    assert "train.epochs: missing" in message


def test_unknown_backbone_lists_the_known_ones(valid_params_dict: dict[str, Any]) -> None:
    # Given a backbone name that does not exist
    valid_params_dict["model"] = "resnet9000"

    # When the params are parsed
    message = _params_error(valid_params_dict)

    # Then the message names the key, the value and every known backbone
    assert "model = 'resnet9000'" in message
    assert all(name in message for name in BACKBONES)


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.5, 0.5), (0.6, 0.45)])
def test_split_fractions_must_leave_a_train_share(
    valid_params_dict: dict[str, Any], val_fraction: float, test_fraction: float
) -> None:
    # Given val and test fractions that together take everything
    valid_params_dict["split"].update(val_fraction=val_fraction, test_fraction=test_fraction)

    # When the params are parsed
    message = _params_error(valid_params_dict)

    # Then the message names both fractions and the rule
    assert "val_fraction + test_fraction" in message
    assert "< 1" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epochs", 0, "train.epochs = 0"),
        ("image_size", 0, "train.image_size = 0"),
        ("image_size", 16, "train.image_size = 16"),
        ("batch_size", -1, "train.batch_size = -1"),
        ("mixed_precision", "sometimes", "train.mixed_precision = 'sometimes'"),
        ("learning_rate", 0, "train.learning_rate = 0: must be auto or a number > 0"),
        ("learning_rate", "fast", "train.learning_rate = 'fast'"),
        ("optimizer", "rmsprop", "train.optimizer = 'rmsprop'"),
    ],
)
def test_out_of_range_train_value_names_key_and_value(
    valid_params_dict: dict[str, Any], key: str, value: object, expected: str
) -> None:
    # Given valid params with one train value out of range
    valid_params_dict["train"][key] = value

    # When they are parsed
    message = _params_error(valid_params_dict)

    # Then the one-line message names the dotted key and the value
    assert expected in message


@pytest.mark.parametrize(
    ("optimizer", "rate"), [("sgd", "auto"), ("sgd", 0.05), ("auto", 1), ("adamw", 0.0003)]
)
def test_optimizers_and_rates_that_load(
    valid_params_dict: dict[str, Any], optimizer: str, rate: object
) -> None:
    valid_params_dict["train"].update(optimizer=optimizer, learning_rate=rate, weight_decay=0.01)
    train = parse_params(valid_params_dict).train
    assert (train.optimizer, train.learning_rate) == (optimizer, rate)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ("auto", "auto"),
        ("AUTO", "auto"),
        ("ImageNet", "imagenet"),
        ("none", "none"),
        ("None", "none"),
        ("weights/chest.h5", "weights/chest.h5"),
        ("weights/chest.weights.h5", "weights/chest.weights.h5"),
        ("models/backbone.keras", "models/backbone.keras"),
    ],
)
def test_weights_choices_are_normalised_and_paths_kept(
    valid_params_dict: dict[str, Any], weights: str, expected: str
) -> None:
    # Given a weights choice spelled in some way
    valid_params_dict["train"]["weights"] = weights

    # When the params are parsed
    params = parse_params(valid_params_dict)

    # Then keywords are lower-cased and file paths are kept as written
    assert params.train.weights == expected


@pytest.mark.parametrize("weights", ["garbage", "imagenet21k", "weights.txt"])
def test_unknown_weights_are_rejected_with_the_choices(
    valid_params_dict: dict[str, Any], weights: str
) -> None:
    # Given weights that are neither a keyword nor a weights file
    valid_params_dict["train"]["weights"] = weights

    # When the params are parsed
    message = _params_error(valid_params_dict)

    # Then the message names the key and value and lists what is allowed
    assert f"train.weights = {weights!r}" in message
    assert all(choice in message for choice in ("auto", "imagenet", "none", ".h5", ".keras"))


def test_unknown_synthetic_class_is_rejected(valid_params_dict: dict[str, Any]) -> None:
    # Given a synthetic count for a class the phantom generator cannot draw
    valid_params_dict["data"]["synthetic"]["counts"]["tuberculosis"] = 10

    # When the params are parsed
    message = _params_error(valid_params_dict)

    # Then the message names the counts key, the class and the allowed classes
    assert "data.synthetic.counts" in message
    assert "'tuberculosis'" in message
    assert all(label in message for label in PHANTOM_CLASSES)


def test_synthetic_needs_two_classes(valid_params_dict: dict[str, Any]) -> None:
    # Given synthetic counts with only one positive class
    valid_params_dict["data"]["synthetic"]["counts"] = {"covid": 10, "normal": 0}

    # When the params are parsed
    message = _params_error(valid_params_dict)

    # Then the message says two classes are needed
    assert "data.synthetic.counts" in message
    assert "two classes" in message


def test_non_mapping_is_rejected() -> None:
    # Given a YAML document that is a list, not sections
    # When it is parsed
    message = _params_error(["seed", 42])

    # Then the message says a mapping is expected
    assert "must be a YAML mapping" in message
    assert "list" in message


def test_missing_file_says_where_to_run(tmp_path: Path) -> None:
    # Given a directory without params.yaml
    path = tmp_path / "params.yaml"

    # When params are loaded from it
    with pytest.raises(ParamsError) as error:
        load_params(path)

    # Then one line names the file and says it was not found
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert "not found" in message


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    # Given a params.yaml that is not valid YAML
    path = tmp_path / "params.yaml"
    path.write_text("seed: 42\ntrain: [1, 2\nmodel: vgg16\n", encoding="utf-8")

    # When it is loaded
    with pytest.raises(ParamsError) as error:
        load_params(path)

    # Then one line names the file and says the YAML is invalid
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML (")


def test_loaded_file_errors_name_the_file(
    tmp_path: Path,
    valid_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
) -> None:
    # Given a params.yaml on disk with a misspelled key
    valid_params_dict["split"]["undersampel"] = True
    path = write_params(tmp_path, valid_params_dict)

    # When it is loaded
    with pytest.raises(ParamsError) as error:
        load_params(path)

    # Then the message starts with the file and names the dotted key
    assert str(error.value).startswith(f"{path}: split.undersampel: unknown key")


def test_flatten_params_gives_dotted_keys(valid_params_dict: dict[str, Any]) -> None:
    # Given validated params
    params = parse_params(valid_params_dict)

    # When they are flattened for MLflow
    flat = flatten_params(params)

    # Then nested sections become dotted keys holding plain values
    assert flat["seed"] == valid_params_dict["seed"]
    assert flat["train.head.dropout"] == valid_params_dict["train"]["head"]["dropout"]
    assert flat["split.val_fraction"] == valid_params_dict["split"]["val_fraction"]
    assert (
        flat["data.synthetic.counts.covid"]
        == valid_params_dict["data"]["synthetic"]["counts"]["covid"]
    )
    assert not any(isinstance(value, dict) for value in flat.values())
    assert "train" not in flat


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"train": {"image_size": 512}},
            "train.image_size = 512: larger than build.cache_size = 256; raise build.cache_size",
        ),
        (
            {"model": "pixel_rf", "build": {"cache_size": 32}, "train": {"image_size": 32}},
            "train.baseline.image_size = 33: larger than build.cache_size = 32",
        ),
        (
            {"model": "alexnet", "train": {"image_size": 64}},
            "train.image_size = 64: alexnet needs at least 67 px",
        ),
        (
            {"train": {"optimizer": "adam", "weight_decay": 0.01}},
            "train.weight_decay = 0.01: needs train.optimizer: adamw or sgd",
        ),
        (
            {"train": {"head": {"googlenet_aux": True}}},
            "train.head.googlenet_aux = True: only googlenet has auxiliary classifiers",
        ),
        (
            {"model": "googlenet", "train": {"image_size": 64, "head": {"googlenet_aux": True}}},
            "train.head.googlenet_aux = True: GoogLeNet's auxiliary classifiers need",
        ),
        (
            {"pretrain": {"enabled": True}, "train": {"weights": "imagenet"}},
            "pretrain.enabled = True: train.weights = 'imagenet' would start the backbone too",
        ),
        (
            {"pretrain": {"enabled": True}, "train": {"weights": "backbone.weights.h5"}},
            "pretrain.enabled = True: train.weights = 'backbone.weights.h5' would start",
        ),
    ],
)
def test_cross_key_problems_stop_loading_in_one_line(
    valid_params_dict: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    # Given values that are valid alone but not together
    def merge(target: dict[str, Any], update: dict[str, Any]) -> None:
        for key, value in update.items():
            if isinstance(value, dict):
                merge(target[key], value)
            else:
                target[key] = value

    merge(valid_params_dict, change)
    if valid_params_dict["model"] == "pixel_rf":
        # a baseline's own size equal to the cache's is fine; one pixel more is not
        valid_params_dict["train"]["baseline"]["image_size"] = 32
        parse_params(valid_params_dict)
        valid_params_dict["train"]["baseline"]["image_size"] = 33

    # When they are loaded
    with pytest.raises(ParamsError) as error:
        parse_params(valid_params_dict)

    # Then one line names the key, its value and the fix
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"params.yaml: {message}")


@pytest.mark.parametrize(
    ("pretrain", "expected"),
    [
        (
            {"extra_folders": ["a", "a"]},
            "pretrain.extra_folders = ['a', 'a']: names a folder twice",
        ),
        ({"extra_folders": [" "]}, "pretrain.extra_folders = [' ']: holds an empty path"),
        ({"positives": "patient"}, "pretrain.positives = 'patient': Input should be 'group'"),
        ({"batch_size": 1}, "pretrain.batch_size = 1: Input should be greater than or equal to 2"),
        ({"augment": {"crop_area": 0.0}}, "pretrain.augment.crop_area = 0.0"),
    ],
)
def test_bad_pretraining_params_are_one_line_errors(
    valid_params_dict: dict[str, Any], pretrain: dict[str, Any], expected: str
) -> None:
    # Given a bad pretrain value
    for key, value in pretrain.items():
        section = valid_params_dict["pretrain"]
        section[key] = {**section[key], **value} if isinstance(value, dict) else value
    # Then loading stops in one line naming it
    assert _params_error(valid_params_dict).startswith(f"params.yaml: {expected}")


def test_pretraining_a_baseline_or_with_auto_weights_loads(
    valid_params_dict: dict[str, Any],
) -> None:
    # Given pre-training on, with train.weights auto (the encoder replaces ImageNet)
    valid_params_dict["pretrain"].update(enabled=True, extra_folders=["../unlabelled"])
    assert parse_params(valid_params_dict).pretrain.enabled
    # and a baseline with ImageNet weights asked for (it has no backbone: the stage skips it)
    valid_params_dict.update(model="pixel_logreg")
    valid_params_dict["train"]["weights"] = "imagenet"
    assert parse_params(valid_params_dict).model == "pixel_logreg"


def test_loading_params_imports_no_model_or_numeric_libraries(project_root: Path) -> None:
    # Given a fresh interpreter
    code = (
        "import sys; from pathlib import Path; from cxr.core.params import load_params; "
        "load_params(Path('params.yaml')); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'scipy', 'cxr.models') "
        "if m in sys.modules))"
    )
    # When params.yaml is loaded and validated
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=project_root, capture_output=True, text=True, check=True
    )
    # Then none of TensorFlow, Keras, scikit-learn, SciPy or the model code was imported
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ({"file": "../metadata.csv"}, "data.csv.file = '../metadata.csv': must be a path inside"),
        ({"file": "/data/metadata.csv"}, "put the table inside the data.source folder or archive"),
        ({"images_dir": "~/images"}, "data.csv.images_dir = '~/images': must be a path inside"),
        ({"file_template": "images/patient.png"}, "needs one or more plain {column} fields"),
        ({"file_template": "images/{id:08d}.png"}, "needs one or more plain {column} fields"),
        ({"file_template": "images/{id.png"}, "not a template ("),
        ({"file_template": "../{id}.png"}, "must be a path inside the dataset"),
        ({"encoding": "klingon"}, "data.csv.encoding = 'klingon': unknown encoding; use auto"),
    ],
)
def test_bad_csv_params_are_one_line_errors(
    valid_params_dict: dict[str, Any], csv: dict[str, str], message: str
) -> None:
    # Given csv params with a table outside the dataset, a bad template or encoding
    valid_params_dict["data"]["csv"].update(csv)

    # When the params are parsed, then one line names the key and what is allowed
    assert message in _params_error(valid_params_dict)


def test_csv_encodings_and_templates_that_load(valid_params_dict: dict[str, Any]) -> None:
    # Given a codec name and a template with two columns and an escaped brace
    valid_params_dict["data"]["csv"].update(
        encoding="cp1252", file_template="images/{patient id}/{{scan}}_{view}.*"
    )

    # When the params are parsed, then they are kept as written
    csv = parse_params(valid_params_dict).data.csv
    assert (csv.encoding, csv.file_template) == ("cp1252", "images/{patient id}/{{scan}}_{view}.*")


def test_blank_label_key_is_one_spelling(valid_params_dict: dict[str, Any]) -> None:
    # Given label_map mapping the blank label as '' (YAML) and a digit as an int key
    valid_params_dict["data"]["label_map"] = {"": "normal", 0: "covid"}

    # When the params are parsed, then '' is stored as _blank_ (what -S can type) and 0 as '0'
    assert parse_params(valid_params_dict).data.label_map == {"_blank_": "normal", "0": "covid"}

    # and giving both spellings is an error
    valid_params_dict["data"]["label_map"] = {"": "normal", "_blank_": "covid"}
    assert "'' and '_blank_' both map the blank label" in _params_error(valid_params_dict)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("compare", "ensemble_size", 1, "compare.ensemble_size = 1: an ensemble needs at least 2"),
        ("compare", "ensemble_size", -1, "compare.ensemble_size = -1: Input should be greater"),
        ("evaluate", "tta", "yes", "evaluate.tta = 'yes': Input should be a valid boolean"),
        (
            "evaluate",
            "decision",
            "threshold",
            "evaluate.decision = 'threshold': Input should be 'argmax', 'val_macro_f1' or "
            "'val_covid_sensitivity'",
        ),
        ("evaluate", "target_sensitivity", 1.5, "evaluate.target_sensitivity = 1.5: Input should"),
        (
            "compare",
            "by",
            ["evaluate.tta"],
            "compare.by = ['evaluate.tta']: 'evaluate.tta' is not a train.<key> or "
            "pretrain.<key> param (e.g. train.members",
        ),
        ("compare", "by", ["train.member"], "'train.member' is not a train.<key> or"),
        ("compare", "by", ["train.members"] * 2, "compare.by = ['train.members', 'train.members']"),
    ],
)
def test_bad_ensemble_size_and_tta_are_one_line_errors(
    valid_params_dict: dict[str, Any], section: str, key: str, value: Any, message: str
) -> None:
    # Given an ensemble of one model, a negative size, or a TTA switch that is not a boolean
    valid_params_dict[section][key] = value

    # When the params are parsed, then one line names the key, the value and what is allowed
    assert message in _params_error(valid_params_dict)


def test_ensemble_size_zero_turns_the_row_off_and_tta_loads(
    valid_params_dict: dict[str, Any],
) -> None:
    # Given no ensemble row and TTA on
    valid_params_dict["compare"]["ensemble_size"] = 0
    valid_params_dict["evaluate"]["tta"] = True

    # When the params are parsed, then they are kept as written
    params = parse_params(valid_params_dict)
    assert (params.compare.ensemble_size, params.evaluate.tta) == (0, True)


def test_compare_by_takes_train_and_pretrain_params_and_defaults_to_none(
    valid_params_dict: dict[str, Any],
) -> None:
    # Given a params.yaml from before compare.by, then one naming two recipe params
    del valid_params_dict["compare"]["by"]
    assert parse_params(valid_params_dict).compare.by == []
    valid_params_dict["compare"]["by"] = ["train.members", "pretrain.enabled"]

    # When the params are parsed, then they are kept in their order
    assert parse_params(valid_params_dict).compare.by == ["train.members", "pretrain.enabled"]


def test_an_external_dataset_needs_only_its_source(valid_params_dict: dict[str, Any]) -> None:
    # Given an external dataset naming its source and one option
    valid_params_dict["evaluate"]["external"] = {
        "site_b": {"source": "../site-b", "label_map": {"Pneumonia": "viral_pneumonia"}},
        "phantoms-7": {"source": "synthetic", "synthetic": {"seed": 7, "exposure": 1.3}},
    }

    # When params are parsed
    external = parse_params(valid_params_dict).evaluate.external

    # Then every other option takes the data defaults; a nested section is merged key by key
    assert external["site_b"].layout == "auto" and external["site_b"].classes == []
    assert external["site_b"].label_map == {"Pneumonia": "viral_pneumonia"}
    synthetic = external["phantoms-7"].synthetic
    assert (synthetic.seed, synthetic.exposure, synthetic.image_size) == (7, 1.3, 128)


def test_external_defaults_are_the_data_defaults_of_params_yaml(project_root: Path) -> None:
    # Given the data section of the committed params.yaml (the documented defaults)
    data = yaml.safe_load((project_root / "params.yaml").read_text(encoding="utf-8"))["data"]

    # Then an external dataset's defaults are those values, its source aside
    assert {key: value for key, value in data.items() if key != "source"} == (
        EXTERNAL_DATA_DEFAULTS
    )


@pytest.mark.parametrize(
    ("external", "expected"),
    [
        ({"site_b": {}}, "evaluate.external.site_b.source: missing"),
        ({"site_b": {"source": "x", "layout": "flat"}}, "evaluate.external.site_b.layout = 'flat'"),
        ({"site_b": {"source": "x", "resize": "pad"}}, "evaluate.external.site_b.resize: unknown"),
        ({"site_b": {"source": "x", "classes": ["covid"]}}, "evaluate.external.site_b.classes"),
        ({"site b": {"source": "x"}}, "dataset name 'site b': use letters, digits"),
        ({"site_b": "../site-b"}, "evaluate.external.site_b = '../site-b'"),
    ],
)
def test_bad_external_datasets_are_one_line_errors_naming_the_key(
    valid_params_dict: dict[str, Any], external: dict[str, Any], expected: str
) -> None:
    # Given an external dataset with a missing, unknown or bad option, or a bad name
    valid_params_dict["evaluate"]["external"] = external

    # Then loading stops in one line naming the key
    assert expected in _params_error(valid_params_dict)


def test_rank_by_may_name_an_external_dataset_metric(valid_params_dict: dict[str, Any]) -> None:
    # Given an external dataset site_b
    valid_params_dict["evaluate"]["external"] = {"site_b": {"source": "synthetic"}}

    # When compare ranks by its macro F1, it loads
    valid_params_dict["compare"]["rank_by"] = "external_site_b_f1_macro"
    assert parse_params(valid_params_dict).compare.rank_by == "external_site_b_f1_macro"

    # Then a dataset that is not there, or a metric that is not ranked, is one line
    valid_params_dict["compare"]["rank_by"] = "external_site_c_accuracy"
    message = _params_error(valid_params_dict)
    assert "compare.rank_by = 'external_site_c_accuracy': names no evaluate.external" in message
    assert "evaluate.external holds site_b" in message
    valid_params_dict["compare"]["rank_by"] = "external_site_b_accuracy_drop"
    assert "external_<name>_<metric>" in _params_error(valid_params_dict)


def test_rank_by_a_pooled_figure_needs_folds(valid_params_dict: dict[str, Any]) -> None:
    # Given compare ranking by the macro F1 pooled over the folds of a cross-validation
    valid_params_dict["compare"]["rank_by"] = "cv_test_f1_macro"

    # When the params hold one split, then loading stops naming the sweep and the fix
    message = _params_error(valid_params_dict)
    assert "compare.rank_by = 'cv_test_f1_macro': pools the folds of a cross-validation" in message
    assert "split.fold=range(0,5)" in message and "rank by test_f1_macro" in message

    # Then with split.folds set it loads
    valid_params_dict["split"]["folds"] = 5
    assert parse_params(valid_params_dict).compare.rank_by == "cv_test_f1_macro"


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every section model below it."""
    found = [model]
    for field in model.model_fields.values():
        nested = [field.annotation, *typing.get_args(field.annotation)]
        for annotation in nested:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += _models(annotation)
    return found


def test_every_param_and_run_setting_has_a_description() -> None:
    # Given every params model and the run settings (docs/params.md is generated from them)
    models = [*_models(Params), RunSettings]

    # Then every field says what it means
    undocumented = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undocumented == []


@pytest.mark.parametrize("key", sorted(MOVED_TO_ENVIRONMENT))
def test_a_run_setting_left_in_params_names_its_variable(
    valid_params_dict: dict[str, Any], key: str
) -> None:
    # Given params.yaml from before the run settings moved, still holding one of them
    section, _, name = key.partition(".")
    valid_params_dict[section][name] = 1

    # When it is parsed
    message = _params_error(valid_params_dict)

    # Then one line names the key and the environment variable that replaced it
    variable = f"CXR_{MOVED_TO_ENVIRONMENT[key].upper()}"
    assert message.startswith(
        f"params.yaml: {key}: moved to the environment variable {variable} (see docs/params.md)"
    )


def test_run_settings_default_when_unset() -> None:
    # Given an environment without any CXR_ variable, then every setting is its default
    assert run_settings({"PATH": "/bin"}) == RunSettings(
        workers=0, memory_cache_mb=128, resume=False, inference_batch_size=64
    )


@pytest.mark.parametrize(("variable", "value", "expected"), SETTING_VALUES)
def test_run_settings_read_their_variables(
    variable: str, value: str, expected: dict[str, Any]
) -> None:
    # When one variable is set, then its setting reads it (a blank value is unset)
    settings = run_settings({variable: value})
    assert settings.model_dump() == {**RunSettings().model_dump(), **expected}


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("CXR_WORKERS", "all", "integer >= 0; unset: 0"),
        ("CXR_WORKERS", "-1", "integer >= 0; unset: 0"),
        ("CXR_MEMORY_CACHE_MB", "lots", "number >= 0; unset: 128"),
        ("CXR_RESUME", "on", "1, true or yes (on); 0, false or no (off); unset: off"),
        ("CXR_INFERENCE_BATCH_SIZE", "0", "integer >= 1; unset: 64"),
    ],
)
def test_a_bad_run_setting_is_one_line_naming_the_variable(
    variable: str, value: str, allowed: str
) -> None:
    # When a variable holds a value its setting does not allow
    with pytest.raises(PipelineError) as error:
        run_settings({variable: value})

    # Then one line names the variable, the value and what is allowed
    message = str(error.value)
    assert message == f"{variable} = {value!r}: allowed: {allowed} (see docs/params.md)"


def test_run_settings_are_frozen_and_complete() -> None:
    # Given the run settings, then they cannot change once read, and each replaced a param but
    # the cluster of a run over several processes, which never was one
    settings = run_settings({})
    with pytest.raises(ValueError):
        settings.workers = 2  # type: ignore[misc]
    cluster = ["coordinator_address", "num_processes", "process_id"]
    assert sorted([*MOVED_TO_ENVIRONMENT.values(), *cluster]) == sorted(RunSettings.model_fields)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("hounsfield", "build.dicom.window = 'hounsfield': must be auto, full, lung, mediastinum"),
        ([40], "build.dicom.window = [40]: must be auto, full, lung, mediastinum or [centre"),
        ([40, 0], "build.dicom.window = [40, 0]: [centre, width] needs finite numbers and a width"),
        ("40,400", "build.dicom.window = '40,400': must be auto, full, lung, mediastinum"),
    ],
)
def test_a_bad_dicom_window_is_one_line(
    valid_params_dict: dict[str, Any], window: Any, message: str
) -> None:
    # Given a window that is neither a name nor [centre, width > 0]
    valid_params_dict["build"]["dicom"]["window"] = window
    # When the params are parsed, then one line names the key, the value and what is allowed
    assert message in _params_error(valid_params_dict)


@pytest.mark.parametrize(
    ("window", "decoding"),
    [
        ("auto", "auto"),
        ("lung", "lung"),
        ([-600, 1500], (-600.0, 1500.0)),
        ([40, 0.5], (40.0, 0.5)),
    ],
)
def test_dicom_windows_that_load(
    valid_params_dict: dict[str, Any], window: Any, decoding: Any
) -> None:
    valid_params_dict["build"]["dicom"]["window"] = window
    assert parse_params(valid_params_dict).build.dicom.decoding_window == decoding
