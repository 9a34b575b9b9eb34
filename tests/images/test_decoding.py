"""Tests for decoding files as collections really hold them (cxr/images/decoding.py)."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from cxr.images.decoding import (
    UnusableImage,
    decode_bytes,
    decode_file,
    decode_files,
    decode_gray,
    max_file_bytes,
    perceptual_hash,
    resize_square,
)

LIMIT = 10_000_000


def _gradient(width: int = 48, height: int = 32) -> np.ndarray:
    """A uint8 gray pattern that changes along both axes, so rotations are detectable."""
    rows = np.arange(height)[:, np.newaxis] * 3
    columns = np.arange(width)[np.newaxis, :] * 5
    return ((rows + columns) % 256).astype(np.uint8)


def _save(image: Image.Image, path: Path, image_format: str, **options: object) -> Path:
    image.save(path, format=image_format, **options)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, followed by a few bytes of pixel data."""
    fields = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", fields)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def _hamming(first: str, second: str) -> int:
    return (int(first, 16) ^ int(second, 16)).bit_count()


@pytest.mark.parametrize(
    ("content_format", "suffix"), [("PNG", ".jpg"), ("JPEG", ".png"), ("PNG", ".jpeg")]
)
def test_extension_that_does_not_match_the_content_is_decoded_by_content(
    tmp_path: Path, content_format: str, suffix: str
) -> None:
    # Given a file whose extension names another format than its content
    pixels = _gradient()
    path = _save(Image.fromarray(pixels), tmp_path / f"image{suffix}", content_format, quality=95)

    # When it is decoded
    decoded = decode_bytes(path.read_bytes(), LIMIT)

    # Then the content's format is used and the pixels are the image's
    assert decoded.format == content_format
    assert decoded.pixels.shape == pixels.shape
    assert np.abs(decoded.pixels.astype(int) - pixels).max() <= (
        0 if content_format == "PNG" else 8
    )


def test_gray_and_rgb_become_one_channel(tmp_path: Path) -> None:
    # Given the same gray pattern stored as L and as RGB with three equal channels
    pixels = _gradient()
    gray = _save(Image.fromarray(pixels), tmp_path / "gray.png", "PNG")
    rgb = _save(Image.fromarray(np.stack([pixels] * 3, axis=-1)), tmp_path / "rgb.png", "PNG")

    # When both are decoded
    # Then both give the pattern as uint8 (H, W)
    for path, mode in ((gray, "L"), (rgb, "RGB")):
        decoded = decode_bytes(path.read_bytes(), LIMIT)
        assert decoded.mode == mode
        assert decoded.pixels.dtype == np.uint8
        np.testing.assert_array_equal(decoded.pixels, pixels)


def test_rgb_colours_use_luma(tmp_path: Path) -> None:
    # Given a pure red, green and blue RGB image
    colours = np.zeros((1, 3, 3), dtype=np.uint8)
    colours[0, 0, 0] = colours[0, 1, 1] = colours[0, 2, 2] = 255
    path = _save(Image.fromarray(colours), tmp_path / "rgb.png", "PNG")

    # When it is decoded
    gray = decode_gray(path, LIMIT)

    # Then the ITU-R 601 luma weights apply (green brightest, blue darkest)
    np.testing.assert_array_equal(gray, [[76, 150, 29]])


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    # Given a white RGBA image: opaque, half transparent and fully transparent pixels
    rgba = np.full((1, 3, 4), 255, dtype=np.uint8)
    rgba[0, :, 3] = [255, 128, 0]
    path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "alpha.png", "PNG")

    # When it is decoded
    decoded = decode_bytes(path.read_bytes(), LIMIT)

    # Then transparency shows black, not the hidden colour
    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(decoded.pixels, [[255, 128, 0]])


