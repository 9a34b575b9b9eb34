"""Tests for DICOM decoding (cxr/images/dicom.py through cxr/images/decoding.py).

Every file is written by pydicom here (pydicom.Dataset, `ds.compress` with the RLE, JPEG-LS and
JPEG 2000 encoders, JPEG baseline encoded by Pillow and encapsulated), or is one of pydicom's
bundled test files where no encoder exists (JPEG extended 12-bit, JPEG lossless SV1).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder

from cxr.core.params import CT_WINDOWS, BuildParams
from cxr.core.tables import MANIFEST_COLUMNS
from cxr.images.decoding import (
    UnusableImage,
    decode_bytes,
    decode_file,
    decode_gray,
    resize_square,
)
from cxr.images.dicom import first_frame, read_header
from cxr.images.pixel_cache import decode_into_cache

LIMIT = 10_000_000
REAL_DICOM = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "covid-ct-sbu-dicom"


def _image(
    stored: np.ndarray,
    *,
    sop_class: str = uid.CTImageStorage,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attributes: Any,
) -> Dataset:
    """A single- or multi-frame image dataset holding `stored` (uncompressed, explicit LE)."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    colour = stored.ndim == 3 and stored.shape[-1] == 3
    frames = stored.shape[0] if stored.ndim == 3 and not colour else 1
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.Rows, dataset.Columns = stored.shape[-3:-1] if colour else stored.shape[-2:]
    dataset.SamplesPerPixel = 3 if colour else 1
    if colour:
        dataset.PlanarConfiguration = 0
    dataset.PhotometricInterpretation = "RGB" if colour else photometric
    dataset.BitsAllocated = stored.dtype.itemsize * 8
    dataset.BitsStored = bits_stored or dataset.BitsAllocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = int(stored.dtype.kind == "i")
    for name, value in attributes.items():
        setattr(dataset, name, value)
    dataset.PixelData = stored.tobytes()
    return dataset


def _file_bytes(
    dataset: Dataset, syntax: str = uid.ExplicitVRLittleEndian, **options: Any
) -> bytes:
    """`dataset` in the DICOM file format with `syntax` (compressed by pydicom's encoders)."""
    if uid.UID(syntax).is_encapsulated and dataset.file_meta.TransferSyntaxUID != syntax:
        dataset.compress(syntax, **options)
    else:
        dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ramp(height: int = 48, width: int = 64) -> np.ndarray:
    """Every 8-bit value, in a pattern that is not smooth (so the codecs have work to do)."""
    values = (np.arange(height * width) * 37) % 256
    return values.reshape(height, width).astype(np.uint8)


def _ct_slice(side: int = 64, seed: int = 0) -> np.ndarray:
    """Stored values (int16) of a CT-like slice: air, body, two lungs, noise; intercept -1024."""
    y, x = np.mgrid[0:side, 0:side] / side
    hounsfield = np.full((side, side), -1000.0)
    hounsfield[((y - 0.5) / 0.43) ** 2 + ((x - 0.5) / 0.36) ** 2 < 1] = 40.0
    lungs = ((y - 0.48) / 0.24) ** 2 + ((np.abs(x - 0.5) - 0.15) / 0.1) ** 2 < 1
    hounsfield[lungs] = -850.0
    hounsfield += np.random.default_rng(seed).normal(0, 15, hounsfield.shape)
    return np.round(hounsfield + 1024).astype(np.int16)


def _ct(stored: np.ndarray | None = None, **attributes: Any) -> Dataset:
    """A CT image with Hounsfield units by its rescale and a lung window of its own."""
    own = {"RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": -600, "WindowWidth": 1500}
    return _image(_ct_slice() if stored is None else stored, **{**own, **attributes})


def _testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's bundled test file {name} is missing"
    return Path(path).read_bytes()


def _stored_values(content: bytes) -> np.ndarray:
    """The stored values of the first frame, as cxr.images.dicom reads them."""
    return first_frame(read_header(io.BytesIO(content)))


# --- recognition by content ------------------------------------------------------------------


def test_a_dicom_file_is_recognised_by_its_content_whatever_its_name(tmp_path: Path) -> None:
    # Given the same DICOM image as IM000001 (no extension), scan.png and scan.DCM
    content = _file_bytes(_image(_ramp()))
    for name in ("IM000001", "scan.png", "scan.DCM"):
        (tmp_path / name).write_bytes(content)

        # When build decodes it
        result = decode_file(tmp_path, name, LIMIT, 32, "pad", "full")

        # Then pydicom read it: its own size, format DICOM, mode its photometric interpretation
        assert result.rejection is None and result.info is not None
        assert result.info["format"] == "DICOM" and result.info["mode"] == "MONOCHROME2"
        assert (result.info["width"], result.info["height"]) == (64, 48)
        np.testing.assert_array_equal(decode_gray(tmp_path / name, LIMIT, 0, "full"), _ramp())


