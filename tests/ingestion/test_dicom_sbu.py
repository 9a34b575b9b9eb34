"""Ingest of the real COVID-19-NY-SBU DICOM sample: headers, patient groups, no patient IDs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.tables import DICOM_COLUMNS
from cxr.core.warnings import DataWarnings
from cxr.ingestion.ingest import ingest, ingest_metrics

DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "covid-ct-sbu-dicom"

pytestmark = pytest.mark.skipif(
    not DATASET.is_dir(), reason=f"{DATASET} is absent (the shared covid-ct-sbu-dicom sample)"
)


def test_62_ct_slices_of_10_patients_become_10_groups_without_their_ids(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the sample read in place: <patient>/{axial,coronal,sagittal}/<date>-<slice>.dcm,
    # each patient folder mapped to the one class (it has no class folders)
    patients = sorted(path.name for path in DATASET.iterdir() if path.is_dir())
    small_params_dict["data"].update(
        source=str(DATASET), label_map=dict.fromkeys(patients, "covid")
    )
    warnings = DataWarnings(io.StringIO())

    # When it is ingested
    ingested = ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path), warnings)

    # Then every slice is listed, each patient is one group, read from its header
    manifest = pd.read_parquet(ProjectPaths(tmp_path).manifest)
    assert len(manifest) == 62 and ingest_metrics(ingested)["groups"] == 10
    assert manifest.groupby("group")["path"].apply(lambda p: p.str[:7].nunique()).max() == 1
    assert set(manifest["modality"]) == {"CT"}
    assert set(manifest["transfer_syntax"]) == {"Explicit VR Little Endian"}
    assert set(manifest["photometric"]) == {"MONOCHROME2"}
    assert set(manifest["bits_stored"]) == {"16"}
    # and no column but the path (the source names its folders after the patients) holds an ID
    cells = manifest.drop(columns="path").to_numpy().ravel().tolist()
    assert not any(patient in str(cell) for patient in patients for cell in cells)
    assert set(manifest["patient"]) == set(manifest["group"])
    assert set(DICOM_COLUMNS) <= set(manifest.columns)
    # and ingest says the paths hold the patient IDs
    assert warnings.counts["identifier_in_path"] == 1
