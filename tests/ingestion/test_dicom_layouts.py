"""DICOM files are images by their content in every folder layout (cxr/ingestion/layouts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dicom_header_fixtures import dicom_file
from ingest_fixtures import touch

from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.ingestion.ingest import Ingested, ingest
from cxr.ingestion.layouts import is_dicom, is_image

# Names PACS exports and archives give DICOM files: any case, any suffix, none.
DICOM_NAMES = ("a.dcm", "b.DCM", "c.dicom", "IM000001", "1.2.840.113619.2.55.3")


def _ingest(tmp_path: Path, params: dict[str, Any], source: Path, **data: Any) -> Ingested:
    params["data"]["source"] = str(source)
    params["data"].update(data)
    return ingest(parse_params(params).data, ProjectPaths(tmp_path / "repo"))


def test_class_folders_of_dicom_files_under_any_name_are_images(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given class folders holding only DICOM files, named as PACS exports name them
    source = tmp_path / "source"
    for index, name in enumerate(DICOM_NAMES):
        dicom_file(source / "covid" / name, patient_id=f"C{index}")
        dicom_file(source / "normal" / "series" / name, patient_id=f"N{index}")

    # When it is ingested with layout auto
    ingested = _ingest(tmp_path, small_params_dict, source)

    # Then every file is listed under its class, the layout is class folders
    assert ingested.layout == "class_folders"
    assert ingested.counts == {"covid": len(DICOM_NAMES), "normal": len(DICOM_NAMES)}
    assert {f"covid/{name}" for name in DICOM_NAMES} <= set(ingested.manifest["path"])
    # and each has the transfer syntax read from its header
    assert set(ingested.manifest["transfer_syntax"]) == {"Explicit VR Little Endian"}


@pytest.mark.parametrize(
    ("layout", "paths", "expected"),
    [
        (
            "split_folders",
            ["train/covid/IM1", "train/normal/IM2", "test/covid/IM3", "test/normal/IM4"],
            {"train", "test"},
        ),
        ("radiography", ["COVID/images/IM1", "Normal/images/x.DCM"], {""}),
        ("binary", ["0/IM1", "1/IM2.dcm"], {""}),
    ],
)
def test_split_radiography_and_binary_layouts_pick_up_dicom_files(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    layout: str,
    paths: list[str],
    expected: set[str],
) -> None:
    # Given a layout whose images are all extensionless or .dcm DICOM files
    source = tmp_path / "source"
    for index, path in enumerate(paths):
        dicom_file(source / path, patient_id=f"P{index}")

    # When it is ingested with layout auto
    label_map = {"0": "normal", "1": "covid"} if layout == "binary" else {}
    ingested = _ingest(tmp_path, small_params_dict, source, label_map=label_map)

    # Then the layout is detected and each file is listed once
    assert ingested.layout == layout
    assert len(ingested.manifest) == len(paths)
    assert set(ingested.manifest["given_split"]) == expected


def test_a_folder_of_non_dicom_files_without_suffix_is_no_class(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a class folder of DICOM files beside a folder of notes without a suffix
    source = tmp_path / "source"
    dicom_file(source / "covid" / "IM1", patient_id="P1")
    dicom_file(source / "normal" / "IM2", patient_id="P2")
    touch(source / "notes" / "README", b"not an image")

    # When it is ingested
    ingested = _ingest(tmp_path, small_params_dict, source)

    # Then the notes folder is not read as a class
    assert ingested.counts == {"covid": 1, "normal": 1}


def test_only_files_without_an_image_suffix_are_opened(tmp_path: Path) -> None:
    # Given a file named .png that does not exist (opening it would fail) and real files
    dicom = dicom_file(tmp_path / "IM000001")
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")

    # Then an image suffix decides without reading, and the others are told by their content
    assert is_image(tmp_path / "missing.PNG")
    assert not is_dicom(tmp_path / "missing.PNG")
    assert is_image(dicom) and is_dicom(dicom)
    assert not is_image(text) and not is_dicom(text)
