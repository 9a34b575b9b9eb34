"""A DICOM file's patient is its group: one patient's images never straddle splits."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dicom_header_fixtures import dicom_file
from split_fixtures import split_params

from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.tables import IMAGE_COLUMNS
from cxr.core.warnings import DataWarnings
from cxr.ingestion.ingest import Ingested, ingest, ingest_metrics
from cxr.splitting.splits import split_images

PATIENTS_PER_CLASS = 8
IMAGES_PER_PATIENT = 3


def _source(root: Path) -> Path:
    """Two classes of 8 patients with 3 images each, in folders that do not name the patient."""
    source = root / "source"
    for label in ("covid", "normal"):
        for patient in range(PATIENTS_PER_CLASS):
            for image in range(IMAGES_PER_PATIENT):
                number = patient * IMAGES_PER_PATIENT + image
                dicom_file(
                    source / label / f"IM{number:06d}",
                    patient_id=f"{label.upper()}-{patient:03d}",
                    seed=number,
                )
    return source


def _ingest(root: Path, params: dict[str, Any], source: Path, **data: Any) -> Ingested:
    params["data"]["source"] = str(source)
    params["data"].update(data)
    return ingest(parse_params(params).data, ProjectPaths(root), DataWarnings())


def _images(manifest: pd.DataFrame) -> pd.DataFrame:
    """The images table build would write for the manifest (every file distinct)."""
    digests = [hashlib.sha256(path.encode()).hexdigest() for path in manifest["path"]]
    return manifest.assign(
        width=64,
        height=64,
        mode="L",
        format="DICOM",
        bytes=1000,
        sha256=digests,
        phash=[digest[:16] for digest in digests],
        cache_index=range(len(manifest)),
    )[list(IMAGE_COLUMNS)]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _source(tmp_path_factory.mktemp("groups"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_patient_stays_in_one_split(
    tmp_path: Path, small_params_dict: dict[str, Any], source: Path, seed: int
) -> None:
    # Given DICOM files of 16 patients ingested without any group_pattern
    ingested = _ingest(tmp_path, small_params_dict, source)

    # Then each patient is a group, counted in the metrics
    manifest = ingested.manifest
    assert (manifest["group"] == manifest["patient"]).all() and (manifest["group"] != "").all()
    assert ingest_metrics(ingested)["groups"] == 2 * PATIENTS_PER_CLASS

    # When the split module splits them
    tables = split_images(_images(manifest), split_params(0.2, 0.2), seed, DataWarnings())

    # Then no patient has images in two splits, and every split holds some patients
    rows = pd.concat(table.assign(split=name) for name, table in tables.items())
    assert rows.groupby("patient")["split"].nunique().max() == 1
    assert all(len(table) for table in tables.values())
    assert len(rows) == len(manifest)


def test_an_explicit_group_pattern_wins(
    tmp_path: Path, small_params_dict: dict[str, Any], source: Path
) -> None:
    # When the same files are ingested with a group_pattern (the file number's first digit)
    ingested = _ingest(tmp_path, small_params_dict, source, group_pattern=r"IM0000(\d)")

    # Then the pattern's groups are used, the patient column still holds the patient
    manifest = ingested.manifest
    assert set(manifest["group"]) <= {str(digit) for digit in range(10)}
    assert manifest["patient"].nunique() == 2 * PATIENTS_PER_CLASS


def test_another_key_renames_the_groups_but_keeps_the_split(
    tmp_path: Path, small_params_dict: dict[str, Any], source: Path
) -> None:
    # Given the same files ingested in two checkouts, each with its own pseudonym key
    first = _ingest(tmp_path / "a", small_params_dict, source).manifest
    other = _ingest(tmp_path / "b", small_params_dict, source).manifest
    assert not set(first["group"]) & set(other["group"])

    # When each is split with the same seed
    def split_of(manifest: pd.DataFrame) -> dict[str, str]:
        tables = split_images(_images(manifest), split_params(0.2, 0.2), 7, DataWarnings())
        return {path: name for name, table in tables.items() for path in table["path"]}

    # Then each image lands in the same split: only which images share a patient matters
    assert split_of(first) == split_of(other)
