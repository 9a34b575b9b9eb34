"""DICOM header columns in the manifest, identifiers as pseudonyms (cxr/ingestion/dicom_headers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dicom_header_fixtures import dicom_file

from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.pseudonyms import KEY_FILE, pseudonym
from cxr.core.tables import DICOM_COLUMNS, MANIFEST_COLUMNS
from cxr.core.warnings import DataWarnings
from cxr.ingestion.dicom_headers import shown_age
from cxr.ingestion.ingest import Ingested, ingest

STUDY = "1.2.826.0.1.3680043.8.498.11111"
# What the fixture files hold that must never reach a table.
PERSONAL = (b"Doe^Jane", b"Doe", b"19700101", b"General Hospital", b"House^Gregory", b"ACC0001")


def _source(root: Path) -> Path:
    """Two classes, two patients; one patient's two images share a study."""
    source = root / "source"
    dicom_file(source / "covid" / "IM000001", patient_id="PAT-7781", study_uid=STUDY)
    dicom_file(source / "covid" / "IM000002", patient_id="PAT-7781", study_uid=STUDY, seed=1)
    dicom_file(
        source / "normal" / "x.dcm",
        patient_id="PAT-1234",
        view="AP",
        manufacturer="Portable Co",
        PatientAge="093Y",
        PatientSex="M",
    )
    (source / "normal" / "photo.png").write_bytes(b"\x89PNG fake")  # not DICOM: blank columns
    return source


def _ingest(root: Path, params: dict[str, Any], source: Path, **data: Any) -> Ingested:
    params["data"]["source"] = str(source)
    params["data"].update(data)
    return ingest(parse_params(params).data, ProjectPaths(root), DataWarnings())


