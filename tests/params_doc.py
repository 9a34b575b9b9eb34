"""Render docs/params.md from the models of cxr/core/params.py, where each key's meaning lives.

    .venv/bin/python tests/params_doc.py      # rewrites docs/params.md

One table per section of params.yaml (keys in its order, defaults as it writes them) and one
of the run settings (environment variables). tests/core/test_params_doc.py fails when the
committed docs/params.md differs from what this renders.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cxr.core.params import (
    MOVED_TO_ENVIRONMENT,
    Params,
    RunSettings,
    allowed_values,
    environment_variable,
    shown_value,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "params.md"
COMMAND = ".venv/bin/python tests/params_doc.py"
HEADER = ("Default", "Allowed", "Meaning")  # after the first column: Key or Variable

INTRO = f"""# Params

<!-- Generated from cxr/core/params.py by tests/params_doc.py: edit a key's Field description
there, then run `{COMMAND}`. -->

`params.yaml` says what the pipeline computes: one section per stage, plus the keys every
stage shares. It is validated when a stage starts: an unknown key or a bad value stops the
stage before it writes anything, with one line naming the key, the value and what is allowed.
dvc.yaml lists, per stage, the keys it reads, so changing one re-runs exactly the stages that
read it. Change a key for one experiment with `dvc exp run -S train.epochs=60`, or edit
`params.yaml` and run `dvc repro`. How fast or where a stage runs is not a param but an
environment variable: see [Run settings](#run-settings-environment-variables).
"""


def markdown_text(text: str) -> str:
    """`text` safe in a table cell: no pipes, tags, emphasis or line breaks (nor code spans)."""
    text = " ".join(text.split()).replace("|", "\\|").replace("*", "\\*")
    text = re.sub(r"<(?=[A-Za-z])", r"\\<", text)
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)


def yaml_text(node: yaml.Node) -> str:
    """A params.yaml value as the file writes it, in flow style: `0.00001`, `''`, `[128]`."""
    if isinstance(node, yaml.MappingNode):
        return (
            "{"
            + ", ".join(f"{yaml_text(key)}: {yaml_text(value)}" for key, value in node.value)
            + "}"
        )
    if isinstance(node, yaml.SequenceNode):
        return "[" + ", ".join(yaml_text(item) for item in node.value) + "]"
    quote = node.style if node.style in ("'", '"') else ""
    return f"{quote}{node.value}{quote}"


def row(*cells: str) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def table(first: str, rows: list[str]) -> list[str]:
    """A Markdown table of `rows`, its first column headed `first`."""
    return [row(first, *HEADER), row(*("---",) * (1 + len(HEADER))), *rows]


def section_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a field that is a section of keys, else None."""
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def key_rows(fields: Mapping[str, FieldInfo], node: yaml.MappingNode, prefix: str) -> list[str]:
    """Rows of every key under `node` (a section of params.yaml), nested sections after a row."""
    rows: list[str] = []
    written = [str(key.value) for key, _ in node.value]
    missing = [name for name in fields if name not in written]
    if missing:
        raise ValueError(f"params.yaml: {prefix}{missing[0]}: in the models, not in the file")
    for key, value in node.value:
        name = f"{prefix}{key.value}"
        field = fields.get(str(key.value))
        if field is None:
            raise ValueError(f"params.yaml: {name}: in the file, not in cxr/core/params.py")
        nested = section_model(field)
        if nested is not None:
            assert isinstance(value, yaml.MappingNode), name
            rows.append(row(f"`{name}`", "", allowed_cell(field), meaning_cell(field)))
            rows += key_rows(nested.model_fields, value, f"{name}.")
        else:
            default = f"`{yaml_text(value)}`"
            rows.append(row(f"`{name}`", default, allowed_cell(field), meaning_cell(field)))
    return rows


def allowed_cell(field: FieldInfo) -> str:
    """The Allowed column of a field."""
    return markdown_text(allowed_values(field))


def meaning_cell(field: FieldInfo) -> str:
    """The Meaning column of a field: its description."""
    return markdown_text(field.description or "")


def sentence(text: str) -> str:
    """`text` as a sentence: a capital first and a full stop last."""
    return markdown_text(text[:1].upper() + text[1:].rstrip(".") + ".")


def params_sections(params_yaml: str) -> list[str]:
    """The shared keys, then a heading and table per section of params.yaml."""
    root = yaml.compose(params_yaml)
    assert isinstance(root, yaml.MappingNode)
    sections = {
        name: model
        for name, field in Params.model_fields.items()
        if (model := section_model(field)) is not None
    }
    shared_fields = {
        name: field for name, field in Params.model_fields.items() if name not in sections
    }
    shared = [(key, value) for key, value in root.value if key.value not in sections]
    lines = ["## Shared by every stage", ""]
    lines += [*table("Key", key_rows(shared_fields, yaml.MappingNode(root.tag, shared), "")), ""]
    for key, value in root.value:
        if key.value not in sections:
            continue
        assert isinstance(value, yaml.MappingNode), key.value
        description = Params.model_fields[key.value].description or ""
        lines += [f"## {key.value}", "", sentence(description), ""]
        lines += [
            *table("Key", key_rows(sections[key.value].model_fields, value, f"{key.value}.")),
            "",
        ]
    missing = sorted(set(sections) - {key.value for key, _ in root.value})
    if missing:
        raise ValueError(f"params.yaml: {missing[0]}: in the models, not in the file")
    return lines


def run_settings_section() -> list[str]:
    """The heading, intro and table of the run settings."""
    intro = inspect.cleandoc(RunSettings.__doc__ or "")
    replaced = ", ".join(
        f"`{key}` ({environment_variable(setting)})"
        for key, setting in MOVED_TO_ENVIRONMENT.items()
    )
    rows = [
        row(
            f"`{environment_variable(name)}`",
            f"`{shown_value(field.default)}`",
            allowed_cell(field),
            meaning_cell(field),
        )
        for name, field in RunSettings.model_fields.items()
    ]
    return [
        "## Run settings (environment variables)",
        "",
        markdown_text(intro),
        "",
        "Set one for a command (`CXR_WORKERS=4 dvc repro`) or export it; unset or blank, a "
        "setting takes its default. A bad value stops the stage before it writes anything, in "
        "one line naming the variable.",
        "",
        *table("Variable", rows),
        "",
        f"They were params once: {replaced}. A params.yaml that still holds one stops with a "
        "line naming its variable.",
    ]


def render(params_yaml: str) -> str:
    """docs/params.md for the params.yaml text `params_yaml`."""
    lines = [INTRO, *params_sections(params_yaml), *run_settings_section()]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Write docs/params.md from the models and params.yaml."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = render((ROOT / "params.yaml").read_text(encoding="utf-8"))
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