def test_a_file_without_the_dicm_marker_is_not_taken_for_dicom() -> None:
    # Given a dataset written without the preamble and marker (not the DICOM file format)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, _image(_ramp()), enforce_file_format=False)
    # When decoded, then it is no image format at all
    with pytest.raises(UnusableImage) as error:
        decode_bytes(buffer.getvalue()[132:], LIMIT)
    assert error.value.kind == "not_an_image"


# --- every common transfer syntax ------------------------------------------------------------

LOSSLESS = [
    (uid.ExplicitVRLittleEndian, {}),
    (uid.ImplicitVRLittleEndian, {}),
    (uid.DeflatedExplicitVRLittleEndian, {}),
    (uid.RLELossless, {}),
    (uid.JPEGLSLossless, {}),
    (uid.JPEG2000Lossless, {}),
]


@pytest.mark.parametrize(("syntax", "options"), LOSSLESS, ids=lambda value: str(value)[:24])
@pytest.mark.parametrize("bits", [8, 16])
def test_lossless_syntaxes_decode_to_exactly_the_pixels_written(
    syntax: str, options: dict[str, Any], bits: int
) -> None:
    # Given 8-bit gray, written as 8-bit values or as 16-bit values v * 257 (0 .. 65535)
    gray = _ramp()
    stored = gray if bits == 8 else gray.astype(np.uint16) * 257
    content = _file_bytes(_image(stored, Modality="OT"), syntax, **options)

    # When decoded with the whole stored range as the window
    decoded = decode_bytes(content, LIMIT, 0, "full")

    # Then every pixel is the one written
    np.testing.assert_array_equal(decoded.pixels, gray)
    assert decoded.format == "DICOM"


@pytest.mark.parametrize(("syntax", "options"), LOSSLESS, ids=lambda value: str(value)[:24])
def test_lossless_syntaxes_keep_signed_ct_values_exactly(
    syntax: str, options: dict[str, Any]
) -> None:
    # Given a signed 16-bit CT slice in each lossless syntax
    stored = _ct_slice()
    content = _file_bytes(_ct(stored), syntax, **options)
    # When its stored values are read, then they are the ones written
    np.testing.assert_array_equal(_stored_values(content), stored)


def test_jpeg_ls_near_lossless_stays_within_its_error_bound() -> None:
    stored = _ct_slice()
    content = _file_bytes(_ct(stored), uid.JPEGLSNearLossless, jls_error=3)
    assert np.abs(_stored_values(content).astype(int) - stored).max() <= 3


def test_jpeg_2000_lossy_decodes_close_to_the_original() -> None:
    stored = _ct_slice()
    content = _file_bytes(_ct(stored), uid.JPEG2000, j2k_cr=[8])
    exact = decode_bytes(_file_bytes(_ct(stored)), LIMIT, 0, "lung").pixels
    lossy = decode_bytes(content, LIMIT, 0, "lung").pixels
    # (the noise of the slice, 15 HU, is 2.5 grey levels in this window)
    assert np.abs(lossy.astype(int) - exact).mean() < 5.0


def test_jpeg_baseline_from_pillow_decodes_close_to_the_original() -> None:
    # Given 8-bit gray compressed by Pillow and encapsulated by pydicom as JPEG baseline
    gray = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=95)
    dataset = _image(gray, Modality="OT")
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    content = _file_bytes(dataset, uid.JPEGBaseline8Bit)
    # When decoded, then the pixels are those of the JPEG, within its loss
    decoded = decode_bytes(content, LIMIT, 0, "full").pixels
    assert decoded.shape == gray.shape
    assert np.abs(decoded.astype(int) - gray).mean() < 2.0


def test_jpeg_extended_12_bit_decodes_its_stored_range() -> None:
    # Given pydicom's 12-bit JPEG extended (process 2 and 4) test file (no encoder here)
    content = _testdata("JPGExtended.dcm")
    reference = pydicom.dcmread(io.BytesIO(content)).pixel_array
    # When decoded with the whole 12-bit range as the window
    decoded = decode_bytes(content, LIMIT, 0, "full").pixels
    # Then each pixel is its 12-bit value scaled to 8 bits; its own range is no flat field
    np.testing.assert_array_equal(decoded, np.rint(reference / 4095 * 255).astype(np.uint8))
    assert decoded.shape == (1024, 256)
    assert decode_bytes(content, LIMIT, 0, "auto").pixels.std() > 20