def test_gray_with_alpha_is_composited_on_black(tmp_path: Path) -> None:
    # Given an LA image: gray 200, opaque then fully transparent
    image = Image.merge(
        "LA",
        (Image.new("L", (2, 1), 200), Image.fromarray(np.array([[255, 0]], dtype=np.uint8))),
    )
    path = _save(image, tmp_path / "la.png", "PNG")

    # When it is decoded
    # Then the transparent pixel is black
    np.testing.assert_array_equal(decode_gray(path, LIMIT), [[200, 0]])


def test_palette_image_uses_its_palette_colours(tmp_path: Path) -> None:
    # Given a palette image whose indices 0, 1, 2 map to gray 10, 120, 250
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([10, 10, 10, 120, 120, 120, 250, 250, 250])
    path = _save(image, tmp_path / "palette.png", "PNG")

    # When it is decoded
    decoded = decode_bytes(path.read_bytes(), LIMIT)

    # Then the pixels are the palette's grays, not the indices
    assert decoded.mode == "P"
    np.testing.assert_array_equal(decoded.pixels, [[10, 120, 250]])


def test_palette_transparency_is_black(tmp_path: Path) -> None:
    # Given a palette GIF whose index 1 is transparent
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    image.putpalette([200, 200, 200, 90, 90, 90])
    path = _save(image, tmp_path / "palette.gif", "GIF", transparency=1)

    # When it is decoded
    # Then the transparent index shows black
    np.testing.assert_array_equal(decode_gray(path, LIMIT), [[200, 0]])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # 12-bit detector data in a 16-bit PNG: scaled by 4095, not clipped to 255
        ([0, 1024, 2048, 4095], [0, 64, 128, 255]),
        # full 16-bit range
        ([0, 256, 32768, 65535], [0, 1, 128, 255]),
    ],
)
def test_sixteen_bit_gray_is_scaled_by_its_bit_depth(
    tmp_path: Path, values: list[int], expected: list[int]
) -> None:
    # Given a 16-bit grayscale PNG
    path = tmp_path / "wide.png"
    Image.fromarray(np.array([values], dtype=np.uint16)).save(path)

    # When it is decoded
    decoded = decode_bytes(path.read_bytes(), LIMIT)

    # Then the values are scaled to 0-255 by the bit depth the data uses
    assert decoded.mode.startswith("I")
    np.testing.assert_array_equal(decoded.pixels, [expected])


def test_32_bit_and_float_images_are_scaled(tmp_path: Path) -> None:
    # Given a 32-bit integer TIFF and a float TIFF in 0..1
    integer = tmp_path / "integer.tif"
    Image.fromarray(np.array([[0, 511, 1023]], dtype=np.int32), mode="I").save(integer)
    floating = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(floating)

    # When both are decoded
    # Then both are scaled to 0-255
    np.testing.assert_array_equal(decode_gray(integer, LIMIT), [[0, 127, 255]])
    np.testing.assert_array_equal(decode_gray(floating, LIMIT), [[0, 128, 255]])


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(tmp_path: Path, image_format: str) -> None:
    # Given a 48 x 32 image whose EXIF says "rotate 90 degrees clockwise to display" (6)
    pixels = _gradient(48, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(
        Image.fromarray(pixels),
        tmp_path / f"rotated.{image_format.lower()}",
        image_format,
        exif=exif,
        quality=95,
    )

    # When it is decoded
    decoded = decode_bytes(path.read_bytes(), LIMIT)

    # Then it is upright: 32 wide, 48 high, the stored pixels turned clockwise
    assert (decoded.width, decoded.height) == (32, 48)
    expected = np.rot90(pixels, k=-1)
    tolerance = 0 if image_format == "PNG" else 8
    assert np.abs(decoded.pixels.astype(int) - expected).max() <= tolerance


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    # Given a PNG header claiming 10000 x 10000 pixels (above Pillow's bomb warning) and no data
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(10_000, 10_000))

    # When it is decoded with a limit of 1,000,000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no decompression-bomb warning may escape
        with pytest.raises(UnusableImage) as error:
            decode_gray(path, 1_000_000)

    # Then it is refused as too large, naming the size and the param (no pixel was read)
    assert error.value.kind == "too_large"
    assert "10000x10000" in str(error.value)
    assert "build.max_pixels = 1000000" in str(error.value)


