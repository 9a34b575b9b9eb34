"""Decode image files as collections really hold them into one gray uint8 channel, in parallel.

Every file is streamed, never held whole: its size and header are checked against
build.max_pixels first, its content (never its extension) gives the format, its bytes the
sha256, and the decoded pixels are resized once to the square the pixel cache stores.
A DICOM file (the DICM marker after its 128-byte preamble, whatever its name) is decoded with
pydicom through the display pipeline of the standard (cxr.images.dicom), any other with Pillow.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import imagehash
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from cxr.core.dicom import HEAD_BYTES, is_dicom_head
from cxr.core.errors import PipelineError
from cxr.core.params import DicomWindow
from cxr.core.processes import available_cores, map_in_processes
from cxr.core.progress import track
from cxr.core.registry import RESIZE_MODES
from cxr.images.decoded import DecodedImage, UnusableImage
from cxr.images.dicom import decode_dicom

# What Pillow raises on a damaged file, by format plugin: truncated data (OSError), broken
# chunks (SyntaxError), bad header fields (ValueError, struct.error, IndexError), early EOF.
DAMAGED_FILE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)

# Modes with more than 8 bits per pixel: scaled by their bit depth, never clipped to 255.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS): the largest build.max_pixels.
PILLOW_MAX_PIXELS = 89_478_485

# The most bytes a file holding an image of max_pixels pixels can need: uncompressed 32-bit
# float RGBA (16 bytes a pixel) plus room for metadata (EXIF, ICC profiles, thumbnails). A
# larger file is rejected on its size alone, before a byte of it is read.
BYTES_PER_PIXEL_CEILING = 16
METADATA_ALLOWANCE_BYTES = 64 << 20

# Pillow's decompression-bomb message gives the pixel count: "Image size (N pixels) exceeds ...".
BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class DecodedFile:
    """One file after decoding: metadata and cache pixels, or the reason it is unusable."""

    path: str
    info: dict[str, object] | None
    pixels: np.ndarray | None
    rejection: UnusableImage | None


def decode_gray(
    path: Path, max_pixels: int, draft_side: int = 0, window: DicomWindow = "auto"
) -> np.ndarray:
    """Decode any image file into uint8 (H, W) gray: EXIF applied, 16-bit scaled, alpha on black.

    Raises UnusableImage for a missing, empty, non-image, too-large, truncated or corrupt file.
    `draft_side`, `window`: see decode_stream (pass the cache size and build.dicom.window, as
    build does, to match its pixels).
    """
    with open_image_file(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        return decode_stream(handle, size, max_pixels, draft_side, window).pixels


def open_image_file(path: Path) -> io.BufferedReader:
    """`path` opened for reading bytes, or UnusableImage when it cannot be opened."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise UnusableImage("missing", "file not found") from None
    except OSError as error:
        raise UnusableImage("missing", f"cannot read ({error.strerror or error})") from None


def read_file(path: Path) -> bytes:
    """The bytes of `path`, or UnusableImage when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UnusableImage("missing", "file not found") from None
    except OSError as error:
        raise UnusableImage("missing", f"cannot read ({error.strerror or error})") from None


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image within max_pixels pixels can be stored in (see the ceiling)."""
    return max_pixels * BYTES_PER_PIXEL_CEILING + METADATA_ALLOWANCE_BYTES


def _bomb(error: Image.DecompressionBombError, max_pixels: int) -> UnusableImage:
    """Pillow's decompression-bomb refusal, told in terms of the param that limits pixels."""
    found = BOMB_PIXELS.search(str(error))
    size = f"{int(found.group(1))} pixels" if found else "more pixels than Pillow allows"
    return UnusableImage("too_large", f"{size}, over build.max_pixels = {max_pixels}")


def decode_bytes(
    content: bytes, max_pixels: int, draft_side: int = 0, window: DicomWindow = "auto"
) -> DecodedImage:
    """Decode the bytes of an image file (format detected from the content) into gray."""
    return decode_stream(io.BytesIO(content), len(content), max_pixels, draft_side, window)


