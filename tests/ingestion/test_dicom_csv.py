"""Label tables keyed by a DICOM attribute (data.csv.dicom_key), and RSNA-style file templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dicom_header_fixtures import dicom_file

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.warnings import DataWarnings
from cxr.ingestion.ingest import Ingested, ingest, ingest_metrics

STUDY_A = "1.2.826.0.1.3680043.8.498.100"
STUDY_B = "1.2.826.0.1.3680043.8.498.200"
STUDY_C = "1.2.826.0.1.3680043.8.498.300"  # in the table, no file
STUDY_D = "1.2.826.0.1.3680043.8.498.400"  # a file, not in the table


def _source(root: Path, rows: list[tuple[str, str]]) -> Path:
    """images/ of a PACS export (two images of study A, one each of B and D) and a label table."""
    source = root / "source"
    images = source / "images"
    dicom_file(images / "S1" / "IM1", patient_id="P1", study_uid=STUDY_A, AccessionNumber="AC1")
    dicom_file(images / "S1" / "IM2", patient_id="P1", study_uid=STUDY_A, AccessionNumber="AC1")
    dicom_file(images / "S2" / "IM1", patient_id="P2", study_uid=STUDY_B, AccessionNumber="AC2")
    dicom_file(images / "S3" / "IM1", patient_id="P3", study_uid=STUDY_D, AccessionNumber="AC4")
    pd.DataFrame(rows, columns=["key", "finding"]).to_csv(source / "reports.csv", index=False)
    return source


def _ingest(root: Path, params: dict[str, Any], source: Path, **csv: Any) -> Ingested:
    params["data"]["source"] = str(source)
    params["data"]["csv"].update(
        {"file": "reports.csv", "file_column": "key", "label_column": "finding", **csv}
    )
    return ingest(parse_params(params).data, ProjectPaths(root), DataWarnings())


@pytest.mark.parametrize(
    ("dicom_key", "keys"),
    [
        ("StudyInstanceUID", (STUDY_A, STUDY_B, STUDY_C)),
        ("AccessionNumber", ("AC1", "AC2", "AC3")),
    ],
)
def test_each_file_whose_header_holds_the_rows_key_gets_its_label(
    tmp_path: Path, small_params_dict: dict[str, Any], dicom_key: str, keys: tuple[str, ...]
) -> None:
    # Given labels mined from reports, one row per study, and a PACS export of the images
    rows = [(keys[0], "COVID-19"), (keys[1], "No Finding"), (keys[2], "COVID-19")]
    source = _source(tmp_path, rows)
    repo = tmp_path / "repo"

    # When it is ingested with the table keyed by the attribute
    ingested = _ingest(repo, small_params_dict, source, images_dir="images", dicom_key=dicom_key)

    # Then every image of a study takes the study's label; a file in no row is not listed
    manifest = ingested.manifest.set_index("path")
    assert manifest["label"].to_dict() == {
        "images/S1/IM1": "covid",
        "images/S1/IM2": "covid",
        "images/S2/IM1": "normal",
    }
    # and the patient is the group
    assert manifest["group"].nunique() == 2 and (manifest["group"] == manifest["patient"]).all()
    # and the row without a file is dropped and counted as today, without its key
    assert ingest_metrics(ingested)["dropped_rows"] == {"no_file_match": 1}
    rejected = ProjectPaths(repo).ingest_rejected.read_text(encoding="utf-8")
    detail = f"no DICOM file under images/ has this row's {dicom_key}"
    assert f"reports.csv:4,no_file_match: {detail}" in rejected
    assert keys[2] not in rejected


def test_a_key_column_missing_is_a_one_line_error(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    source = _source(tmp_path, [(STUDY_A, "covid")])
    with pytest.raises(
        PipelineError,
        match=r"data.csv.file_column = 'study_uid' \(the column of each row's StudyInstanceUID\):"
        r" no column 'study_uid' in .*reports.csv; its columns: key, finding",
    ):
        _ingest(
            tmp_path / "repo",
            small_params_dict,
            source,
            file_column="study_uid",
            dicom_key="StudyInstanceUID",
        )


def test_a_file_two_rows_give_different_labels_is_a_one_line_error(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given two rows of one patient with different labels (the patient has two images)
    source = _source(tmp_path, [("P1", "covid"), ("P2", "normal"), ("P1", "normal")])

    # When the table is keyed by PatientID, then the error names the rows and a file
    with pytest.raises(
        PipelineError,
        match=r"reports.csv: rows 2 and 4 give 'images/S1/IM1' different labels \('covid', "
        r"'normal'\) through its PatientID; keep one label per PatientID",
    ):
        _ingest(tmp_path / "repo", small_params_dict, source, dicom_key="PatientID")


def test_rows_repeating_a_key_with_one_label_are_one_file_each(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    source = _source(tmp_path, [("P1", "covid"), ("P1", "COVID-19"), ("P2", "normal")])
    ingested = _ingest(tmp_path / "repo", small_params_dict, source, dicom_key="PatientID")
    assert sorted(ingested.manifest["path"]) == ["images/S1/IM1", "images/S1/IM2", "images/S2/IM1"]


def test_rsna_style_patient_table_with_a_file_template_still_works(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given RSNA Pneumonia's layout: stage_2_train_labels.csv (patientId, Target) and
    # stage_2_train_images/<patientId>.dcm, two rows for a patient with two boxes
    source = tmp_path / "source"
    patients = {"0004cfab-14fd": "0", "00313ee0-9eaa": "1", "00322d4d-1c29": "1"}
    for patient_id in patients:
        dicom_file(source / "stage_2_train_images" / f"{patient_id}.dcm", patient_id=patient_id)
    pd.DataFrame(
        [(patient_id, target) for patient_id, target in patients.items()]
        + [("00313ee0-9eaa", "1")],
        columns=["patientId", "Target"],
    ).to_csv(source / "stage_2_train_labels.csv", index=False)
    small_params_dict["data"]["source"] = str(source)
    small_params_dict["data"]["label_map"] = {"0": "normal", "1": "pneumonia"}
    small_params_dict["data"]["csv"].update(
        file="stage_2_train_labels.csv",
        file_template="{patientId}.dcm",
        images_dir="stage_2_train_images",
        label_column="Target",
    )

    # When it is ingested, then the repeated row is the known one-row-per-file error
    with pytest.raises(PipelineError, match="named by more than one row"):
        ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "repo"))

    # When the repeated row is gone
    table = pd.read_csv(source / "stage_2_train_labels.csv", dtype=str).drop_duplicates()
    table.to_csv(source / "stage_2_train_labels.csv", index=False)
    ingested = ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "repo"))

    # Then each file has its row's label, its patient as group and its header's columns
    assert ingested.counts == {"normal": 1, "pneumonia": 2}
    assert ingested.manifest["group"].nunique() == 3
    assert set(ingested.manifest["modality"]) == {"DX"}


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        (
            {"dicom_key": "StudyInstanceUID", "file_template": "{key}.dcm"},
            "data.csv.dicom_key = 'StudyInstanceUID': .*data.csv.file_template = '{key}.dcm' is "
            "set too",
        ),
        ({"dicom_key": "PatientName"}, "data.csv.dicom_key = 'PatientName'"),
    ],
)
def test_bad_dicom_keys_are_one_line_errors(
    small_params_dict: dict[str, Any], csv: dict[str, str], message: str
) -> None:
    small_params_dict["data"]["csv"].update(csv)
    with pytest.raises(ParamsError, match=message):
        parse_params(small_params_dict)