def test_jpeg_lossless_sv1_decodes_to_the_same_pixels_as_rle() -> None:
    # Given one RGB image as JPEG lossless SV1 (process 14) and as RLE, pydicom's test files
    lossless = decode_bytes(_testdata("SC_rgb_jpeg_gdcm.dcm"), LIMIT).pixels
    rle = decode_bytes(_testdata("SC_rgb_rle.dcm"), LIMIT).pixels
    # Then both decode to the same gray
    np.testing.assert_array_equal(lossless, rle)
    assert lossless.shape == (100, 100) and lossless.std() > 5


# --- the pixel pipeline: modality LUT, VOI, presentation ------------------------------------


def _hounsfield_ramp() -> np.ndarray:
    """Stored values (intercept -1024) of -1200 .. 1200 HU."""
    return (np.linspace(-1200, 1200, 64 * 32).reshape(32, 64) + 1024).round().astype(np.int16)


def _linear(hounsfield: np.ndarray, centre: float, width: float) -> np.ndarray:
    """The standard's LINEAR window function to 0-255, written out independently."""
    unit = (hounsfield - (centre - 0.5)) / (width - 1) + 0.5
    return np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("window", ["lung", "mediastinum", (40.0, 400.0)])
def test_windows_apply_to_hounsfield_units_after_the_rescale(window: Any) -> None:
    # Given stored values whose rescale (slope 2, intercept -1024) gives Hounsfield units
    stored = (_hounsfield_ramp() // 2).astype(np.int16)
    content = _file_bytes(_ct(stored, RescaleSlope=2, RescaleIntercept=-1024))
    # When decoded through a named window or [centre, width]
    decoded = decode_bytes(content, LIMIT, 0, window).pixels
    # Then each pixel is the window's gray of its Hounsfield unit
    centre, width = CT_WINDOWS[window] if isinstance(window, str) else window
    np.testing.assert_array_equal(decoded, _linear(stored * 2.0 - 1024, centre, width))


def test_auto_takes_the_files_own_window_and_lung_is_that_window() -> None:
    # Given a CT slice whose own window is -600 / 1500 (the lung window)
    content = _file_bytes(_ct(_hounsfield_ramp()))
    # When it is decoded with auto and with lung
    auto = decode_bytes(content, LIMIT, 0, "auto").pixels
    lung = decode_bytes(content, LIMIT, 0, "lung").pixels
    # Then they are the same pixels: air (-1000 HU) dark-ish, bone (1000 HU) white
    np.testing.assert_array_equal(auto, lung)
    np.testing.assert_array_equal(auto, _linear(_hounsfield_ramp() - 1024.0, -600, 1500))


def test_auto_takes_the_first_of_several_windows() -> None:
    content = _file_bytes(_ct(_hounsfield_ramp(), WindowCenter=[40, -600], WindowWidth=[400, 1500]))
    expected = _linear(_hounsfield_ramp() - 1024.0, 40, 400)
    np.testing.assert_array_equal(decode_bytes(content, LIMIT).pixels, expected)


def test_auto_prefers_the_voi_lut_sequence_to_the_window() -> None:
    # Given a 12-bit image with a window and a VOI LUT (12-bit entries) that reverses 0 .. 4095
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 12])
    lut.add_new("LUTData", "US", list(range(4095, -1, -1)))
    dataset = _image(stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    dataset.VOILUTSequence = [lut]
    # When decoded with auto, then the LUT is the VOI: its 12-bit output scaled to 0-255
    decoded = decode_bytes(_file_bytes(dataset), LIMIT).pixels
    np.testing.assert_array_equal(decoded, np.rint((4095 - stored) / 4095 * 255).astype(np.uint8))


def test_auto_without_a_window_spreads_the_images_own_range() -> None:
    # Given 16-bit values 1000 .. 3000 and no window: not the 65,536 values 16 bits could hold
    stored = np.linspace(1000, 3000, 32 * 32).reshape(32, 32).astype(np.uint16)
    decoded = decode_bytes(_file_bytes(_image(stored, Modality="MR")), LIMIT).pixels
    assert decoded.min() == 0 and decoded.max() == 255
    np.testing.assert_array_equal(decoded, np.rint((stored - 1000.0) / 2000 * 255).astype(np.uint8))


def test_full_shows_the_whole_stored_range_after_the_rescale() -> None:
    # Given 12-bit stored values of an image with a window of its own
    stored = np.arange(0, 4096, 4, dtype=np.uint16).reshape(32, 32)
    content = _file_bytes(_image(stored, bits_stored=12, WindowCenter=100, WindowWidth=50))
    # When decoded with full, then 0 .. 4095 span black to white whatever the window says
    expected = np.rint(stored / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_bytes(content, LIMIT, 0, "full").pixels, expected)


def test_unused_high_bits_are_not_taken_for_values() -> None:
    # Given 12-bit values in 16-bit words whose 4 unused high bits are set (overlay garbage)
    stored = np.arange(0, 4096, 4, dtype=np.uint16).reshape(32, 32)
    dataset = _image(stored | 0xF000, bits_stored=12)
    # When decoded, then BitsStored is honoured: the pixels are those of the 12-bit values
    expected = np.rint(stored / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        decode_bytes(_file_bytes(dataset), LIMIT, 0, "full").pixels, expected
    )


@pytest.mark.parametrize(
    ("photometric", "shape"),
    [("MONOCHROME1", None), ("MONOCHROME2", "INVERSE"), ("MONOCHROME1", "INVERSE")],
)
def test_larger_values_shown_darker_are_inverted_so_air_is_dark(
    photometric: str, shape: str | None
) -> None:
    # Given a radiograph stored as MONOCHROME2, and the same values as MONOCHROME1 or INVERSE
    stored = (_ramp().astype(np.uint16) * 16).astype(np.uint16)
    plain = _file_bytes(
        _image(stored, bits_stored=12, sop_class=uid.DigitalXRayImageStorageForPresentation)
    )
    extra = {"PresentationLUTShape": shape} if shape else {}
    inverted = _file_bytes(_image(stored, bits_stored=12, photometric=photometric, **extra))
    # When both are decoded, then the inverted one is the plain one's negative (inverted once)
    for window in ("auto", "full"):
        normal = decode_bytes(plain, LIMIT, 0, window).pixels
        np.testing.assert_array_equal(decode_bytes(inverted, LIMIT, 0, window).pixels, 255 - normal)


def test_a_multi_frame_object_gives_its_first_frame() -> None:
    # Given three frames that differ
    frames = np.stack([_ramp(), 255 - _ramp(), np.zeros_like(_ramp())])
    for syntax in (uid.ExplicitVRLittleEndian, uid.RLELossless):
        content = _file_bytes(_image(frames, Modality="OT"), syntax)
        # When decoded, then the image is the first frame
        decoded = decode_bytes(content, LIMIT, 0, "full")
        np.testing.assert_array_equal(decoded.pixels, _ramp())
        assert (decoded.width, decoded.height) == (64, 48)


def test_colour_becomes_gray_as_pillow_converts_it() -> None:
    # Given an RGB image
    rgb = np.stack([_ramp(), 255 - _ramp(), np.roll(_ramp(), 5, axis=1)], axis=-1)
    content = _file_bytes(_image(rgb, Modality="OT"))
    # When decoded, then it is Pillow's ITU-R 601 luma of the same colours
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(decode_bytes(content, LIMIT).pixels, expected)


@pytest.mark.parametrize("name", ["examples_palette.dcm", "examples_ybr_color.dcm"])
def test_palette_and_ybr_colour_files_decode_to_gray(name: str) -> None:
    decoded = decode_bytes(_testdata(name), LIMIT)
    assert decoded.pixels.ndim == 2 and decoded.pixels.dtype == np.uint8
    assert decoded.pixels.std() > 5


# --- JPEG 2000 at the resolution the cache needs ---------------------------------------------


def test_jpeg_2000_is_decoded_at_the_reduction_the_cache_needs() -> None:
    # Given a smooth 128 x 128 JPEG 2000 image (-900 .. 300 HU) and a 64-px cache
    y, x = np.mgrid[0:128, 0:128] / 128
    stored = (1024 - 300 + 600 * np.sin(6 * x) * np.cos(5 * y)).astype(np.int16)
    content = _file_bytes(_ct(stored), uid.JPEG2000Lossless)
    # When decoded for the cache (draft) and in full
    drafted = decode_bytes(content, LIMIT, 64, "lung")
    full = decode_bytes(content, LIMIT, 0, "lung")
    # Then the draft is half each side (the wavelet's own low-pass), the file's own size is
    # reported, and it is close to the full decode squared to the cache
    assert drafted.pixels.shape == (64, 64) and full.pixels.shape == (128, 128)
    assert (drafted.width, drafted.height) == (128, 128)
    difference = drafted.pixels.astype(int) - resize_square(full.pixels, 64, "pad")
    assert np.abs(difference).mean() < 2.0
    # and a cache as large as the image asks for no reduction
    assert decode_bytes(content, LIMIT, 128, "lung").pixels.shape == (128, 128)


def test_draft_leaves_other_syntaxes_at_full_size() -> None:
    content = _file_bytes(_ct(_ct_slice(128)), uid.RLELossless)
    assert decode_bytes(content, LIMIT, 32, "lung").pixels.shape == (128, 128)


# --- bad input: one line, never a crash -------------------------------------------------------


def _presentation_state() -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = uid.GrayscaleSoftcopyPresentationStateStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    dataset.SOPClassUID = uid.GrayscaleSoftcopyPresentationStateStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality = "PR"
    dataset.PresentationLUTShape = "IDENTITY"
    return dataset


def _video() -> bytes:
    dataset = _ct()
    dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = uid.MPEG4HP41
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bad_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, kind, words the reason holds)."""
    whole = _file_bytes(_ct())
    jpeg_2000 = bytearray(_file_bytes(_ct(), uid.JPEG2000Lossless))
    size_marker = jpeg_2000.find(b"\xff\x4f\xff\x51")  # the codestream's SIZ segment
    jpeg_2000[size_marker + 4 : size_marker + 30] = bytes(26)
    dicomdir = get_testdata_file("DICOMDIR")
    assert dicomdir is not None
    return {
        "header_cut": (whole[:300], "corrupt", "truncated or incomplete: the file (300 bytes)"),
        "pixels_cut": (
            whole[:-100],
            "corrupt",
            "truncated: its pixel data needs 8192 bytes, 8092 are left",
        ),
        "preamble_only": (whole[:132], "corrupt", "without a SOP Class UID"),
        "jpeg_ls_cut": (
            _file_bytes(_ct(), uid.JPEGLSLossless)[:-500],
            "corrupt",
            "truncated",
        ),
        "damaged_jpeg_2000": (
            bytes(jpeg_2000),
            "corrupt",
            "JPEG 2000 Image Compression (Lossless Only) pixel data unreadable",
        ),
        "DICOMDIR": (Path(dicomdir).read_bytes(), "no_pixel_data", "Media Storage Directory"),
        "report.dcm": (_testdata("test-SR.dcm"), "no_pixel_data", "Comprehensive SR Storage"),
        "state.dcm": (
            _file_bytes(_presentation_state()),
            "no_pixel_data",
            "Grayscale Softcopy Presentation State Storage",
        ),
        "video.dcm": (_video(), "unsupported", "MPEG-4 AVC/H.264 High Profile / Level 4.1"),
        "bits.dcm": (
            _file_bytes(_ct(BitsStored=17)),
            "corrupt",
            "inconsistent bit depths: BitsStored 17 of BitsAllocated 16",
        ),
        "frames.dcm": (
            _file_bytes(_image(np.zeros((3, 64, 64), np.uint8))),
            "too_large",
            "64x64 x 3 frames = 12288 pixels, over build.max_pixels = 10000",
        ),
    }


def test_each_bad_file_is_one_line_in_rejected_csv_and_the_good_ones_decode(
    tmp_path: Path,
) -> None:
    # Given a folder of two good DICOM files among truncated, pixel-less, undecodable,
    # inconsistent and too-large ones
    raw_dir = tmp_path / "raw"
    (raw_dir / "ct").mkdir(parents=True)
    bad = _bad_files()
    files = {"good1.dcm": _file_bytes(_ct()), "good2": _file_bytes(_ct(), uid.RLELossless)}
    files |= {name: content for name, (content, _, _) in bad.items()}
    for name, content in files.items():
        (raw_dir / "ct" / name).write_bytes(content)
    manifest = pd.DataFrame(
        [[f"ct/{name}", "ct", "", "", ""] for name in files], columns=list(MANIFEST_COLUMNS)
    )
    build = BuildParams(
        cache_size=32,
        resize="pad",
        max_pixels=10_000,
        histogram_images_per_class=2,
        histogram_bins=8,
        dicom={"window": "lung"},
    )

    # When build decodes them in two processes
    images, rejected = decode_into_cache(manifest, raw_dir, build, tmp_path / "cache.npy", 2)

    # Then the good ones are cached and each bad one is one line naming its kind and reason
    assert list(images["path"]) == ["ct/good1.dcm", "ct/good2"]
    assert set(images["format"]) == {"DICOM"}
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    assert len(reasons) == len(bad)
    for name, (_, kind, words) in bad.items():
        reason = reasons[f"ct/{name}"]
        assert reason.startswith(f"{kind}: ") and words in reason, reason
        assert "\n" not in reason
    np.testing.assert_array_equal(
        np.load(tmp_path / "cache.npy")[0], np.load(tmp_path / "cache.npy")[1]
    )


@pytest.fixture
def jpeg_ls_without_plugins() -> Iterator[None]:
    """pydicom's JPEG-LS decoder with its plugins removed, as where none is installed."""
    decoder = get_decoder(uid.JPEGLSLossless)
    removed = decoder.available_plugins
    for label in removed:
        decoder.remove_plugin(label)
    try:
        yield
    finally:
        # Put back as pydicom registers them (pydicom/pixels/decoders/base.py).
        for label in removed:
            decoder.add_plugin(label, (f"pydicom.pixels.decoders.{label}", "_decode_frame"))