def decode_stream(
    handle: BinaryIO,
    size: int,
    max_pixels: int,
    draft_side: int = 0,
    window: DicomWindow = "auto",
) -> DecodedImage:
    """Decode an image file of `size` bytes from a seekable handle, reading only what it needs.

    The size and then the header are checked against max_pixels (build.max_pixels) before any
    pixel is decoded, so a file too large to use is rejected without being read whole. With
    `draft_side` (> 0), a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose sides
    are still >= draft_side: a 2,000-px radiograph squared to 256 px never decodes at full size,
    and a DICOM JPEG 2000 image is decoded at the matching power-of-two reduction.
    A DICOM file is displayed through `window` (build.dicom.window; see cxr.images.dicom).
    The width and height reported are the file's own (after EXIF orientation).
    """
    if size == 0:
        raise UnusableImage("empty", "the file has 0 bytes")
    if size > max_file_bytes(max_pixels):
        raise UnusableImage(
            "too_large",
            f"{size} bytes, more than any image within build.max_pixels = {max_pixels} needs "
            f"({max_file_bytes(max_pixels)} bytes)",
        )
    try:
        head = handle.read(HEAD_BYTES)
        handle.seek(0)
    except OSError as error:
        raise UnusableImage("missing", f"cannot read ({error.strerror or error})") from None
    if is_dicom_head(head):
        return decode_dicom(handle, size, max_pixels, window, draft_side)
    # Our own pixel limit is checked on the header before any pixel is decoded; Pillow's
    # decompression-bomb warning / error must not print or crash the stage instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(handle)
        except UnidentifiedImageError:
            raise UnusableImage(
                "not_an_image",
                "no image format can read its header (not an image, or a damaged one)",
            ) from None
        except Image.DecompressionBombError as error:
            raise _bomb(error, max_pixels) from None
        except DAMAGED_FILE_ERRORS as error:
            raise UnusableImage("corrupt", f"unreadable header ({error})") from None
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnusableImage(
                    "too_large",
                    f"{width}x{height} = {width * height} pixels, over build.max_pixels = "
                    f"{max_pixels}",
                )
            mode, image_format = image.mode, image.format or "unknown"
            try:
                if draft_side > 0 and image_format == "JPEG":
                    # Same mode, so the gray conversion below stays ours; only the scale changes.
                    image.draft(mode, (draft_side, draft_side))
                image.load()
                # EXIF orientations 5-8 turn the image a quarter: the upright size swaps sides.
                if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                    width, height = height, width
                # In place: without an orientation tag this costs nothing (no full-size copy).
                ImageOps.exif_transpose(image, in_place=True)
                pixels = to_gray(image)
            except Image.DecompressionBombError as error:
                raise _bomb(error, max_pixels) from None
            except DAMAGED_FILE_ERRORS as error:
                raise UnusableImage(
                    "corrupt", f"{image_format} data unreadable ({error})"
                ) from None
    if pixels.ndim != 2 or pixels.size == 0:
        raise UnusableImage("corrupt", f"decoded to an empty or odd array {pixels.shape}")
    return DecodedImage(pixels, width, height, mode, image_format)


def to_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow mode as uint8 (H, W): transparency composited on black, wide modes scaled."""
    if image.mode in WIDE_MODES:
        return scale_to_uint8(np.asarray(image))
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8)
    bands = "".join(image.getbands()).upper()
    if "A" in bands or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("L"), dtype=np.uint8)
    # Palette via its colours, RGB / CMYK / YCbCr via ITU-R 601 luma, 1-bit to 0 / 255.
    if image.mode not in ("P", "RGB", "1"):
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit or float gray to 0-255 by the bit depth its largest value needs.

    A 12-bit detector stored in 16-bit PNG (max 4095) fills 0-255 instead of staying nearly
    black; float images in 0..1 are scaled by 255. Negative values are shifted to 0 first.
    """
    wide = np.nan_to_num(values.astype(np.float64))
    wide -= min(float(wide.min()), 0.0)
    peak = float(wide.max())
    if values.dtype.kind == "f" and peak <= 1.0:
        top = 1.0
    else:
        top = float(2 ** max(8, int(np.ceil(peak)).bit_length()) - 1)
    return np.round(wide * (255.0 / top)).clip(0, 255).astype(np.uint8)