def test_decompression_bomb_is_rejected_not_raised(tmp_path: Path) -> None:
    # Given a header claiming 40000 x 40000 pixels, over Pillow's own bomb limit
    content = _png_header_only(40_000, 40_000)

    # When it is decoded even with a generous limit
    with pytest.raises(UnusableImage) as error:
        decode_bytes(content, 89_478_485)

    # Then it is an unusable image, not Pillow's DecompressionBombError, and the reason names
    # the param that limits pixels and its value, not Pillow's own limit
    assert str(error.value) == "too_large: 1600000000 pixels, over build.max_pixels = 89478485"


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_file_is_corrupt(tmp_path: Path, image_format: str) -> None:
    # Given a noisy image cut in the middle of its pixel data
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=image_format)
    path = tmp_path / f"cut.{image_format.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    # When it is decoded
    with pytest.raises(UnusableImage) as error:
        decode_gray(path, LIMIT)

    # Then it is refused as corrupt, naming the format
    assert error.value.kind == "corrupt"
    assert image_format in str(error.value)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"patient notes, not an image\n", "not_an_image"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_an_image"),  # damaged header
    ],
)
def test_non_image_empty_and_broken_files_are_unusable(
    tmp_path: Path, content: bytes, kind: str
) -> None:
    # Given a text file, an empty file and a PNG signature with garbage, all named .png
    path = tmp_path / "scan.png"
    path.write_bytes(content)

    # When it is decoded
    with pytest.raises(UnusableImage) as error:
        decode_gray(path, LIMIT)

    # Then the reason's kind says which
    assert error.value.kind == kind
    assert str(error.value).startswith(f"{kind}: ")


def _bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux /proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text(encoding="ascii").splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


needs_proc_io = pytest.mark.skipif(
    not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io to count bytes read"
)


@needs_proc_io
def test_file_larger_than_any_image_within_the_limit_is_rejected_unread(tmp_path: Path) -> None:
    # Given a 200 MB file (sparse: it takes no disk) starting like a small PNG
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:
        handle.write(_png_header_only(100, 100))
        handle.truncate(200_000_000)

    # When it is decoded with build.max_pixels = 1,000,000
    before = _bytes_read()
    result = decode_file(tmp_path, "huge.png", 1_000_000, 32, "pad")
    read = _bytes_read() - before

    # Then it is too large on its size alone, naming the param, and not a byte was read
    assert result.rejection is not None
    assert result.rejection.kind == "too_large"
    assert str(result.rejection) == (
        "too_large: 200000000 bytes, more than any image within build.max_pixels = 1000000 "
        f"needs ({max_file_bytes(1_000_000)} bytes)"
    )
    assert read < 4096


@needs_proc_io
def test_image_over_the_pixel_limit_is_rejected_after_reading_its_header_only(
    tmp_path: Path,
) -> None:
    # Given an 80 MB file whose PNG header claims 10000 x 10000 pixels, and a warmed-up decoder
    path = tmp_path / "large.png"
    with path.open("wb") as handle:
        handle.write(_png_header_only(10_000, 10_000))
        handle.truncate(80_000_000)
    decode_file(tmp_path, "large.png", 1_000_000, 32, "pad")

    # When it is decoded with build.max_pixels = 1,000,000
    before = _bytes_read()
    result = decode_file(tmp_path, "large.png", 1_000_000, 32, "pad")
    read = _bytes_read() - before

    # Then it is rejected on its header, having read a few KB of the 80 MB
    assert result.rejection is not None
    assert str(result.rejection).startswith("too_large: 10000x10000 = 100000000 pixels")
    assert read < 1_000_000


