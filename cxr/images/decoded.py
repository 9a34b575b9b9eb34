"""What decoding one image file gives: its gray pixels and size, or why it cannot be used.

Shared by the two decoders (cxr.images.decoding for Pillow's formats, cxr.images.dicom for
DICOM), so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Why a file can be rejected (the per-reason counts in metrics/build.json): unsupported is a
# DICOM transfer syntax no installed plugin decodes, no_pixel_data a DICOM object that is not
# an image (a DICOMDIR, a structured report, a presentation state).
REJECT_KINDS = (
    "missing",
    "empty",
    "not_an_image",
    "too_large",
    "corrupt",
    "unsupported",
    "no_pixel_data",
)


# The longest reason kept: text read from a damaged file (a UID that runs into the pixel data)
# must not fill data/interim/rejected.csv.
MAX_DETAIL_CHARS = 400


class UnusableImage(Exception):  # noqa: N818 (the name the data contract uses)
    """A file the build skips, with the kind (one of REJECT_KINDS) and a readable reason.

    The reason is one printable line of at most MAX_DETAIL_CHARS, whatever the file held.
    """

    def __init__(self, kind: str, detail: str) -> None:
        printable = "".join(char if char.isprintable() else " " for char in detail)
        detail = " ".join(printable.split())
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    def __reduce__(self) -> tuple[type[UnusableImage], tuple[str, str]]:
        # Exceptions pickle their args; this one has two, so it can cross process boundaries.
        return (UnusableImage, (self.kind, self.detail))


@dataclass(frozen=True)
class DecodedImage:
    """Gray pixels with the size (after EXIF orientation), mode and format of the file."""

    pixels: np.ndarray
    width: int
    height: int
    mode: str
    format: str