def resize_square(gray: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize uint8 (H, W) gray to uint8 (size, size), antialiased (Lanczos), by build.resize.

    pad keeps the aspect ratio and pads the short side with black (centred); crop keeps the
    aspect ratio and cuts the long side (centred); stretch scales each side on its own.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}; must be one of {', '.join(RESIZE_MODES)}")
    if gray.shape == (size, size):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    image = Image.fromarray(gray)
    if mode == "stretch":
        # reducing_gap first box-reduces very large images by an integer factor: much faster,
        # and indistinguishable from a full Lanczos at these scales.
        resized = image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(resized, dtype=np.uint8)
    # The same integer box-reduction before ImageOps (which has no reducing_gap): the side that
    # sets the scale (the long one to pad, the short one to crop) stays >= 3x the target.
    governing = max(image.size) if mode == "pad" else min(image.size)
    factor = governing // (3 * size)
    if factor > 1:
        image = image.reduce(factor)
    if mode == "pad":
        resized = ImageOps.pad(image, (size, size), Image.Resampling.LANCZOS, color=0)
    else:
        resized = ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def perceptual_hash(square: np.ndarray) -> str:
    """64-bit difference hash (imagehash.dhash) of gray pixels, as 16 hex digits."""
    return str(imagehash.dhash(Image.fromarray(square), hash_size=8))


def decode_file(
    raw_dir: Path,
    relative: str,
    max_pixels: int,
    cache_size: int,
    resize: str,
    window: DicomWindow = "auto",
) -> DecodedFile:
    """Read raw_dir/relative: metadata, sha256, perceptual hash and cache pixels.

    A file is streamed, never held whole in memory: a too-large one is rejected on its size or
    its header, and the sha256 is taken only of a file that decoded. A DICOM file is shown
    through `window` (build.dicom.window).
    """
    try:
        with open_image_file(raw_dir / relative) as handle:
            size = os.fstat(handle.fileno()).st_size
            # Decoded at no more than the cache needs (JPEG DCT scaling), as predict does too.
            decoded = decode_stream(handle, size, max_pixels, cache_size, window)
            try:
                handle.seek(0)
                sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as error:
                raise UnusableImage("missing", f"cannot read ({error.strerror or error})") from None
    except UnusableImage as rejection:
        return DecodedFile(relative, None, None, rejection)
    square = resize_square(decoded.pixels, cache_size, resize)
    info: dict[str, object] = {
        "width": decoded.width,
        "height": decoded.height,
        "mode": decoded.mode,
        "format": decoded.format,
        "bytes": size,
        "sha256": sha256,
        "phash": perceptual_hash(square),
    }
    return DecodedFile(relative, info, square, None)


def decode_files(
    raw_dir: Path,
    relatives: Sequence[str],
    max_pixels: int,
    cache_size: int,
    resize: str,
    workers: int = 0,
    window: DicomWindow = "auto",
) -> Iterator[DecodedFile]:
    """decode_file over every path, in processes on `workers` cores (0 = all), in input order."""
    decode = functools.partial(
        decode_file,
        raw_dir,
        max_pixels=max_pixels,
        cache_size=cache_size,
        resize=resize,
        window=window,
    )
    decoded = map_in_processes(
        decode, relatives, workers or available_cores(), preload=["cxr.images.decoding"]
    )
    try:
        yield from track(decoded, "decoding", "images", total=len(relatives))
    except BrokenProcessPool:
        raise PipelineError(
            f"{raw_dir}: a decoding process died (out of memory, or a decoder crashed on a file); "
            "lower build.max_pixels or CXR_WORKERS, or set CXR_WORKERS=1 to find the file"
        ) from None
