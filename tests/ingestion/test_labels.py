"""Tests for class names (cxr/ingestion/labels.py): canonical spellings, aliases, label_map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ingest_fixtures import touch

from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.ingestion.ingest import ingest
from cxr.ingestion.labels import LABEL_ALIASES, canonical_label


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("COVID-19", "covid"),
        ("Covid", "covid"),
        ("covid", "covid"),
        ("COVID", "covid"),
        ("covid19", "covid"),
        ("CT_COVID", "covid"),
        ("CT_NonCOVID", "non_covid"),
        ("Viral Pneumonia", "viral_pneumonia"),
        ("viral-pneumonia", "viral_pneumonia"),
        ("Lung_Opacity", "lung_opacity"),
        ("NORMAL", "normal"),
        ("PNEUMONIA", "pneumonia"),
        ("  Bacterial  Pneumonia ", "bacterial_pneumonia"),
        ("Tuberculose (TB)", "tuberculose_tb"),
        # The spellings of "normal" the public collections use
        ("No finding", "normal"),
        ("No Finding", "normal"),
        ("No_findings", "normal"),
        ("NoFinding", "normal"),
        ("Normal", "normal"),
        ("Healthy", "normal"),
        ("healthy controls", "normal"),
        # Labels that are not "normal" stay apart
        ("COVID-negative", "non_covid"),
        ("Non-COVID", "non_covid"),
        ("Negative", "negative"),
        ("No pneumonia", "no_pneumonia"),
    ],
)
def test_canonical_label(raw: str, canonical: str) -> None:
    assert canonical_label(raw) == canonical


def test_no_alias_turns_another_finding_into_normal() -> None:
    # Given the alias table
    merged_into_normal = {alias for alias, name in LABEL_ALIASES.items() if name == "normal"}

    # Then only spellings of "no finding" and "healthy" become normal
    assert merged_into_normal
    assert all(
        alias.startswith(("no_finding", "nofinding", "healthy")) for alias in merged_into_normal
    )


def test_three_spellings_of_normal_are_one_class_and_label_map_still_overrides(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given class folders No_findings, No finding, Normal and COVID-19
    source = tmp_path / "source"
    for folder in ("No_findings", "No finding", "Normal", "COVID-19"):
        touch(source / folder / "a.png")
    small_params_dict["data"]["source"] = str(source)

    # When it is ingested
    ingested = ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "a"))

    # Then the three spellings are one class
    assert ingested.counts == {"covid": 1, "normal": 3}

    # When label_map names one spelling, then only that folder moves
    small_params_dict["data"]["label_map"] = {"No_findings": "unlabelled"}
    ingested = ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "b"))
    assert ingested.counts == {"covid": 1, "normal": 2, "unlabelled": 1}
