"""Planted identifiers: no personal data of DICOM headers leaves data/raw in a real pipeline run.

DICOM files holding a planted name, birth date, patient ID, accession number, institution and
physician go through `dvc repro` (ingest -> build -> split -> train -> evaluate -> compare) in a
temporary git + DVC project; then every file the pipeline wrote outside data/raw and the DVC
cache, the MLflow store and its artifacts included, is read as bytes and searched for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from dicom_header_fixtures import dicom_file
from dvc_project import STAGES, clean_env, copy_project, git_repo, run, stages_run
from training_fixtures import TINY_PIPELINE, tiny_params

ROOT = Path(__file__).resolve().parents[2]
PATIENTS_PER_CLASS = 6
IMAGES_PER_PATIENT = 2
# Strings no code, parameter or random value holds by chance.
NAME = "Zyxplanted^Quorra^Vex"
BIRTH_DATE = "19411103"
INSTITUTION = "Quorravex Memorial Infirmary"
PHYSICIAN = "Plantdoc^Ignatius"

pytestmark = [
    pytest.mark.slow,  # a whole dvc repro: about a minute on two cores
    pytest.mark.skipif(
        not (ROOT / "cxr" / "images" / "dicom.py").is_file(),
        reason="build cannot decode DICOM yet (cxr/images/dicom.py is not there)",
    ),
]


def _planted_source(folder: Path) -> list[bytes]:
    """Two classes of DICOM files named IM<n>; returns every planted string, as bytes."""
    planted = {NAME, NAME.split("^")[0], BIRTH_DATE, INSTITUTION, PHYSICIAN}
    number = 0
    for label, (low, high) in {"covid": (2048, 4096), "normal": (0, 2048)}.items():
        for patient in range(PATIENTS_PER_CLASS):
            patient_id = f"QVXPID{label[0].upper()}{patient:04d}"
            accession = f"QVXACC{label[0].upper()}{patient:04d}"
            study_uid = f"1.2.826.0.1.3680043.8.498.{7_340_000 + number}"
            for _image in range(IMAGES_PER_PATIENT):
                number += 1
                path = dicom_file(
                    folder / label / f"IM{number:06d}",
                    patient_id=patient_id,
                    study_uid=study_uid,
                    seed=number,
                    low=low,
                    high=high,
                    PatientName=NAME,
                    PatientBirthDate=BIRTH_DATE,
                    InstitutionName=INSTITUTION,
                    ReferringPhysicianName=PHYSICIAN,
                    AccessionNumber=accession,
                )
                header = pydicom.dcmread(path, stop_before_pixels=True)
                planted |= {
                    patient_id,
                    accession,
                    study_uid,
                    str(header.SeriesInstanceUID),
                    str(header.SOPInstanceUID),
                }
    return sorted(value.encode() for value in planted)


def _written_files(repo: Path) -> list[Path]:
    """Every file in the project except the raw copy and DVC's cache of it."""
    skipped = (repo / "data" / "raw", repo / ".dvc" / "cache")
    return [
        path
        for path in sorted(repo.rglob("*"))
        if path.is_file() and not any(path.is_relative_to(folder) for folder in skipped)
    ]


def test_no_planted_identifier_leaves_data_raw(tmp_path: Path) -> None:
    # Given DICOM files full of personal data, outside a fresh git + DVC project of the pipeline
    planted = _planted_source(tmp_path / "hospital-export")
    params = tiny_params(changes=TINY_PIPELINE)
    params["model"] = "pixel_logreg"
    params["data"]["source"] = str(tmp_path / "hospital-export")
    params["split"].update(val_fraction=0.25, test_fraction=0.25)
    repo = tmp_path / "project"
    copy_project(repo, params)
    env = clean_env()
    git_repo(repo, env)

    # When the whole pipeline runs
    output = run([sys.executable, "-m", "dvc", "repro"], repo, env)

    # Then every stage ran on the DICOM images, grouped by patient
    assert stages_run(output) == STAGES
    images = pd.read_parquet(repo / "data" / "interim" / "images.parquet")
    assert len(images) == 2 * PATIENTS_PER_CLASS * IMAGES_PER_PATIENT
    assert images["group"].nunique() == 2 * PATIENTS_PER_CLASS
    # with the header columns carried from the manifest into the images table, and drawn
    assert (images["patient"] == images["group"]).all()
    assert set(images["view_position"]) == {"PA"} and set(images["modality"]) == {"DX"}
    for figure in ("view_positions.png", "manufacturers.png"):
        assert (repo / "reports" / "build" / figure).stat().st_size > 0
    assert (repo / "mlflow.db").is_file() and (repo / "mlartifacts").is_dir()
    # and no file written outside data/raw and the DVC cache holds a planted string: not the
    # tables, metrics, reports, dvc.lock, the MLflow store nor its artifacts
    written = _written_files(repo)
    assert len(written) > 30
    leaks = []
    for path in written:
        content = path.read_bytes()
        leaks += [f"{path.relative_to(repo)}: {value!r}" for value in planted if value in content]
    assert not leaks, "\n".join(leaks)
    # (while the same byte search finds every one of them in data/raw, where they belong)
    raw = b"".join(path.read_bytes() for path in (repo / "data" / "raw").rglob("IM*"))
    assert all(value in raw for value in planted)
    # and not the run's output either (it is what `dvc repro` shows and CI logs keep)
    assert not [value for value in planted if value.decode() in output]
