"""docs/params.md is what tests/params_doc.py renders from the models of cxr/core/params.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from params_doc import COMMAND, DOC, ROOT, markdown_text, render, yaml_text

from cxr.core.params import MOVED_TO_ENVIRONMENT, RunSettings, environment_variable

# The keys of params.yaml whose value is a mapping, not a section of keys.
MAPPING_VALUES = {"data.label_map", "data.synthetic.counts", "evaluate.external"}


@pytest.fixture(scope="module")
def params_yaml() -> str:
    return (ROOT / "params.yaml").read_text(encoding="utf-8")


def test_docs_params_md_is_the_rendered_models(params_yaml: str) -> None:
    # Given the committed docs/params.md, when the generator renders the models again
    expected = render(params_yaml)

    # Then they are the same: a description changed without the docs says how to refresh them
    committed = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert committed == expected, f"{DOC.relative_to(ROOT)} is stale; run `{COMMAND}`"


def test_every_key_of_params_yaml_has_a_row_with_its_default(params_yaml: str) -> None:
    # Given every leaf key of params.yaml as the file writes its value
    rows: dict[str, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        assert isinstance(node, yaml.MappingNode)
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            if isinstance(value, yaml.MappingNode) and name not in MAPPING_VALUES:
                walk(value, f"{name}.")
            else:
                rows[name] = yaml_text(value)

    walk(yaml.compose(params_yaml), "")
    rendered = render(params_yaml)

    # Then each has a row naming it, with that default; the moved keys have none
    for name, default in rows.items():
        assert f"| `{name}` | `{default}` |" in rendered, name
    assert rows["train.fine_tune_learning_rate"] == "0.00001"
    for key in MOVED_TO_ENVIRONMENT:
        assert f"| `{key}` |" not in rendered


def test_every_run_setting_has_a_row_in_the_run_settings_section(params_yaml: str) -> None:
    # Given the rendered docs, then the run settings section names each variable and default
    section = render(params_yaml).split("## Run settings (environment variables)")[1]
    for name in RunSettings.model_fields:
        assert f"| `{environment_variable(name)}` |" in section, name
    assert "| `CXR_WORKERS` | `0` | integer >= 0 |" in section


def test_an_unknown_key_in_params_yaml_stops_the_generator(params_yaml: str) -> None:
    # Given params.yaml with a key no model declares, then rendering names it
    with pytest.raises(ValueError, match=r"build.colour: in the file, not in"):
        render(params_yaml.replace("  cache_size: 256\n", "  colour: red\n  cache_size: 256\n"))


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("a | b", "a \\| b"),
        ("kaggle:<owner>/<dataset>", "kaggle:\\<owner>/\\<dataset>"),
        ("<= 1", "<= 1"),
        ("the key _blank_ maps", "the key \\_blank\\_ maps"),
        ("train.image_size", "train.image_size"),
        ("images/*.png\n  and more", "images/\\*.png and more"),
    ],
)
def test_cells_escape_what_markdown_would_read_as_markup(text: str, cell: str) -> None:
    assert markdown_text(text) == cell


def test_the_generator_writes_the_doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the generator pointed at a scratch file, when its main runs, then it writes the doc
    import params_doc

    target = tmp_path / "docs" / "params.md"
    monkeypatch.setattr(params_doc, "DOC", target)
    assert params_doc.main() == 0
    assert target.read_text(encoding="utf-8") == render(
        (ROOT / "params.yaml").read_text(encoding="utf-8")
    )
