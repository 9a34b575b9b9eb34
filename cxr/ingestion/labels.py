"""Class names: canonical spellings, data.label_map, blank labels and data.classes."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.params import DataParams
from cxr.core.tables import MANIFEST_COLUMNS
from cxr.ingestion.layouts import Entry, Rejection

# Spellings the public collections use for the same class, after case/space/hyphen folding.
# Only names that mean the same finding are merged: COVID-negative is not normal (it may be
# another pneumonia), so it becomes non_covid, never normal. data.label_map overrides all.
LABEL_ALIASES = {
    "covid_19": "covid",
    "covid19": "covid",
    "covid_positive": "covid",
    "ct_covid": "covid",
    "noncovid": "non_covid",
    "non_covid_19": "non_covid",
    "ct_noncovid": "non_covid",
    "ct_non_covid": "non_covid",
    "covid_negative": "non_covid",
    "pneumonia_viral": "viral_pneumonia",
    "pneumonia_bacterial": "bacterial_pneumonia",
    "lung_opacities": "lung_opacity",
    "healthy": "normal",
    "healthy_control": "normal",
    "healthy_controls": "normal",
    "no_finding": "normal",
    "no_findings": "normal",
    "nofinding": "normal",
    "nofindings": "normal",
}


def folded_label(raw: str) -> str:
    """A class name in lower_snake_case: case, spaces, hyphens and punctuation folded."""
    return re.sub(r"[\W_]+", "_", raw.strip().lower()).strip("_")


def canonical_label(raw: str) -> str:
    """Fold a class name to lower_snake_case and merge known aliases (COVID-19 -> covid)."""
    folded = folded_label(raw)
    return LABEL_ALIASES.get(folded, folded)


@dataclass(frozen=True)
class LabelMap:
    """data.label_map, looked up as written, folded, then canonical; `_blank_` for blank labels.

    A key matches a label as written, then folded (`no finding` matches `No_Finding`), then as
    the label's canonical name (`normal` matches every spelling of normal).
    """

    mapping: Mapping[str, str]

    def lookup(self, raw: str) -> tuple[str, list[str]] | None:
        """The class of a raw label and the keys that gave it, or None when no key matches."""
        if not raw.strip():
            key = DataParams.BLANK_LABEL
            return (canonical_label(self.mapping[key]), [key]) if key in self.mapping else None
        if raw in self.mapping:
            return canonical_label(self.mapping[raw]), [raw]
        named = [key for key in self.mapping if key != DataParams.BLANK_LABEL]
        for form in (folded_label(raw), canonical_label(raw)):
            keys = [key for key in named if folded_label(key) == form]
            if keys:
                return canonical_label(self.mapping[keys[0]]), keys
        return None


def _labelled(
    entries: Sequence[Entry], label_map: LabelMap
) -> tuple[list[tuple[Entry, str]], list[str]]:
    """Each entry with its class (blank labels without a mapping rejected), and the keys used."""
    labelled: list[tuple[Entry, str]] = []
    used: list[str] = []
    for entry in entries:
        found = label_map.lookup(entry.raw_label)
        if found is not None:
            used.extend(found[1])
            labelled.append((entry, found[0]))
        elif not entry.raw_label.strip():
            # A blank label says nothing; it outranks a missing file as the reason.
            blank = Rejection(
                entry.row or entry.path, "blank_label", f"no label (file {entry.path or '-'})"
            )
            labelled.append((replace(entry, rejection=blank), ""))
        else:
            labelled.append((entry, canonical_label(entry.raw_label)))
    return labelled, used


def _check_map_keys(
    entries: Sequence[Entry], label_map: Mapping[str, str], used: list[str]
) -> None:
    unused = sorted(set(label_map) - set(used))
    if unused and entries:
        found = sorted({entry.raw_label for entry in entries})
        raise PipelineError(
            f"data.label_map: key(s) {', '.join(map(repr, unused))} match no label in the "
            f"source; its labels are: {', '.join(map(repr, found))}"
        )


def _wanted(classes: Sequence[str], labels: set[str]) -> set[str] | None:
    """The canonical names of data.classes, each present in labels; None keeps every class."""
    if not classes:
        return None
    wanted = [canonical_label(name) for name in classes]
    if len(set(wanted)) < len(wanted):
        raise PipelineError(
            f"data.classes = {list(classes)!r}: names the same class twice "
            f"(canonical names: {', '.join(wanted)})"
        )
    missing = sorted(set(wanted) - labels)
    if missing:
        raise PipelineError(
            f"data.classes: {', '.join(missing)} not in the source; its classes are: "
            f"{', '.join(sorted(labels))}"
        )
    return set(wanted)


def _check_named(labelled: Sequence[tuple[Entry, str]]) -> None:
    # A number ("0", "1") or a name without letters or digits says nothing about the class.
    unnamed = sorted({entry.raw_label for entry, label in labelled if not label or label.isdigit()})
    if unnamed:
        raise PipelineError(
            f"data.label_map: label(s) {', '.join(map(repr, unnamed))} need a class name; add "
            f"e.g. label_map: {{{', '.join(f'{raw!r}: <class>' for raw in unnamed)}}} or "
            f"-S ++data.label_map.{unnamed[0]}=<class>"
        )


def label_entries(
    entries: Sequence[Entry], label_map: Mapping[str, str], classes: Sequence[str], prefix: str = ""
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Canonical classes, data.classes kept, unusable rows set apart: (manifest, rows dropped)."""
    labelled, used = _labelled(entries, LabelMap(label_map))
    _check_map_keys(entries, label_map, used)
    blank = [entry.rejection for entry, label in labelled if not label and entry.rejection]
    labelled = [(entry, label) for entry, label in labelled if label or not entry.rejection]
    wanted = _wanted(classes, {label for _entry, label in labelled})
    # data.classes first: a row of a class not wanted is neither checked nor reported.
    if wanted is not None:
        labelled = [(entry, label) for entry, label in labelled if label in wanted]
    rejections = [*blank, *(entry.rejection for entry, _label in labelled if entry.rejection)]
    usable = [(entry, label) for entry, label in labelled if entry.rejection is None]
    _check_named(usable)
    manifest = pd.DataFrame(
        {
            "path": [str(PurePosixPath(prefix, entry.path)) for entry, _label in usable],
            "label": [label for _entry, label in usable],
            "given_split": [entry.given_split for entry, _label in usable],
            "group": [entry.group for entry, _label in usable],
            "source": ["" for _ in usable],
        },
        columns=list(MANIFEST_COLUMNS),
    )
    return manifest.sort_values("path", kind="stable").reset_index(drop=True), rejections
