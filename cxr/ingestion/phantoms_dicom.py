"""The embedded phantoms as DICOM files of fake patients: the whole DICOM path, tested offline.

Each file holds exactly the pixels of the PNG phantom of the same class and index
(phantoms.draw_phantom), stored the way real radiographs are: 12- or 16-bit values behind a
rescale (modality LUT) and a window, MONOCHROME1 (inverted) or MONOCHROME2, uncompressed or
in one of three lossless compressions. Decoded the standard way (pydicom's pixel_array, then
apply_modality_lut, apply_voi_lut, MONOCHROME1 inverted, the window's output range to 0-255,
rounded) every file gives back its PNG twin's uint8 pixels exactly.

The patients, dates and UIDs are made up and deterministic: the same arguments write the same
bytes (for the same pydicom, CharLS and OpenJPEG; OpenJPEG names its version in the file).
"""

from __future__ import annotations

import datetime
import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cxr.core.registry import PHANTOM_CLASSES
from cxr.ingestion.phantoms import (
    check_dataset_request,
    draw_phantom,
    write_bytes_atomically,
    write_in_processes,
)

# Gray levels of the PNG phantoms: a scanner spreads them over its stored range.
GRAY_LEVELS = 256

# Images per fake patient: drawn in [2, 4]; a class's last patient may have fewer.
IMAGES_PER_PATIENT = (2, 4)

# Stream keys for the generators of the DICOM-only choices, so that they never share a stream
# with the pixels' (seed, class, index) generators.
PARTITION_STREAM = 0xD1C0
PATIENT_STREAM = 0xD1C1
IMAGE_STREAM = 0xD1C2

# Every n-th patient's files have no extension (as from another PACS export): DICOM is
# recognised by its content, as archives and PACS exports name files anything.
EXTENSIONLESS_EVERY = 3

MANUFACTURER = "CXR-PIPELINE SYNTHETIC"
INSTITUTION = "PHANTOM HOSPITAL (NOT A REAL SITE)"
# Written into every file's meta header, so the bytes do not change with pydicom's version.
# UIDs here are pydicom's hash-based ones (its default root): prefix=None would ignore the
# entropy and draw a random UUID.
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["cxr-pipeline DICOM phantoms"])
IMPLEMENTATION_VERSION = "CXR_PHANTOMS_1"
FIRST_STUDY_DATE = datetime.date(2020, 3, 1)
OLDEST_BIRTH_DATE = datetime.date(1935, 1, 1)


@dataclass(frozen=True)
class Scanner:
    """A fake acquisition profile: how the 8-bit gray levels become stored values and tags.

    Gray level q (q = the pixel for MONOCHROME2, 255 - the pixel for MONOCHROME1) is stored as
    `offset + q * stride`; the rescale maps it to x = stored * slope + intercept. The window is
    chosen for pydicom's LINEAR formula (PS3.3 C.11.2.1.2.1), which maps x to
    ((x - (center - 0.5)) / (width - 1) + 0.5) over the output range: with
    width - 1 = 255 * stride * slope and center - 0.5 = x(0) + (width - 1) / 2, level q lands
    exactly on q / 255 of that range, so any rounding decoder gives q back.
    """

    modality: str  # DX or CR
    model: str
    photometric: str  # MONOCHROME1 or MONOCHROME2
    bits_stored: int  # 12 or 16, in 16 allocated bits
    slope: float
    intercept: float
    stride: int  # stored values between two neighbouring gray levels
    offset: int  # the stored value of gray level 0

    @property
    def window_width(self) -> float:
        """WindowWidth: 255 steps of the rescaled values, plus pydicom's LINEAR 1."""
        return (GRAY_LEVELS - 1) * self.stride * self.slope + 1.0

    @property
    def window_center(self) -> float:
        """WindowCenter: the middle of the rescaled range of the gray levels, plus LINEAR's 0.5."""
        darkest = self.offset * self.slope + self.intercept
        return darkest + (self.window_width - 1.0) / 2.0 + 0.5

    def stored_values(self, pixels: np.ndarray) -> np.ndarray:
        """The uint16 values this scanner stores for uint8 phantom pixels."""
        levels = pixels.astype(np.uint16)
        if self.photometric == "MONOCHROME1":
            levels = (GRAY_LEVELS - 1) - levels
        return (self.offset + levels * self.stride).astype(np.uint16)