def test_decode_file_hashes_every_byte_and_counts_them(tmp_path: Path) -> None:
    # Given a PNG with trailing bytes after its end chunk (as some scanners write)
    path = tmp_path / "scan.png"
    Image.fromarray(_gradient()).save(path, format="PNG")
    path.write_bytes(path.read_bytes() + b"scanner trailer" * 1000)

    # When it is decoded
    result = decode_file(tmp_path, "scan.png", LIMIT, 32, "pad")

    # Then the image decodes, and its byte count and sha256 are those of the whole file
    assert result.rejection is None and result.info is not None
    content = path.read_bytes()
    assert result.info["bytes"] == len(content)
    assert result.info["sha256"] == hashlib.sha256(content).hexdigest()
    assert (result.info["width"], result.info["height"]) == (48, 32)


def test_missing_file_is_unusable(tmp_path: Path) -> None:
    with pytest.raises(UnusableImage, match="missing: file not found"):
        decode_gray(tmp_path / "gone.png", LIMIT)


def test_unusable_image_survives_pickling() -> None:
    # Given a rejection as a worker process returns it
    rejection = UnusableImage("corrupt", "PNG data unreadable")

    # When it crosses a process boundary
    copy = pickle.loads(pickle.dumps(rejection))

    # Then kind and message are intact
    assert (copy.kind, str(copy)) == ("corrupt", "corrupt: PNG data unreadable")


def test_resize_square_gives_uint8_squares() -> None:
    # Given a wide gradient and a flat image
    wide = _gradient(300, 120)
    flat = np.full((50, 70), 77, dtype=np.uint8)

    # When they are resized to 64
    # Then both are uint8 (64, 64), a flat image stays flat, and same-size input is unchanged
    for gray in (wide, flat):
        square = resize_square(gray, 64, "stretch")
        assert square.shape == (64, 64)
        assert square.dtype == np.uint8
    assert (resize_square(flat, 64, "stretch") == 77).all()
    square = _gradient(64, 64)
    np.testing.assert_array_equal(resize_square(square, 64, "pad"), square)


def test_perceptual_hash_is_close_for_a_recompressed_copy() -> None:
    # Given an image, a JPEG re-encoded copy and an unrelated image
    smooth = resize_square(_gradient(200, 200), 64, "stretch")
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=60)
    recompressed = decode_bytes(buffer.getvalue(), LIMIT).pixels
    other = np.ascontiguousarray(smooth[:, ::-1])

    # When their perceptual hashes are compared
    original, copy, unrelated = (perceptual_hash(x) for x in (smooth, recompressed, other))

    # Then the copy is within a few bits and the other image far away
    assert len(original) == 16
    assert _hamming(original, copy) <= 4
    assert _hamming(original, unrelated) > 16


def test_parallel_decode_matches_one_process_in_order(tmp_path: Path) -> None:
    # Given good and bad files with awkward names
    names = ["a b.png", "100%.png", "ünï cödé.png", "broken.png", "z.jpg"]
    for index, name in enumerate(names):
        Image.fromarray(_gradient(20 + index, 16)).save(tmp_path / name, format="PNG")
    (tmp_path / "broken.png").write_text("not an image")

    # When they are decoded in two processes and in one
    parallel = list(decode_files(tmp_path, names, LIMIT, 32, "pad", workers=2))
    serial = list(decode_files(tmp_path, names, LIMIT, 32, "pad", workers=1))

    # Then both give the same results, in input order, with the bad file rejected
    assert [result.path for result in parallel] == names
    for first, second in zip(parallel, serial, strict=True):
        assert first.info == second.info
        assert (first.pixels is None) == (second.pixels is None)
        if first.pixels is not None and second.pixels is not None:
            np.testing.assert_array_equal(first.pixels, second.pixels)
    assert [result.rejection is not None for result in parallel] == [
        False,
        False,
        False,
        True,
        False,
    ]
    assert parallel[3].rejection is not None and parallel[3].rejection.kind == "not_an_image"