def test_header_columns_go_into_the_manifest_with_pseudonyms(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given DICOM files and a PNG in class folders
    source = _source(tmp_path)
    repo = tmp_path / "repo"

    # When they are ingested
    ingested = _ingest(repo, small_params_dict, source)

    # Then the manifest has the DICOM columns after its own, identifiers as keyed hashes
    paths = ProjectPaths(repo)
    manifest = pd.read_parquet(paths.manifest).set_index("path")
    assert list(manifest.reset_index().columns) == [*MANIFEST_COLUMNS, *DICOM_COLUMNS]
    key = bytes.fromhex((repo / KEY_FILE).read_text())
    patient = pseudonym(key, "PatientID", "PAT-7781")
    assert len(patient) == 16 and patient != pseudonym(key, "PatientID", "PAT-1234")
    first = manifest.loc["covid/IM000001"]
    assert first["patient"] == patient == manifest.loc["covid/IM000002", "patient"]
    assert first["study"] == pseudonym(key, "StudyInstanceUID", STUDY)
    assert first[["modality", "view_position", "body_part", "manufacturer"]].tolist() == [
        "DX",
        "PA",
        "CHEST",
        "Acme Imaging",
    ]
    assert first[["sex", "age", "photometric", "bits_stored", "transfer_syntax"]].tolist() == [
        "F",
        "054Y",
        "MONOCHROME2",
        "12",
        "Explicit VR Little Endian",
    ]
    # an age over 89 is shown as 90 or more (HIPAA Safe Harbor), the PNG's columns are blank
    assert manifest.loc["normal/x.dcm", "age"] == "090Y+"
    assert set(manifest.loc["normal/photo.png", list(DICOM_COLUMNS)]) == {""}
    assert ingested.manifest["patient"].tolist() == manifest.reset_index()["patient"].tolist()


def test_no_personal_data_or_raw_identifier_reaches_the_interim_tables(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given DICOM files holding a name, birth date, institution, physician and accession number
    source = _source(tmp_path)
    repo = tmp_path / "repo"

    # When they are ingested with a filter, so the rejected table lists a file too
    _ingest(repo, small_params_dict, source, dicom={"modalities": [], "views": ["PA"]})

    # Then no table ingest wrote holds any of them, nor the raw patient IDs or study UID
    written = [path for path in (repo / "data").rglob("*") if path.is_file()]
    written = [path for path in written if "raw" not in path.relative_to(repo).parts]
    assert {path.name for path in written} == {"manifest.parquet", "ingest_rejected.csv"}
    for path in written:
        content = path.read_bytes()
        for planted in (*PERSONAL, b"PAT-7781", b"PAT-1234", STUDY.encode()):
            assert planted not in content, f"{planted!r} in {path}"


def test_same_key_same_pseudonyms_another_key_other_pseudonyms(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given one source ingested twice in one checkout, and once in another
    source = _source(tmp_path)
    first = _ingest(tmp_path / "a", small_params_dict, source).manifest
    again = _ingest(tmp_path / "a", small_params_dict, source).manifest
    other = _ingest(tmp_path / "b", small_params_dict, source).manifest

    # Then the checkout's key gives the same pseudonyms every time, another key other ones
    assert first["patient"].tolist() == again["patient"].tolist()
    assert first["study"].tolist() == again["study"].tolist()
    dicom = first["patient"] != ""
    assert not set(first.loc[dicom, "patient"]) & set(other.loc[dicom, "patient"])
    assert not set(first.loc[dicom, "study"]) & set(other.loc[dicom, "study"])

    # and a copied key gives the same pseudonyms in the other checkout
    (tmp_path / "b" / KEY_FILE).write_bytes((tmp_path / "a" / KEY_FILE).read_bytes())
    copied = _ingest(tmp_path / "b", small_params_dict, source).manifest
    assert copied["patient"].tolist() == first["patient"].tolist()


def test_a_dvc_temporary_experiment_uses_the_checkouts_key(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a checkout and DVC's copy of it for a --temp or queued experiment
    source = _source(tmp_path)
    checkout = tmp_path / "checkout"
    experiment = checkout / ".dvc" / "tmp" / "exps" / "run" / "abc123"

    # When ingest runs in each
    in_checkout = _ingest(checkout, small_params_dict, source).manifest
    in_experiment = _ingest(experiment, small_params_dict, source).manifest

    # Then both use the one key at the checkout's root
    assert (checkout / KEY_FILE).is_file() and not (experiment / KEY_FILE).exists()
    assert in_checkout["patient"].tolist() == in_experiment["patient"].tolist()


def test_png_sources_create_no_key(tmp_path: Path, small_params_dict: dict[str, Any]) -> None:
    # When the synthetic PNG phantoms are ingested
    _ingest(tmp_path / "repo", small_params_dict, Path("synthetic"))

    # Then no pseudonym was needed, and no key was made
    assert not (tmp_path / "repo" / ".cxr").exists()


def test_unreadable_header_and_identifier_in_path_warn(
    tmp_path: Path, small_params_dict: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a file named after its patient, and a file that stops after the DICM marker
    source = tmp_path / "source"
    dicom_file(source / "covid" / "PAT-5555.dcm", patient_id="PAT-5555")
    dicom_file(source / "normal" / "IM1", patient_id="PAT-6666")
    (source / "normal" / "IM2").write_bytes(b"\0" * 128 + b"DICM\x02\x00")

    # When it is ingested
    warnings = DataWarnings()
    small_params_dict["data"]["source"] = str(source)
    ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "repo"), warnings)

    # Then one line says the path holds an identifier, one that a header cannot be read
    assert warnings.counts["identifier_in_path"] == 1
    assert warnings.counts["dicom_header_unreadable"] == 1
    err = capsys.readouterr().err
    assert "covid/PAT-5555.dcm" in err and "normal/IM2: DICOM header unreadable" in err
    # and the broken file is still listed (build rejects it), its DICOM columns blank
    manifest = pd.read_parquet(ProjectPaths(tmp_path / "repo").manifest).set_index("path")
    assert manifest.loc["normal/IM2", "patient"] == ""


@pytest.mark.parametrize(
    ("age", "shown"),
    [("054Y", "054Y"), ("089Y", "089Y"), ("090Y", "090Y+"), ("105Y", "090Y+"), ("006M", "006M")],
)
def test_ages_over_89_are_grouped(age: str, shown: str) -> None:
    assert shown_age(age) == shown
