"""DICOM files recognised by their content: the `DICM` marker after the 128-byte preamble.

Hospital archives and PACS exports name files anything (`.dcm`, `.DCM`, `IM000001`, no extension
at all), so a file is DICOM by what it holds, never by its name (DICOM PS3.10, section 7.1).
Ingest (which files are images, their headers) and build (decoding) both ask here.
"""

from __future__ import annotations

from pathlib import Path

PREAMBLE_BYTES = 128
MARKER = b"DICM"
# The bytes to read to tell: the preamble and the marker.
HEAD_BYTES = PREAMBLE_BYTES + len(MARKER)


def is_dicom_head(head: bytes) -> bool:
    """Whether the first bytes of a file are a DICOM preamble followed by `DICM`."""
    return len(head) >= HEAD_BYTES and head[PREAMBLE_BYTES:HEAD_BYTES] == MARKER


def is_dicom_file(path: Path) -> bool:
    """Whether the file at `path` is a DICOM file (False when it cannot be read)."""
    try:
        with path.open("rb") as handle:
            return is_dicom_head(handle.read(HEAD_BYTES))
    except OSError:
        return False
