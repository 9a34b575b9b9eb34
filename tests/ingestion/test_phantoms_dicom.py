"""Tests for the DICOM phantoms (cxr/ingestion/phantoms_dicom.py, data.synthetic.format)."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxr.core.dicom import is_dicom_file
from cxr.core.outputs import read_json
from cxr.core.params import load_params
from cxr.core.paths import ProjectPaths
from cxr.ingestion.phantoms import write_phantom_dataset
from cxr.ingestion.phantoms_dicom import (
    IMAGES_PER_PATIENT,
    MANUFACTURER,
    DicomPhantom,
    plan_dicom_phantoms,
    write_dicom_phantom_dataset,
)
from stages.ingest import main as ingest_main

SIZE = 32
# 9 + 8 + 5 files: every scanner and transfer syntax, a class left out, a short last patient.
COUNTS = {"covid": 9, "normal": 8, "viral_pneumonia": 0, "lung_opacity": 5}
SEED = 7
PATIENT_FILE = re.compile(r"^(?P<label>[a-z_]+)/patient(?P<patient>\d{4,})-(?P<n>\d+)(\.dcm)?$")


def _tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by its path relative to root."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _patient_of(path: str) -> str:
    """The number of the fake patient a DICOM phantom's path names, e.g. 0007."""
    match = PATIENT_FILE.match(path)
    assert match is not None, f"{path} is not named <class>/patient<number>-<n>[.dcm]"
    return match["patient"]


def _png_twin(root: Path, phantom: DicomPhantom) -> np.ndarray:
    """The PNG phantom of the same class and index, as written by write_phantom_dataset."""
    with Image.open(root / phantom.label / f"{phantom.label}_{phantom.index:05d}.png") as png:
        return np.asarray(png, dtype=np.uint8)


def _displayed(ds: pydicom.Dataset) -> np.ndarray:
    """A file's uint8 display pixels by pydicom's own pipeline, as a standard viewer shows them.

    Stored values -> modality LUT (rescale) -> VOI LUT (the file's window) -> the window's
    output range (BitsStored after the rescale, PS3.3 C.11.2.1.2) scaled to 0..255, rounded ->
    MONOCHROME1 inverted.
    """
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    low, high = intercept, (2**ds.BitsStored - 1) * slope + intercept
    gray = np.rint((windowed - low) / (high - low) * 255.0).astype(np.uint8)
    return 255 - gray if ds.PhotometricInterpretation == "MONOCHROME1" else gray


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[DicomPhantom]]:
    """(DICOM folder, PNG folder, what was written) for the same phantoms."""
    root = tmp_path_factory.mktemp("twins")
    written = write_dicom_phantom_dataset(root / "dicom", COUNTS, SIZE, 0.5, seed=SEED)
    write_phantom_dataset(root / "png", COUNTS, SIZE, 0.5, seed=SEED)
    return root / "dicom", root / "png", written


