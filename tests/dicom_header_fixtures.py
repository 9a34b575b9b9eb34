"""Small DICOM files written with pydicom for the header, grouping and privacy tests.

Each is a 64 x 64 uint16 MONOCHROME2 image, explicit VR little endian, with the personal data a
hospital export holds (name, birth date, institution, physician, accession number) beside the
identifiers and descriptors ingest reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DIGITAL_XRAY = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage, For Presentation
SIDE = 64


def dicom_file(
    path: Path,
    *,
    patient_id: str = "PAT001",
    study_uid: str | None = None,
    modality: str = "DX",
    view: str = "PA",
    manufacturer: str = "Acme Imaging",
    seed: int = 0,
    low: int = 0,
    high: int = 4096,
    **attributes: Any,
) -> Path:
    """Write a small DICOM file at path (folders created); attributes override or add keywords.

    Its pixels are uniform noise in [low, high) drawn with `seed`.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_XRAY
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = DIGITAL_XRAY
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Doe^Jane"
    dataset.PatientBirthDate = "19700101"
    dataset.PatientID = patient_id
    dataset.PatientSex = "F"
    dataset.PatientAge = "054Y"
    dataset.InstitutionName = "General Hospital"
    dataset.ReferringPhysicianName = "House^Gregory"
    dataset.AccessionNumber = "ACC0001"
    dataset.StudyInstanceUID = study_uid or generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = modality
    dataset.ViewPosition = view
    dataset.BodyPartExamined = "CHEST"
    dataset.Manufacturer = manufacturer
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    pixels = np.random.default_rng(seed).integers(low, high, (SIDE, SIDE), dtype=np.uint16)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path
