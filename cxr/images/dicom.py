"""DICOM pixels as the standard displays them, in one gray uint8 channel, with pydicom.

The grayscale pipeline of DICOM PS3.4 (Annex N), in order, each step pydicom's own function:
stored values (pixel_array: the transfer syntax decoded by the installed pylibjpeg / pyjpegls
plugins, unused high bits of BitsStored masked) -> Modality LUT (apply_modality_lut: Rescale
Slope / Intercept, Hounsfield units for CT) -> VOI (build.dicom.window: apply_voi /
apply_windowing) -> Presentation LUT (apply_presentation_lut; MONOCHROME1 and a Presentation
LUT Shape INVERSE are shown with air dark, like every other image) -> 0-255.

Every step maps a stored value to one display value, so the steps run once over the range of
values the image holds (a lookup table of a few thousand entries for a CT slice) and the
image is then indexed by it: the same numbers as running them on every pixel, several times
faster. A multi-frame object (cine, tomosynthesis, an enhanced CT series) gives its first frame
only; its Rows x Columns x NumberOfFrames are checked against build.max_pixels on the header,
before anything is decoded. Colour (RGB, YBR, palette) becomes gray as Pillow images do (ITU-R
601 luma). JPEG 2000 is decoded at a reduced resolution when the cache needs fewer pixels,
much as a JPEG is drafted (see decode_reduced_jpeg2000).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image, features
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_presentation_lut,
    apply_voi,
    apply_windowing,
    as_pixel_options,
    get_decoder,
    pixel_array,
)
from pydicom.pixels.decoders.base import DecodeRunner

from cxr.core.params import CT_WINDOWS, DicomWindow
from cxr.images.decoded import DecodedImage, UnusableImage

# What pydicom raises on a damaged header or pixel data: a short read (EOFError, struct.error),
# a bad value (ValueError, IndexError, OverflowError, a value of the wrong length), every decoder
# plugin failing (RuntimeError), a missing element read as an attribute, an odd value type, a
# deflated data set that does not inflate (zlib.error).
DICOM_ERRORS = (
    OSError,
    EOFError,
    struct.error,
    zlib.error,
    ValueError,
    IndexError,
    OverflowError,
    RuntimeError,
    AttributeError,
    KeyError,
    TypeError,
    BytesLengthException,
)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Values larger than this stay in the file until used: the pixel data is read after the header
# is checked, and only once.
DEFER_BYTES = 64 << 10
# The elements that hold pixels, any of which makes an image.
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float
# A stored value range up to this many entries is windowed as a lookup table (16-bit: 65,536).
LOOKUP_TABLE_ENTRIES = 1 << 16

# The pydicom decoding plugin of JPEG 2000 at a reduced resolution (this module: it follows
# pydicom's plugin contract, DECODER_DEPENDENCIES, is_available and the decode function).
REDUCED_JPEG2000 = "cxr-reduced"
REDUCE_OPTION = "cxr_reduce"
DECODER_DEPENDENCIES = {
    uid.JPEG2000Lossless: ("pillow>=10.0",),
    uid.JPEG2000: ("pillow>=10.0",),
}

# The pip name of a decoder package where it differs from the one pydicom names.
PIP_NAMES = {"gdcm": "python-gdcm"}


def decode_dicom(
    handle: BinaryIO, size: int, max_pixels: int, window: DicomWindow, draft_side: int = 0
) -> DecodedImage:
    """Decode the DICOM file of `size` bytes in `handle` (at its start) into uint8 (H, W) gray.

    The data set is read with its pixel data left in the file and checked first (pixel data
    present and whole, a decodable transfer syntax, sane bit depths, Rows x Columns x
    NumberOfFrames within max_pixels); then the first frame only is decoded. With `draft_side`
    (> 0), JPEG 2000 is decoded at the smallest power-of-two reduction whose sides are still
    >= draft_side. The width and height reported are the file's own; the format is DICOM and
    the mode its Photometric Interpretation.
    Raises UnusableImage (corrupt, no_pixel_data, unsupported, too_large) for a file it
    cannot use.
    """
    # pydicom warns about every oddity of real-world files (a VR that does not match, a
    # deprecated value); a build over thousands of files must not print them. What makes a
    # file unusable is raised, and the rest does not change the pixels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = read_header(handle)
        try:
            photometric = check_header(header, handle, size, max_pixels)
        except DICOM_ERRORS as error:
            # pydicom converts a value when it is first read: a malformed one fails here.
            raise UnusableImage(
                "corrupt", f"unreadable DICOM header value ({_first_line(error)})"
            ) from None
        stored = first_frame(header, draft_side)
        try:
            if photometric in MONOCHROME:
                gray = monochrome_to_gray(stored, header, window)
            else:
                gray = colour_to_gray(stored, header, photometric)
        except DICOM_ERRORS as error:
            raise UnusableImage(
                "corrupt", f"DICOM {photometric} pixels cannot be displayed ({_first_line(error)})"
            ) from None
    return DecodedImage(gray, int(header.Columns), int(header.Rows), photometric, "DICOM")


def read_header(handle: BinaryIO) -> Dataset:
    """The file's data set, its pixel data (any value over DEFER_BYTES) left unread till used."""
    try:
        return pydicom.dcmread(handle, defer_size=DEFER_BYTES)
    except (InvalidDicomError, *DICOM_ERRORS) as error:
        raise UnusableImage(
            "corrupt", f"unreadable DICOM data set, truncated or damaged ({_first_line(error)})"
        ) from None