def test_every_phantom_is_a_dicom_file_of_a_fake_patient(
    twins: tuple[Path, Path, list[DicomPhantom]],
) -> None:
    # Given the DICOM phantoms written for three classes
    dicom_dir, _, written = twins

    # When every file is read back with pydicom
    files = sorted(path for path in dicom_dir.rglob("*") if path.is_file())
    datasets = {path.relative_to(dicom_dir).as_posix(): pydicom.dcmread(path) for path in files}

    # Then exactly the planned files exist, each DICOM by its content, with or without .dcm
    assert sorted(datasets) == sorted(phantom.path for phantom in written)
    assert len(written) == sum(COUNTS.values())
    assert all(is_dicom_file(path) for path in files)
    assert {path.suffix for path in files} == {".dcm", ""}
    by_path = {phantom.path: phantom for phantom in written}
    for path, ds in datasets.items():
        phantom = by_path[path]
        match = PATIENT_FILE.match(path)
        assert match is not None, path
        assert match["label"] == phantom.label
        number = int(match["patient"])
        assert (number, int(match["n"])) == (phantom.patient, phantom.image_number)
        assert ds.PatientID == f"PHANTOM-{number:04d}"
        assert str(ds.PatientName) == f"PHANTOM^{number:04d}"
        assert re.fullmatch(r"19[3-9]\d\d{4}|200[0-5]\d{4}", ds.PatientBirthDate)
        assert ds.PatientSex in ("F", "M") and ds.PatientIdentityRemoved == "YES"
        assert ds.Modality in ("DX", "CR") and ds.Manufacturer == MANUFACTURER
        assert ds.ViewPosition in ("PA", "AP") and ds.BodyPartExamined == "CHEST"
        assert (
            ds.BitsAllocated == 16 and ds.BitsStored in (12, 16) and ds.HighBit == ds.BitsStored - 1
        )
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
        assert {"RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"} <= set(ds.dir())
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert phantom.label not in str(ds)  # the class is the folder's, never in the header
    # a mix of everything the decoders must handle
    values = {
        keyword: Counter(str(ds[keyword].value) for ds in datasets.values())
        for keyword in ("Modality", "ViewPosition", "PhotometricInterpretation", "BitsStored")
    }
    assert set(values["Modality"]) == {"DX", "CR"}
    assert set(values["ViewPosition"]) == {"PA", "AP"}
    assert set(values["PhotometricInterpretation"]) == {"MONOCHROME1", "MONOCHROME2"}
    assert set(values["BitsStored"]) == {"12", "16"}
    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in datasets.values()}
    assert syntaxes == {ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless}
    # every UID is valid and unique to its image
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        uids = [ds[keyword].value for ds in datasets.values()]
        assert all(pydicom.uid.UID(uid).is_valid for uid in uids), keyword
        assert len(set(uids)) == len(uids), keyword


def test_patients_have_several_images_and_never_span_classes() -> None:
    # Given the plan of a larger dataset
    planned = plan_dicom_phantoms({"covid": 40, "normal": 33, "lung_opacity": 21}, seed=SEED)

    # Then the patients are numbered 1.. across classes, each in one class with 2-4 images,
    # only a class's last patient being allowed fewer
    patients: dict[int, list[DicomPhantom]] = {}
    for phantom in planned:
        patients.setdefault(phantom.patient, []).append(phantom)
    assert sorted(patients) == list(range(1, len(patients) + 1))
    labels = {phantom.label for phantom in planned}
    last_of_class = {max(p.patient for p in planned if p.label == label) for label in labels}
    low, high = IMAGES_PER_PATIENT
    for patient, images in patients.items():
        assert len({image.label for image in images}) == 1
        assert [image.image_number for image in images] == list(range(1, len(images) + 1))
        assert len(images) <= high and (len(images) >= low or patient in last_of_class)
    # and the first class's patients depend on the seed only, not on how many images it has
    fewer = plan_dicom_phantoms({"covid": 21}, seed=SEED)
    assert fewer == [phantom for phantom in planned if phantom.label == "covid"][:21]


def test_decoded_by_pydicom_each_file_is_its_png_twin_exactly(
    twins: tuple[Path, Path, list[DicomPhantom]],
) -> None:
    # Given DICOM phantoms and the PNG phantoms of the same params
    dicom_dir, png_dir, written = twins

    for phantom in written:
        # When a file is decoded by pydicom (pixel_array, rescale, window, MONOCHROME1 inverted)
        displayed = _displayed(pydicom.dcmread(dicom_dir / phantom.path))

        # Then it is exactly the PNG phantom of the same class and index
        np.testing.assert_array_equal(displayed, _png_twin(png_dir, phantom), err_msg=phantom.path)


def test_each_gray_level_lands_on_its_own_8_bit_value_for_every_scanner(tmp_path: Path) -> None:
    # Given one file per scanner and transfer syntax, its pixels replaced by every gray level
    written = write_dicom_phantom_dataset(tmp_path, {"covid": 16}, SIZE, 0.5, seed=SEED)
    levels = np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) % 256
    for phantom in written:
        ds = pydicom.dcmread(tmp_path / phantom.path)
        stored = phantom.scanner.stored_values(levels.astype(np.uint8))
        ds.PixelData = stored.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

        # When it is decoded, the window's output exactly on the 8-bit grid (no rounding luck)
        windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = intercept, (2**ds.BitsStored - 1) * slope + intercept
        exact = (windowed - low) / (high - low) * 255.0

        # Then every level is within float rounding of its own value, never near a boundary
        expected = 255 - levels if ds.PhotometricInterpretation == "MONOCHROME1" else levels
        np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-9, err_msg=phantom.path)
        assert int(stored.max()) < 2**ds.BitsStored