# 12- and 16-bit, MONOCHROME1 and 2, DX and CR, rescales with and without an intercept. Every
# stored value fits in bits_stored: offset + 255 * stride < 2 ** bits_stored.
SCANNERS = (
    Scanner("DX", "PHANTOM DX-12", "MONOCHROME2", 12, 1.0, 0.0, 16, 8),
    Scanner("CR", "PHANTOM CR-12", "MONOCHROME1", 12, 0.5, -1024.0, 12, 100),
    Scanner("DX", "PHANTOM DX-16", "MONOCHROME1", 16, 2.0, -4096.0, 200, 1000),
    Scanner("CR", "PHANTOM CR-16", "MONOCHROME2", 16, 1.0, 0.0, 256, 127),
)

# Lossless transfer syntaxes, each with the pydicom encoding plugin that writes it ('' = none).
TRANSFER_SYNTAXES: tuple[tuple[UID, str], ...] = (
    (ExplicitVRLittleEndian, ""),
    (RLELossless, "pydicom"),
    (JPEGLSLossless, "pyjpegls"),
    (JPEG2000Lossless, "pylibjpeg"),
)

SOP_CLASSES = {"DX": DigitalXRayImageStorageForPresentation, "CR": ComputedRadiographyImageStorage}


@dataclass(frozen=True)
class DicomPhantom:
    """One DICOM phantom: the PNG phantom it holds, its fake patient, scanner and encoding."""

    label: str
    class_index: int
    index: int  # its PNG twin is <label>/<label>_<index:05d>.png
    patient: int  # 1, 2, ...: unique across the classes
    image_number: int  # 1, 2, ... within the patient
    scanner: Scanner
    transfer_syntax: UID
    path: str  # posix, relative to the dataset folder

    @property
    def patient_id(self) -> str:
        """PatientID, e.g. PHANTOM-0007."""
        return f"PHANTOM-{self.patient:04d}"

    @property
    def patient_name(self) -> str:
        """PatientName, e.g. PHANTOM^0007: plainly no real person."""
        return f"PHANTOM^{self.patient:04d}"


