"""DICOM files recognised by their content: the `DICM` marker after the 128-byte preamble.

Hospital archives and PACS exports name files anything (`.dcm`, `.DCM`, `IM000001`, no extension
at all), so a file is DICOM by what it holds, never by its name (DICOM PS3.10, section 7.1).
Ingest (which files are images, their headers) and build (decoding) both ask here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


# What ingest reads from a header, by DICOM keyword. Identifiers (the first four) are needed to
# group patients and join label tables, and leave ingest only as pseudonyms (cxr.core.pseudonyms);
# AccessionNumber is read only to match a label table, never written anywhere. Names, birth
# dates, addresses, institutions and physicians are never read at all.
IDENTIFIERS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MATCH_ONLY = ("AccessionNumber",)
DESCRIPTORS = (
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "Manufacturer",
    "PatientSex",
    "PatientAge",
    "PhotometricInterpretation",
    "BitsStored",
)
HEADER_KEYWORDS = (*IDENTIFIERS, *MATCH_ONLY, *DESCRIPTORS)


@dataclass(frozen=True)
class DicomHeader:
    """A DICOM file's HEADER_KEYWORDS as text ('' when absent) and its transfer syntax's name."""

    values: Mapping[str, str] = field(repr=False)  # raw identifiers: kept out of any repr
    transfer_syntax: str

    def __getitem__(self, keyword: str) -> str:
        return self.values.get(keyword, "")


def _text(value: object) -> str:
    """An element's value as one line of text: multiple values joined by a backslash."""
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):  # a MultiValue
        return "\\".join(_text(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip("\0 ")
    return " ".join(str(value).split())


def read_header(path: Path) -> DicomHeader:
    """The header of the DICOM file at `path`, read up to its pixels (never the pixels).

    Raises ValueError with the reason when it cannot be read.
    """
    # Imported here: pydicom takes a third of a second to import, and telling DICOM files by
    # their marker (is_dicom_file) needs none of it.
    import pydicom

    try:
        dataset = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS)
        )
        values = {keyword: _text(dataset.get(keyword)) for keyword in HEADER_KEYWORDS}
        if not values["SOPInstanceUID"]:
            values["SOPInstanceUID"] = _text(dataset.file_meta.get("MediaStorageSOPInstanceUID"))
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        if not syntax:
            # pydicom reads what it can of a damaged file; a file without the transfer syntax
            # its file meta must hold cannot be decoded either.
            raise ValueError("no TransferSyntaxUID in its file meta")
        transfer_syntax = syntax.name
    # pydicom raises many kinds on a damaged header (InvalidDicomError, struct.error, ...).
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"DICOM header unreadable ({reason})") from None
    return DicomHeader(values, transfer_syntax)