# sha256 of the first four DICOM phantoms of one class (the four scanners and the four transfer
# syntaxes) at the default size and difficulty, seed 42 and params.yaml's pose spread (3). Like
# the PNG pins: dvc.lock's data/raw holds these bytes when data.synthetic.format is dicom, so a
# change in pydicom, CharLS or OpenJPEG output fails here instead of silently changing it.
PINNED_DICOM_DIGESTS = {
    "covid/patient0001-1.dcm": "378f9ca5b88754635f43966f2179c287174b1d4f78952b6573a8aa8316755e17",
    "covid/patient0001-2.dcm": "11a0ff60de9beeb76d1f3f047925e0506d3f8a0a4258787e39c5e37e4740eaa2",
    "covid/patient0001-3.dcm": "5e8ecc03bb216705d4ccbc0cfea38acab067af324ac2f5765ee547518ddce5d1",
    "covid/patient0002-1.dcm": "130090c5de2d81ed33c4ea753a319dcf4d37dfdc236d030ae4b7c932cbc0373c",
}


def test_dicom_bytes_are_pinned_and_the_same_params_write_the_same_bytes(tmp_path: Path) -> None:
    # Given the same four phantoms written twice
    for run in ("first", "second"):
        write_dicom_phantom_dataset(tmp_path / run, {"covid": 4}, 128, 0.5, 42, positioning=3.0)

    # Then both runs wrote the same bytes, and they are the pinned ones
    assert _tree_digests(tmp_path / "first") == _tree_digests(tmp_path / "second")
    assert _tree_digests(tmp_path / "first") == PINNED_DICOM_DIGESTS


def test_several_processes_write_the_same_dicom_bytes_as_one(tmp_path: Path) -> None:
    # Given enough phantoms that two processes share the work
    counts = {"covid": 70, "normal": 60}

    # When they are written by one process and by two
    one = write_dicom_phantom_dataset(tmp_path / "one", counts, SIZE, 0.5, seed=3, workers=1)
    two = write_dicom_phantom_dataset(tmp_path / "two", counts, SIZE, 0.5, seed=3, workers=2)

    # Then the plan and every file's bytes agree
    assert one == two
    assert _tree_digests(tmp_path / "one") == _tree_digests(tmp_path / "two")


def test_a_bad_argument_writes_nothing(tmp_path: Path) -> None:
    # Given an unknown class among the counts
    with pytest.raises(ValueError, match="unknown label 'tuberculosis'"):
        write_dicom_phantom_dataset(tmp_path, {"covid": 2, "tuberculosis": 1}, SIZE, 0.5, 1)

    # Then nothing was written
    assert list(tmp_path.iterdir()) == []


def test_ingest_with_format_dicom_lists_every_dicom_file(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
) -> None:
    # Given a checkout whose synthetic phantoms are DICOM files
    small_params_dict["data"]["synthetic"]["format"] = "dicom"
    write_params(tmp_path, small_params_dict)
    synthetic = load_params(tmp_path / "params.yaml").data.synthetic

    # When the ingest stage runs
    assert ingest_main(["--root", str(tmp_path)]) == 0

    # Then data/raw holds the DICOM phantoms, and the manifest lists every one (no extension too)
    paths = ProjectPaths(tmp_path)
    planned = plan_dicom_phantoms(synthetic.counts, synthetic.seed)
    manifest = pd.read_parquet(paths.manifest)
    assert sorted(manifest["path"]) == sorted(phantom.path for phantom in planned)
    assert dict(zip(manifest["path"], manifest["label"], strict=True)) == {
        phantom.path: phantom.label for phantom in planned
    }
    assert any("." not in Path(path).name for path in manifest["path"])
    assert _tree_digests(paths.raw_dir).keys() == set(manifest["path"])