def test_pad_keeps_the_aspect_ratio_with_black_borders() -> None:
    # Given a wide uniform image, three times wider than high
    wide = np.full((100, 300), 200, dtype=np.uint8)

    # When it is padded to a 60 px square
    square = resize_square(wide, 60, "pad")

    # Then the image fills a centred 60 x 20 band and black fills the rest
    rows_with_image = np.flatnonzero(square.mean(axis=1) > 100)
    assert rows_with_image.min() == 20 and rows_with_image.max() == 39
    assert (square[:19] == 0).all() and (square[41:] == 0).all()
    assert (square[22:38] == 200).all()


def test_crop_keeps_the_centre_and_stretch_squeezes() -> None:
    # Given a wide image: dark thirds left and right, a bright centre third
    wide = np.zeros((100, 300), dtype=np.uint8)
    wide[:, 100:200] = 255

    # When it is cropped and stretched to 60 px squares
    cropped = resize_square(wide, 60, "crop")
    stretched = resize_square(wide, 60, "stretch")

    # Then the crop is the bright centre, and the stretch keeps all three thirds side by side
    assert cropped[:, 5:55].min() > 240
    assert stretched[:, :15].max() < 15 and stretched[:, 25:35].min() > 240


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_a_large_image_is_box_reduced_first_to_the_same_result(mode: str) -> None:
    # Given a large smooth image (the fast path reduces it by an integer factor first)
    large = np.add.outer(np.linspace(0, 100, 1200), np.linspace(0, 150, 3000)).astype(np.uint8)

    # When it is resized, and the same done by Pillow's ImageOps without the reduction
    fast = resize_square(large, 64, mode).astype(int)
    image = Image.fromarray(large)
    operation = ImageOps.pad if mode == "pad" else ImageOps.fit
    full = np.asarray(operation(image, (64, 64), Image.Resampling.LANCZOS)).astype(int)

    # Then both agree to a gray level
    assert np.abs(fast - full).max() <= 1


def test_an_unknown_resize_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="resize mode 'zoom'; must be one of pad, crop, stretch"):
        resize_square(np.zeros((10, 20), np.uint8), 8, "zoom")


def _radiograph_like(width: int, height: int) -> np.ndarray:
    """A smooth RGB image with structure at several scales (JPEG-compresses like a photo)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    gray = 128 + 60 * np.sin(9 * x) * np.cos(7 * y) + 40 * np.cos(31 * (x + y))
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., np.newaxis], 3, axis=2)


def test_a_large_jpeg_is_decoded_at_the_smallest_dct_scale_the_cache_needs(
    tmp_path: Path,
) -> None:
    # Given a 1024 x 800 JPEG and a 128-px cache
    path = tmp_path / "large.jpg"
    Image.fromarray(_radiograph_like(1024, 800)).save(path, format="JPEG", quality=95)

    # When it is decoded for the cache (draft) and in full
    drafted = decode_gray(path, LIMIT, draft_side=128)
    full = decode_gray(path, LIMIT)

    # Then the draft is the 1/4 scale (1/8 would make the short side 100 < 128)
    assert full.shape == (800, 1024) and drafted.shape == (200, 256)
    # and squared to the cache it matches the full decode to within a grey level or two
    difference = resize_square(drafted, 128, "pad").astype(int) - resize_square(full, 128, "pad")
    assert np.abs(difference).mean() < 2.0


def test_decode_file_reports_the_files_own_size_after_a_draft_decode(tmp_path: Path) -> None:
    # Given a 1024 x 800 JPEG turned a quarter by its EXIF orientation (6)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_radiograph_like(1024, 800)).save(path, format="JPEG", exif=exif)

    # When build decodes it for a 64-px cache
    result = decode_file(tmp_path, "rotated.jpg", LIMIT, 64, "pad")

    # Then the recorded size is the upright file's, not the reduced decode's
    assert result.rejection is None and result.info is not None
    assert (result.info["width"], result.info["height"]) == (800, 1024)
    assert result.pixels is not None and result.pixels.shape == (64, 64)


def test_draft_leaves_formats_without_dct_scaling_alone(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    Image.fromarray(_radiograph_like(512, 400)).save(path, format="PNG")
    assert decode_gray(path, LIMIT, draft_side=64).shape == (400, 512)