def check_header(header: Dataset, handle: BinaryIO, size: int, max_pixels: int) -> str:
    """Refuse what cannot be decoded, before decoding; return the Photometric Interpretation.

    `handle` holds the file of `size` bytes: pixel data that would end past it is a file cut
    short, told apart from one that never had pixels.
    """
    syntax = uid.UID(str(header.file_meta.get("TransferSyntaxUID", "")))
    sop_class = header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID")
    if not sop_class:
        raise UnusableImage(
            "corrupt", "DICOM header without a SOP Class UID (truncated or damaged)"
        )
    rows, columns = header.get("Rows"), header.get("Columns")
    pixel_data = next((tag for tag in PIXEL_DATA_TAGS if tag in header), None)
    if rows is None or columns is None or pixel_data is None:
        kind = _uid_name(sop_class)
        if "Image Storage" in kind:
            raise UnusableImage(
                "corrupt",
                f"truncated or incomplete: the file ({size} bytes) holds no pixel data of its "
                f"{kind}",
            )
        raise UnusableImage("no_pixel_data", f"a DICOM {kind}: it holds no image")
    if not str(syntax):
        raise UnusableImage("corrupt", "DICOM file meta without a Transfer Syntax UID")
    check_decodable(syntax)
    frames = _number_of_frames(header)
    pixels = int(rows) * int(columns) * frames
    if pixels > max_pixels:
        frame_count = f" x {frames} frames" if frames > 1 else ""
        raise UnusableImage(
            "too_large",
            f"{columns}x{rows}{frame_count} = {pixels} pixels, over build.max_pixels = "
            f"{max_pixels}",
        )
    if int(rows) < 1 or int(columns) < 1:
        raise UnusableImage("corrupt", f"DICOM image of {columns}x{rows} pixels")
    allocated, stored = header.get("BitsAllocated"), header.get("BitsStored")
    if allocated not in (1, 8, 16, 32, 64) or stored is None or not 1 <= stored <= allocated:
        raise UnusableImage(
            "corrupt",
            f"inconsistent bit depths: BitsStored {stored} of BitsAllocated {allocated} "
            "(BitsStored must be 1 .. BitsAllocated, BitsAllocated 1, 8, 16, 32 or 64)",
        )
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    if not photometric:
        raise UnusableImage("corrupt", "DICOM image without a Photometric Interpretation")
    # Where the pixel data's value starts in the file (a deflated file's values are in the
    # inflated stream, which pydicom checks as it inflates).
    element = header.get_item(pixel_data, keep_deferred=True)
    start = getattr(element, "value_tell", None)
    if start is not None and syntax != uid.DeflatedExplicitVRLittleEndian:
        if syntax.is_encapsulated:
            check_fragments(handle, start, size)
        elif start + (needed := _native_bytes(header, syntax)) > size:
            raise UnusableImage(
                "corrupt",
                f"truncated: its pixel data needs {needed} bytes, {size - start} are left",
            )
    return photometric


