"""data.group_pattern (cxr/ingestion/groups.py): groups from file paths, in every layout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ingest_fixtures import touch

from cxr.core.errors import ParamsError
from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.warnings import DataWarnings
from cxr.ingestion.groups import path_group
from cxr.ingestion.ingest import Ingested, ingest, ingest_metrics

# The patterns the README documents.
CHESTXRAY14 = r"(\d{8})_\d+\.png$"
COVID_CT = r"([^/]+?)(?:-p\d+-[^/]*|_\d+[^/]*|%\d+)?\.\w+$"


def _ingest(
    tmp_path: Path, params: dict[str, Any], source: str, pattern: str
) -> tuple[Ingested, DataWarnings]:
    params["data"].update(source=source, group_pattern=pattern)
    warnings = DataWarnings()
    return ingest(parse_params(params).data, ProjectPaths(tmp_path / "repo"), warnings), warnings


def _groups(ingested: Ingested) -> dict[str, str]:
    return dict(zip(ingested.manifest["path"], ingested.manifest["group"], strict=True))


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("images_001/images/00000001_000.png", "00000001"),
        ("Effusion/00030805_003.png", "00030805"),
        ("notes.png", ""),
    ],
)
def test_chestxray14_names_give_the_patient(path: str, group: str) -> None:
    assert path_group(re.compile(CHESTXRAY14), path) == group


@pytest.mark.parametrize(
    ("path", "group"),
    [
        # slices of one paper share the name before -p<page>
        ("CT_COVID/2020.02.10.20021584-p6-52%0.png", "2020.02.10.20021584"),
        ("CT_COVID/2020.02.10.20021584-p7-61.png", "2020.02.10.20021584"),
        ("CT_COVID/kjr-21-e25-p1-10.png", "kjr-21-e25"),
        ("CT_COVID/bmj.m606.full-p4-22%2.png", "bmj.m606.full"),
        # crops of one figure share the name before %<n> (or _<n>)
        ("CT_NonCOVID/10%0.jpg", "10"),
        ("CT_NonCOVID/10%1.jpg", "10"),
        ("CT_COVID/PIIS0140673620301549_0%1.png", "PIIS0140673620301549"),
        ("CT_COVID/PIIS0140673620301549_2.png", "PIIS0140673620301549"),
        ("CT_NonCOVID/102.png", "102"),
    ],
)
def test_covid_ct_names_give_the_paper_or_figure(path: str, group: str) -> None:
    assert path_group(re.compile(COVID_CT), path) == group


def test_class_folders_get_groups_and_unmatched_files_a_warning(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given ChestX-ray14-style names in class folders, one not in that form
    source = tmp_path / "source"
    for name in ("Effusion/00000001_000.png", "No Finding/00000001_001.png", "No Finding/x.png"):
        touch(source / name)

    # When it is ingested with the ChestX-ray14 pattern
    ingested, warnings = _ingest(tmp_path, small_params_dict, str(source), CHESTXRAY14)

    # Then both images of patient 00000001 share a group across classes, the odd file has none
    assert _groups(ingested) == {
        "Effusion/00000001_000.png": "00000001",
        "No Finding/00000001_001.png": "00000001",
        "No Finding/x.png": "",
    }
    assert ingest_metrics(ingested)["groups"] == 1
    assert ingest_metrics(ingested)["warnings"] == {"group_pattern_unmatched": 1}
    assert "finds no group in 1 of 3 files (e.g. 'No Finding/x.png')" in warnings.messages[0]


def test_split_folders_match_the_path_below_the_dataset_root(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given split folders inside a wrapper folder, the patient in the folder name
    source = tmp_path / "source"
    for name in ("train/covid/pat7_1.png", "train/normal/pat8_1.png", "test/covid/pat7_2.png"):
        touch(source / "wrapper" / name)

    # When the pattern anchors at the split folder (the path is relative to the dataset root)
    ingested, warnings = _ingest(tmp_path, small_params_dict, str(source), r"^\w+/\w+/(pat\d+)_")

    # Then every file has its patient, and the manifest paths keep the wrapper
    assert _groups(ingested) == {
        "wrapper/test/covid/pat7_2.png": "pat7",
        "wrapper/train/covid/pat7_1.png": "pat7",
        "wrapper/train/normal/pat8_1.png": "pat8",
    }
    assert warnings.messages == []


def test_synthetic_source_is_grouped_too(tmp_path: Path, small_params_dict: dict[str, Any]) -> None:
    # Given the synthetic source and a pattern taking the class folder as the group
    ingested, _ = _ingest(tmp_path, small_params_dict, "synthetic", r"^(\w+)/")

    # Then each file's group is its folder
    manifest = ingested.manifest
    assert (manifest["group"] == manifest["path"].str.split("/").str[0]).all()


def test_csv_layout_is_grouped_by_the_pattern(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a table of files named <patient>_<n>.png
    source = tmp_path / "source"
    for name in ("p1_1.png", "p1_2.png", "p2_1.png"):
        touch(source / name)
    pd.DataFrame(
        {"file": ["p1_1.png", "p1_2.png", "p2_1.png"], "label": ["covid", "covid", "normal"]}
    ).to_csv(source / "metadata.csv", index=False)
    small_params_dict["data"]["csv"]["file"] = "metadata.csv"

    # When it is ingested with a pattern
    ingested, _ = _ingest(tmp_path, small_params_dict, str(source), r"^(p\d+)_")

    # Then the groups come from the file names
    assert _groups(ingested) == {"p1_1.png": "p1", "p1_2.png": "p1", "p2_1.png": "p2"}


@pytest.mark.parametrize(
    ("pattern", "group_column", "message"),
    [
        ("(", "", "data.group_pattern = '(': not a regular expression (missing ), unterminated"),
        (r"\d+_\d+", "", "data.group_pattern = '\\\\d+_\\\\d+': needs a capturing group"),
        ("(p)", "patientid", "data.group_pattern = '(p)': data.csv.group_column = 'patientid'"),
    ],
)
def test_bad_group_pattern_stops_loading_in_one_line(
    small_params_dict: dict[str, Any], pattern: str, group_column: str, message: str
) -> None:
    # Given a pattern that is no regex, has no group, or competes with a group column
    small_params_dict["data"]["group_pattern"] = pattern
    small_params_dict["data"]["csv"]["group_column"] = group_column

    # When the params are loaded, then one line names data.group_pattern
    with pytest.raises(ParamsError) as error:
        parse_params(small_params_dict)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