def test_a_syntax_no_installed_plugin_decodes_names_the_package_that_would(
    jpeg_ls_without_plugins: None,
) -> None:
    content = _file_bytes(_ct(), uid.JPEGLSLossless)
    with pytest.raises(UnusableImage) as error:
        decode_bytes(content, LIMIT)
    assert error.value.kind == "unsupported"
    assert str(error.value).startswith(
        "unsupported: transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"
        ": no installed decoder; pip install 'python-gdcm>=3.0.10'"
    )


# --- real data --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_files() -> list[str]:
    if not REAL_DICOM.is_dir():
        pytest.skip(f"{REAL_DICOM} is absent: the 62 CT slices of covid-ct-sbu-dicom")
    return sorted(path.relative_to(REAL_DICOM).as_posix() for path in REAL_DICOM.rglob("*.dcm"))


def test_every_real_ct_slice_decodes_with_lungs_dark_and_body_bright(real_files: list[str]) -> None:
    assert len(real_files) == 62
    for relative in real_files:
        # When build decodes the slice through the lung window
        result = decode_file(REAL_DICOM, relative, 50_000_000, 128, "pad", "lung")
        assert result.rejection is None and result.pixels is not None, relative
        pixels = result.pixels
        # Then it is a picture, not a flat field: air and lungs dark, body and bone bright
        assert pixels.std() > 30, relative
        assert np.percentile(pixels, 5) < 70, relative  # air, -1000 HU: 60 in this window
        assert np.percentile(pixels, 95) > 200, relative