def check_fragments(handle: BinaryIO, start: int, size: int) -> None:
    """Refuse compressed pixel data cut short, which some decoders (JPEG-LS) return garbage for.

    `start` is where the pixel data's items begin: the last one must end inside the file.
    """
    end = size + 1
    try:
        handle.seek(start)
        _, offsets = parse_fragments(handle)
        handle.seek(offsets[-1] + 4)
        (length,) = struct.unpack("<I", handle.read(4))
        end = offsets[-1] + 8 + length
    except ValueError:
        # Something other than an item after them (zeros instead of the delimiter, in files
        # pydicom still decodes): left to the decoders.
        end = 0
    except DICOM_ERRORS:
        pass  # no item at all: truncated as well
    if end > size:
        raise UnusableImage(
            "corrupt",
            f"truncated: its compressed pixel data stops short (the file has {size} bytes)",
        )


def check_decodable(syntax: uid.UID) -> None:
    """Refuse a transfer syntax that no installed pydicom plugin decodes, naming what would."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnusableImage(
            "unsupported",
            f"transfer syntax {_uid_name(syntax)}: no pydicom {pydicom.__version__} "
            "decoder exists for it; export the image uncompressed or as JPEG / JPEG 2000",
        ) from None
    if not decoder.is_available:
        raise UnusableImage(
            "unsupported",
            f"transfer syntax {_uid_name(syntax)}: no installed decoder; "
            f"{install_hint(decoder.missing_dependencies)}",
        )


def install_hint(missing: list[str]) -> str:
    """`pip install ...` for each plugin pydicom names as missing ("gdcm - requires gdcm>=3")."""
    commands = []
    for plugin in missing:
        _, _, needs = plugin.partition(" - requires ")
        packages = [package.strip() for package in needs.replace(" and ", ",").split(",")]
        named = [
            PIP_NAMES.get(package.split(">")[0].split("=")[0], package.split(">")[0])
            + package[len(package.split(">")[0]) :]
            for package in packages
            if package
        ]
        if named:
            commands.append("pip install " + " ".join(f"'{package}'" for package in named))
    return " or ".join(commands) or "no pydicom plugin decodes it"


def _number_of_frames(header: Dataset) -> int:
    """NumberOfFrames (1 when absent or blank), or UnusableImage when it is not a count."""
    value = header.get("NumberOfFrames")
    try:
        frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise UnusableImage("corrupt", f"NumberOfFrames {value!r} is not a count") from None
    return max(frames, 1)


def _native_bytes(header: Dataset, syntax: uid.UID) -> int:
    """The bytes the header's uncompressed frames take (pydicom's count: 1-bit packed, 4:2:2)."""
    runner = DecodeRunner(syntax)
    try:
        runner.set_options(**as_pixel_options(header))
        return math.ceil(runner.frame_length(unit="bytes") * runner.number_of_frames)
    except DICOM_ERRORS as error:
        raise UnusableImage(
            "corrupt", f"incomplete Image Pixel module ({_first_line(error)})"
        ) from None


def first_frame(header: Dataset, draft_side: int = 0) -> np.ndarray:
    """The stored values of the first frame: (rows, columns) or (rows, columns, samples).

    Only its bytes are decoded; the pixel data is read from the file now, once.
    """
    syntax = uid.UID(str(header.file_meta.TransferSyntaxUID))
    reduce = jpeg2000_reduction(header, syntax, draft_side)
    if reduce:
        try:
            power = 1 << reduce
            options: dict[str, Any] = {REDUCE_OPTION: reduce}
            return pixel_array(
                header,
                index=0,
                decoding_plugin=reduced_jpeg2000_plugin(syntax),
                # Pillow's size at 1 / power of each side, rounded as it rounds them.
                rows=(int(header.Rows) + (power >> 1)) // power,
                columns=(int(header.Columns) + (power >> 1)) // power,
                **options,
            )
        except DICOM_ERRORS:
            pass  # a codestream with fewer resolution levels than asked: decoded whole below
    try:
        return pixel_array(header, index=0)
    except BaseException as error:
        # A decoder written in Rust (pylibjpeg-rle) panics on some damaged data: pyo3 raises
        # its PanicException, a BaseException, which must not stop the build either.
        if not isinstance(error, DICOM_ERRORS) and type(error).__name__ != "PanicException":
            raise
        # Another plugin may read what the installed ones refuse (gdcm: 12-bit JPEG extended).
        others = get_decoder(syntax).missing_dependencies if syntax.is_encapsulated else []
        hint = f"; another decoder may read it: {install_hint(others)}" if others else ""
        raise UnusableImage(
            "corrupt", f"{syntax.name} pixel data unreadable ({_first_line(error)}){hint}"
        ) from None


def jpeg2000_reduction(header: Dataset, syntax: uid.UID, draft_side: int) -> int:
    """How many halvings of a gray JPEG 2000 image still leave both sides >= draft_side."""
    if draft_side <= 0 or syntax not in DECODER_DEPENDENCIES or not is_available(syntax):
        return 0
    if int(header.get("SamplesPerPixel") or 1) != 1:
        return 0
    shortest, reduce = min(int(header.Rows), int(header.Columns)), 0
    while shortest // (2 << reduce) >= draft_side:
        reduce += 1
    return reduce


def reduced_jpeg2000_plugin(syntax: uid.UID) -> str:
    """The label of this module's plugin on pydicom's decoder of `syntax`, added once."""
    decoder = get_decoder(syntax)
    if REDUCED_JPEG2000 not in decoder.available_plugins:
        decoder.add_plugin(REDUCED_JPEG2000, (__name__, "decode_reduced_jpeg2000"))
    return REDUCED_JPEG2000


def is_available(syntax: str) -> bool:
    """Whether the reduced JPEG 2000 plugin decodes `syntax` here (pydicom's plugin contract)."""
    return syntax in DECODER_DEPENDENCIES and bool(features.check_codec("jpg_2000"))


def decode_reduced_jpeg2000(src: bytes, runner: DecodeRunner) -> bytes:
    """One gray JPEG 2000 frame decoded at 1 / 2**reduce of each side (a pydicom plugin).

    Neither pydicom 3.0 nor pylibjpeg-openjpeg 2.6 pass on openjpeg's `reduce`, so this is
    pydicom's Pillow plugin for JPEG 2000 with Pillow's `reduce` set: openjpeg skips the finest
    wavelet levels, a quarter of the work per halving. The caller passes the reduced rows and
    columns, so pydicom shapes the frame and corrects its sign as usual.
    """
    with Image.open(io.BytesIO(src), formats=("JPEG2000",)) as image:
        image.reduce = int(runner.get_option(REDUCE_OPTION, 0))  # type: ignore[method-assign,assignment]
        image.load()
        if image.size != (runner.columns, runner.rows):
            raise ValueError(f"decoded {image.size}, expected {(runner.columns, runner.rows)}")
        buffer = bytearray(image.tobytes())
    # From here as pydicom's Pillow plugin: the container follows the codestream's precision,
    # and Pillow's unsigned N-bit output is turned back into the stored values.
    precision = int(runner.get_option("j2k_precision", runner.bits_stored))
    if not 0 < precision <= 16:
        raise ValueError(f"Pillow decodes JPEG 2000 of up to 16 bits, not {precision}")
    runner.set_option("bits_allocated", 8 if precision <= 8 else 16)
    values = np.frombuffer(buffer, dtype=f"u{runner.pixel_dtype.itemsize}")
    signed = runner.pixel_representation
    if runner.get_option("apply_j2k_sign_correction", False):
        signed = runner.get_option("j2k_is_signed", signed)
    if signed and runner.pixel_representation == 1:
        values = values.view(runner.pixel_dtype)
        values -= np.int32(2 ** (runner.bits_allocated - 1))
    if shift := runner.bits_allocated - precision:
        np.right_shift(values, shift, out=values)
    return values.tobytes()


def monochrome_to_gray(stored: np.ndarray, header: Dataset, window: DicomWindow) -> np.ndarray:
    """Gray stored values through the Modality LUT, the VOI `window` and the Presentation LUT."""
    if stored.dtype.kind in "iu" and stored.size:
        lowest, highest = int(stored.min()), int(stored.max())
        if highest - lowest < LOOKUP_TABLE_ENTRIES:
            # Every value from the lowest to the highest, displayed once; then looked up.
            values = np.arange(lowest, highest + 1, dtype=np.int64)
            offsets = np.subtract(stored, lowest, dtype=np.int64)
            held = None
            if "ModalityLUTSequence" in header:
                # A LUT need not be monotonic: the image's own range counts values it holds.
                held = np.bincount(offsets.ravel(), minlength=values.size) > 0
            table = display_values(values, header, window, held)
            return table[offsets]
    return display_values(stored, header, window, None)


def display_values(
    values: np.ndarray, header: Dataset, window: DicomWindow, held: np.ndarray | None
) -> np.ndarray:
    """0-255 display values of stored values (`held`: which of them the image holds; all)."""
    modality = np.asarray(apply_modality_lut(values, header), dtype=np.float64)
    shown, (black, white) = voi(modality, header, window, held)
    unit = np.clip((shown - black) / ((white - black) or 1.0), 0.0, 1.0)
    if header.get("PresentationLUTSequence"):
        # P-values straight from the LUT: no inversion after it.
        lut = header.PresentationLUTSequence[0]
        # pydicom spreads its input over the LUT's entries by the input's own range.
        p_values = apply_presentation_lut(unit, header) if np.ptp(unit) else unit * 0
        p_values = np.asarray(p_values, dtype=np.float64)
        return np.rint(p_values * (255.0 / (2 ** int(lut.LUTDescriptor[2]) - 1))).astype(np.uint8)
    gray = np.rint(unit * 255.0).astype(np.uint8)
    # The window's black is the film's white when larger values are darker: MONOCHROME1, or
    # a Presentation LUT Shape INVERSE (pydicom's apply_presentation_lut inverts about the
    # image's own maximum, not the window's). Inverted once, as DX files pair the two.
    shape = str(header.get("PresentationLUTShape", "")).strip().upper()
    if header.PhotometricInterpretation.strip().upper() == "MONOCHROME1" or shape == "INVERSE":
        gray = 255 - gray
    return gray


def voi(
    modality: np.ndarray, header: Dataset, window: DicomWindow, held: np.ndarray | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """The VOI of `window` applied to modality values, and its output's black and white."""
    if isinstance(window, tuple) or window in CT_WINDOWS:
        centre, width = window if isinstance(window, tuple) else CT_WINDOWS[window]
        # As the file's own Window Center / Width would be shown (the standard's LINEAR), so
        # auto on a file windowed -600 / 1500 gives exactly lung; LINEAR needs a width >= 1.
        function = "LINEAR" if width >= 1 else "LINEAR_EXACT"
        return _windowed(modality, _window_dataset(centre, width, function), header)
    if window == "full":
        return modality, full_range(header)
    if header.get("VOILUTSequence"):
        lut = header.VOILUTSequence[0]
        if lut.get("LUTDescriptor") is not None and lut.get("LUTData") is not None:
            depth = int(lut.LUTDescriptor[2])
            shown = apply_voi(np.rint(modality).astype(np.int64), header, index=0)
            return shown.astype(np.float64), (0.0, float(2**depth - 1))
    if header.get("WindowCenter") is not None and header.get("WindowWidth") is not None:
        try:
            return _windowed(modality, header, header)
        except ValueError:
            pass  # a width pydicom refuses (< 1 for LINEAR): the image's own range instead
    own = modality if held is None else modality[held]
    return modality, (float(own.min()), float(own.max()))


def _window_dataset(centre: float, width: float, function: str) -> Dataset:
    """The VOI LUT module of one window, for apply_windowing."""
    window = Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"
    window.BitsStored, window.PixelRepresentation = 16, 0
    window.WindowCenter, window.WindowWidth, window.VOILUTFunction = centre, width, function
    return window


def _windowed(
    modality: np.ndarray, window: Dataset, header: Dataset
) -> tuple[np.ndarray, tuple[float, float]]:
    """apply_windowing with `window`'s first centre / width; its output's black and white."""
    shown = apply_windowing(modality, window, index=0)
    # The far ends of any input land on the window's black and white (pydicom's y_min, y_max).
    ends = apply_windowing(np.array([-np.inf, np.inf]), window, index=0)
    return shown, (float(ends[0]), float(ends[1]))


def full_range(header: Dataset) -> tuple[float, float]:
    """Every value BitsStored holds, through the Modality LUT: the lowest and the highest."""
    bits = int(header.BitsStored)
    if header.get("PixelRepresentation", 0) == 1:
        ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.float64)
    else:
        ends = np.array([0, 2**bits - 1], dtype=np.float64)
    if header.get("ModalityLUTSequence"):
        lut = header.ModalityLUTSequence[0]
        return 0.0, float(2 ** int(lut.LUTDescriptor[2]) - 1)
    mapped = np.asarray(apply_modality_lut(ends, header), dtype=np.float64)
    return float(mapped.min()), float(mapped.max())


def colour_to_gray(stored: np.ndarray, header: Dataset, photometric: str) -> np.ndarray:
    """RGB (pydicom turns YBR into RGB) or palette colour as 8-bit ITU-R 601 luma, as Pillow."""
    if photometric == "PALETTE COLOR":
        colours = np.asarray(apply_color_lut(stored, header))
        depth = 16 if colours.dtype.itemsize > 1 else 8
    elif stored.ndim == 3 and stored.shape[-1] == 3:
        colours, depth = stored, int(header.BitsStored)
    else:
        raise ValueError(f"{photometric} with pixels of shape {stored.shape}")
    if depth > 8:
        top = 2**depth - 1
        colours = np.rint(colours.astype(np.float64) * (255.0 / top)).clip(0, 255)
    rgb = Image.fromarray(np.ascontiguousarray(colours, dtype=np.uint8), "RGB")
    return np.asarray(rgb.convert("L"), dtype=np.uint8)


def _uid_name(value: object) -> str:
    """A UID's name and value ("CT Image Storage (1.2.840.10008.5.1.4.1.1.2)"), if it is one."""
    known = uid.UID(str(value))
    if not known.is_valid:
        return f"{str(value)[:64]!r} (not a valid UID)"
    return f"{known.name} ({known})" if known.name != str(known) else str(known)


def _first_line(error: BaseException) -> str:
    """An exception's message on one line (pydicom's plugin failures span several)."""
    text = " ".join(str(error).split())
    return text[:240] or type(error).__name__


def window_text(window: DicomWindow) -> str:
    """A window as params.yaml writes it: a name or [centre, width]."""
    if isinstance(window, str):
        return window
    centre, width = window
    return f"[{centre:g}, {width:g}]"