def test_the_default_format_is_png_and_another_is_refused(
    tmp_path: Path,
    valid_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
) -> None:
    # Given the repository's params.yaml, then one asking for JPEG phantoms
    assert load_params(write_params(tmp_path, valid_params_dict)).data.synthetic.format == "png"
    valid_params_dict["data"]["synthetic"]["format"] = "jpeg"
    write_params(tmp_path, valid_params_dict)

    # Then the bad value is refused with its key and the allowed values
    with pytest.raises(Exception, match=r"data\.synthetic\.format") as refused:
        load_params(tmp_path / "params.yaml")
    assert "png" in str(refused.value) and "dicom" in str(refused.value)


HAS_DICOM_DECODER = importlib.util.find_spec("cxr.images.dicom") is not None
needs_dicom_decoder = pytest.mark.skipif(
    not HAS_DICOM_DECODER,
    reason="the project's DICOM decoder (cxr/images/dicom.py) is not there yet",
)


@needs_dicom_decoder
def test_the_project_decoder_gives_each_dicom_file_its_png_twins_cache_pixels(
    twins: tuple[Path, Path, list[DicomPhantom]],
) -> None:
    from cxr.images.decoding import decode_file

    # Given DICOM phantoms and their PNG twins
    dicom_dir, png_dir, written = twins

    for phantom in written:
        # When both are decoded as build does, into a smaller cache square
        png_name = f"{phantom.label}/{phantom.label}_{phantom.index:05d}.png"
        from_dicom = decode_file(dicom_dir, phantom.path, 10_000, 24, "pad")
        from_png = decode_file(png_dir, png_name, 10_000, 24, "pad")

        # Then the DICOM file decoded, to the very same cache pixels as its PNG
        assert from_dicom.rejection is None, (phantom.path, from_dicom.rejection)
        assert from_dicom.pixels is not None and from_png.pixels is not None
        np.testing.assert_array_equal(from_dicom.pixels, from_png.pixels, err_msg=phantom.path)


@pytest.mark.slow
@needs_dicom_decoder
def test_dvc_repro_through_split_on_dicom_phantoms_keeps_each_patient_in_one_split(
    tmp_path: Path,
) -> None:
    from dvc_project import clean_env, copy_project, git_repo, run, stages_run
    from training_fixtures import TINY_PIPELINE, tiny_params

    # Given a project whose small synthetic dataset is DICOM phantoms: about ten patients a
    # class, enough for a stratified split of whole patients
    params = tiny_params(changes=TINY_PIPELINE)
    counts = {"covid": 30, "normal": 36, "viral_pneumonia": 27}
    params["data"]["synthetic"].update(format="dicom", counts=counts)
    repo = tmp_path / "project"
    copy_project(repo, params)
    env = clean_env()
    git_repo(repo, env)

    # When the real dvc repro runs ingest, build and split
    output = run([sys.executable, "-m", "dvc", "repro", "split"], repo, env)

    # Then every DICOM file was listed and decoded (none rejected), with no warning at ingest
    assert stages_run(output) == ["ingest", "build", "split"]
    paths = ProjectPaths(repo)
    manifest = pd.read_parquet(paths.manifest)
    images = pd.read_parquet(paths.images_table)
    assert len(manifest) == len(images) == sum(counts.values())
    assert read_json(paths.summary("ingest"))["warnings"] == {}
    assert read_json(paths.summary("build"))["rejected"] == 0
    # and each fake patient is one group (its PatientID's pseudonym), distinct patients distinct
    patients = manifest["path"].map(_patient_of)
    assert (manifest["group"] != "").all()
    assert manifest.groupby(patients)["group"].nunique().eq(1).all()
    assert (
        manifest.groupby("group")["path"].apply(lambda p: p.map(_patient_of).nunique()).eq(1).all()
    )
    # and no fake patient has images in two splits
    splits = pd.concat(
        [
            pd.read_parquet(paths.split_dir / f"{name}.parquet").assign(split=name)
            for name in ("train", "val", "test")
        ]
    )
    assert sorted(splits["path"]) == sorted(images["path"])
    splits_per_patient = splits.groupby(splits["path"].map(_patient_of))["split"].nunique()
    assert (splits_per_patient == 1).all(), splits_per_patient[splits_per_patient > 1]
    assert splits_per_patient.size < len(splits) / 2  # patients really do have several images