def test_auto_shows_each_real_slice_through_its_own_window(real_files: list[str]) -> None:
    windows = set()
    for relative in real_files:
        header = pydicom.dcmread(REAL_DICOM / relative, stop_before_pixels=True)
        own = (float(header.WindowCenter), float(header.WindowWidth))
        windows.add(own)
        auto = decode_gray(REAL_DICOM / relative, 50_000_000, 128, "auto")
        np.testing.assert_array_equal(
            auto, decode_gray(REAL_DICOM / relative, 50_000_000, 128, own)
        )
    assert len(windows) >= 3  # the studies differ: lung, mediastinum, soft tissue, bone


def test_damaged_files_are_rejected_in_one_line_and_never_crash_the_decoder() -> None:
    # Given 300 copies of small files of six syntaxes, each with a few random bytes changed or
    # cut short (a decoder written in Rust panics on some of them)
    rng = np.random.default_rng(0)
    syntaxes = (
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.RLELossless,
        uid.JPEGLSLossless,
        uid.JPEG2000Lossless,
    )
    originals = [_file_bytes(_ct(_ct_slice(32)), syntax) for syntax in syntaxes]
    kinds = set()
    for trial in range(300):
        damaged = bytearray(originals[trial % len(originals)])
        for position in rng.integers(132, len(damaged), size=int(rng.integers(1, 8))):
            damaged[position] = int(rng.integers(256))
        if trial % 5 == 0:
            damaged = damaged[: int(rng.integers(132, len(damaged)))]
        # When each is decoded, then it decodes or is refused in one printable line
        try:
            decode_bytes(bytes(damaged), LIMIT, int(rng.choice([0, 16])), "lung")
        except UnusableImage as error:
            kinds.add(error.kind)
            assert str(error).isprintable() and len(str(error)) < 450, str(error)
    assert "corrupt" in kinds