def plan_dicom_phantoms(counts: Mapping[str, int], seed: int) -> list[DicomPhantom]:
    """Every DICOM phantom write_dicom_phantom_dataset writes for these counts and seed.

    A class's images go, in index order, to patients of 2-4 images each (drawn from the seed);
    patients are numbered across the classes in PHANTOM_CLASSES order. Scanner and transfer
    syntax cycle with the index so that any four consecutive images of a class use all four of
    each, and sixteen every pair; the files of every third patient have no extension.
    """
    planned: list[DicomPhantom] = []
    patient = 0
    for class_index, label in enumerate(PHANTOM_CLASSES):
        count = int(counts.get(label, 0))
        partition = np.random.default_rng([seed, PARTITION_STREAM, class_index])
        image_number, patient_size = 0, 0
        for index in range(count):
            if image_number == patient_size:
                patient += 1
                image_number = 0
                patient_size = int(partition.integers(*IMAGES_PER_PATIENT, endpoint=True))
            image_number += 1
            transfer_syntax, _ = TRANSFER_SYNTAXES[(index + index // 4) % len(TRANSFER_SYNTAXES)]
            # Not the PatientID itself: ingest warns about identifiers kept in paths.
            name = f"patient{patient:04d}-{image_number}"
            extension = "" if patient % EXTENSIONLESS_EVERY == 0 else ".dcm"
            planned.append(
                DicomPhantom(
                    label,
                    class_index,
                    index,
                    patient,
                    image_number,
                    SCANNERS[index % len(SCANNERS)],
                    transfer_syntax,
                    f"{label}/{name}{extension}",
                )
            )
    return planned


def write_dicom_phantom_dataset(
    target_dir: Path,
    counts: Mapping[str, int],
    image_size: int,
    difficulty: float,
    seed: int,
    workers: int = 1,
    exposure: float = 1.0,
    positioning: float = 1.0,
) -> list[DicomPhantom]:
    """Write the phantoms as DICOM files target_dir/<label>/patient<patient>-<n>[.dcm].

    The arguments are write_phantom_dataset's, and each file holds the pixels of the PNG it
    writes for them; returns what was written (plan_dicom_phantoms), in that order.
    """
    # Validate everything before writing anything so a bad call leaves no partial dataset.
    check_dataset_request(counts, image_size, difficulty, seed, exposure, positioning)
    target_dir = Path(target_dir)
    planned = plan_dicom_phantoms(counts, int(seed))
    for label in sorted({phantom.label for phantom in planned}):
        (target_dir / label).mkdir(parents=True, exist_ok=True)
    # Each file has its own generators, so its bytes do not depend on which process writes it.
    write = functools.partial(
        _write_one,
        target_dir=target_dir,
        image_size=image_size,
        difficulty=float(difficulty),
        seed=int(seed),
        exposure=float(exposure),
        positioning=float(positioning),
    )
    write_in_processes(write, planned, workers, "cxr.ingestion.phantoms_dicom", "DICOM phantoms")
    return planned


def _write_one(
    phantom: DicomPhantom,
    target_dir: Path,
    image_size: int,
    difficulty: float,
    seed: int,
    exposure: float,
    positioning: float,
) -> None:
    pixels = draw_phantom(
        phantom.label,
        phantom.class_index,
        phantom.index,
        image_size,
        difficulty,
        seed,
        exposure,
        positioning,
    )
    # The UIDs are hashes of everything that makes the image, so another dataset (other seed,
    # size, exposure ...) never reuses one and the same arguments always give the same ones.
    made_of = [
        "cxr-pipeline DICOM phantom",
        f"seed={seed}",
        f"image_size={image_size}",
        f"difficulty={difficulty!r}",
        f"exposure={exposure!r}",
        f"positioning={positioning!r}",
        f"{phantom.label}/{phantom.index}",
    ]
    dataset = _dataset(phantom, pixels, seed, made_of)
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    write_bytes_atomically(target_dir / phantom.path, buffer.getvalue())


def _dataset(phantom: DicomPhantom, pixels: np.ndarray, seed: int, made_of: list[str]) -> Dataset:
    """The DICOM dataset of one phantom, its pixel data encoded in its transfer syntax.

    `made_of` names everything the pixels are drawn from: the UIDs are hashes of it.
    """

    def uid(kind: str) -> UID:
        # One source, fields separated: pydicom joins the sources with no separator.
        return generate_uid(entropy_srcs=["|".join([*made_of, kind])])

    scanner = phantom.scanner
    patient_rng = np.random.default_rng([seed, PATIENT_STREAM, phantom.patient])
    image_rng = np.random.default_rng([seed, IMAGE_STREAM, phantom.class_index, phantom.index])
    birth = OLDEST_BIRTH_DATE + datetime.timedelta(days=int(patient_rng.integers(0, 70 * 365)))
    sex = str(patient_rng.choice(["F", "M"]))
    first_visit = FIRST_STUDY_DATE + datetime.timedelta(days=int(patient_rng.integers(0, 700)))
    # One study a visit, a week or more apart: follow-up films of the same patient.
    study_date = first_visit + datetime.timedelta(days=9 * (phantom.image_number - 1))
    study_time = f"{int(image_rng.integers(7, 20)):02d}{int(image_rng.integers(0, 60)):02d}00"
    # Bedside films are AP, the department's PA; either scanner takes both.
    view = "AP" if image_rng.random() < 0.4 else "PA"
    sop_class = SOP_CLASSES[scanner.modality]
    instance_uid = uid("instance")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_time
    ds.AccessionNumber = f"PH{phantom.patient:05d}{phantom.image_number:02d}"
    ds.Modality = scanner.modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.ManufacturerModelName = scanner.model
    ds.StudyDescription = "CHEST PHANTOM (SYNTHETIC)"
    ds.PatientName = phantom.patient_name
    ds.PatientID = phantom.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{_years_between(birth, study_date):03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom: no real patient"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = f"{phantom.image_number}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if view == "PA" else ["R", "F"]
    # No label anywhere in the header: the class is the folder's, as in a real collection.
    ds.ImageComments = "synthetic chest phantom, not a patient"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = scanner.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = scanner.bits_stored
    ds.HighBit = scanner.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = _decimal_string(scanner.window_center)
    ds.WindowWidth = _decimal_string(scanner.window_width)
    ds.WindowCenterWidthExplanation = "PHANTOM 8-BIT"
    ds.VOILUTFunction = "LINEAR"
    ds.RescaleIntercept = _decimal_string(scanner.intercept)
    ds.RescaleSlope = _decimal_string(scanner.slope)
    ds.RescaleType = "US"
    if scanner.modality == "DX":
        # The DX IOD asks for it: INVERSE goes with MONOCHROME1 (the same, single inversion).
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "INVERSE" if scanner.photometric == "MONOCHROME1" else "IDENTITY"

    stored = scanner.stored_values(pixels)
    transfer_syntax, plugin = next(
        pair for pair in TRANSFER_SYNTAXES if pair[0] == phantom.transfer_syntax
    )
    if plugin:
        # generate_instance_uid=False: a compressed copy would otherwise get a random new UID.
        ds.compress(transfer_syntax, stored, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _years_between(birth: datetime.date, day: datetime.date) -> int:
    """Whole years from `birth` to `day`: the age on that day."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _decimal_string(value: float) -> str:
    """A DS value written exactly (the shortest repr of the float), '.0' left off."""
    text = repr(float(value)).removesuffix(".0")
    if len(text) > 16 or "e" in text:
        raise ValueError(f"{value!r} does not fit a DICOM decimal string exactly")
    return text
