"""DICOM headers at ingest: the manifest's DICOM columns, patient groups and data.dicom filters.

Each file is DICOM by its content (cxr.core.dicom); its header is read once, up to the pixels.
Identifiers leave this module only as pseudonyms (cxr.core.pseudonyms): names, birth dates,
addresses, accession numbers, institutions and physicians are never read into any table.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import pandas as pd

from cxr.core.dicom import IDENTIFIERS, DicomHeader, read_header
from cxr.core.errors import PipelineError
from cxr.core.params import DicomParams
from cxr.core.processes import available_cores, map_in_processes
from cxr.core.pseudonyms import Pseudonyms
from cxr.core.tables import DICOM_COLUMNS
from cxr.core.warnings import DataWarnings
from cxr.ingestion.layouts import Entry, Rejection, is_dicom

# Manifest column -> DICOM keyword; `transfer_syntax` comes from the file meta instead.
COLUMN_KEYWORDS = {
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "modality": "Modality",
    "view_position": "ViewPosition",
    "body_part": "BodyPartExamined",
    "manufacturer": "Manufacturer",
    "sex": "PatientSex",
    "age": "PatientAge",
    "photometric": "PhotometricInterpretation",
    "bits_stored": "BitsStored",
}
# Headers per worker process: below 2 x this, one process reads them (3,000 headers took 5 s
# in one process and 5-8 s in two on a shared 2-core machine: starting workers costs that much).
HEADERS_PER_WORKER_START = 2000
# HIPAA's Safe Harbor counts an age over 89 as an identifier: all of them read 090Y+.
OLDEST_AGE_SHOWN = 90
AGE = re.compile(r"(\d{3})([DWMY])")
# Identifiers shorter than this are too likely to appear in a path by chance (PatientID "12").
MIN_IDENTIFIER_IN_PATH = 6
# A header that could not be read: its values are all blank.
UNREADABLE = DicomHeader({}, "")


def _read(path: Path) -> DicomHeader | str:
    """The header of one file, or the reason it cannot be read (for worker processes)."""
    try:
        return read_header(path)
    except ValueError as error:
        return str(error)


def shown_age(age: str) -> str:
    """A DICOM age string as written, except 90 years and over, which all read 090Y+."""
    match = AGE.fullmatch(age)
    if match and match.group(2) == "Y" and int(match.group(1)) >= OLDEST_AGE_SHOWN:
        return f"{OLDEST_AGE_SHOWN:03d}Y+"
    return age


@dataclass
class DicomHeaders:
    """The headers of a dataset's DICOM files (by path relative to its root), each read once."""

    root: Path
    pseudonyms: Pseudonyms
    workers: int = 1  # 0: one per core
    # relative path -> header; None for a file that is not DICOM
    _headers: dict[str, DicomHeader | None] = field(default_factory=dict, init=False, repr=False)
    # relative path -> why its header could not be read
    _unreadable: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def load(self, relatives: Iterable[str]) -> None:
        """Read the headers of those files not read yet (in processes when there are many)."""
        new = [relative for relative in dict.fromkeys(relatives) if relative not in self._headers]
        dicom = [relative for relative in new if is_dicom(self.root / relative)]
        self._headers.update(dict.fromkeys(new))
        workers = min(self.workers or available_cores(), len(dicom) // HEADERS_PER_WORKER_START)
        # pydicom is imported once in the server the workers fork from, not once in each.
        preload = ["cxr.core.dicom", "pydicom"]
        read = map_in_processes(_read, [self.root / path for path in dicom], workers, preload)
        try:
            for relative, header in zip(dicom, read, strict=True):
                if isinstance(header, str):
                    self._unreadable[relative] = header
                    header = UNREADABLE
                self._headers[relative] = header
        except BrokenProcessPool:
            raise PipelineError(
                f"{self.root}: a process reading DICOM headers died (out of memory?); "
                "set CXR_WORKERS=1 to read them in one process"
            ) from None

    def get(self, relative: str) -> DicomHeader | None:
        """The header of a loaded file, None when it is not DICOM."""
        return self._headers.get(relative)

    def pseudonym(self, relative: str, keyword: str) -> str:
        """The pseudonym of one identifier of a file's header ('' when it has none)."""
        header = self.get(relative)
        return self.pseudonyms(keyword, header[keyword]) if header is not None else ""

    def columns(self, relative: str) -> dict[str, str]:
        """A file's DICOM columns of the manifest, identifiers as pseudonyms; '' when not DICOM."""
        header = self.get(relative)
        if header is None:
            return dict.fromkeys(DICOM_COLUMNS, "")
        columns = {column: header[keyword] for column, keyword in COLUMN_KEYWORDS.items()}
        for column in ("patient", "study"):
            columns[column] = self.pseudonyms(COLUMN_KEYWORDS[column], columns[column])
        columns["age"] = shown_age(columns["age"])
        columns["transfer_syntax"] = header.transfer_syntax
        return {column: columns[column] for column in DICOM_COLUMNS}

    def warn(self, warnings: DataWarnings) -> None:
        """Warn once about unreadable headers, once about paths that hold their identifiers."""
        if self._unreadable:
            path, reason = sorted(self._unreadable.items())[0]
            warnings.warn(
                "dicom_header_unreadable",
                f"{len(self._unreadable)} DICOM file(s) with a header that cannot be read, e.g. "
                f"{path}: {reason}; their DICOM columns are blank (build rejects what it cannot "
                "decode)",
            )
        named = [
            (path, keyword)
            for path, header in sorted(self._headers.items())
            if header is not None
            for keyword in IDENTIFIERS
            if len(header[keyword]) >= MIN_IDENTIFIER_IN_PATH and header[keyword] in path
        ]
        if named:
            files = len({path for path, _keyword in named})
            path, keyword = named[0]
            warnings.warn(
                "identifier_in_path",
                f"{files} DICOM file(s) hold their own {keyword} (or another identifier) in "
                f"their path, e.g. {path}; paths are kept as in the source, so the manifest, "
                "split tables, predictions and MLflow show them: rename the files or folders in "
                "the source to keep the identifiers in data/raw",
            )


def patient_groups(entries: Sequence[Entry], headers: DicomHeaders) -> list[Entry]:
    """Each DICOM entry without a group with its patient's pseudonym as group."""
    return [
        replace(entry, group=headers.pseudonym(entry.path, "PatientID"))
        if entry.path and not entry.group
        else entry
        for entry in entries
    ]


def with_dicom_columns(
    manifest: pd.DataFrame, headers: DicomHeaders, prefix: str = ""
) -> pd.DataFrame:
    """The manifest with its DICOM columns; its paths are relative to data/raw (under prefix)."""
    relative = _relative_paths(manifest, prefix)
    columns = pd.DataFrame(
        [headers.columns(path) for path in relative], columns=list(DICOM_COLUMNS), dtype=str
    )
    return pd.concat([manifest.reset_index(drop=True), columns], axis=1)


def _relative_paths(manifest: pd.DataFrame, prefix: str) -> list[str]:
    """Each manifest path relative to the dataset root (manifest paths start with its member)."""
    if not prefix:
        return manifest["path"].tolist()
    return [PurePosixPath(path).relative_to(prefix).as_posix() for path in manifest["path"]]


def _left_out(header: DicomHeader, dicom: DicomParams) -> tuple[str, str] | None:
    """Why data.dicom leaves a DICOM file out: (kind, detail), or None to keep it."""
    for kind, keyword, wanted, key in (
        ("modality_not_selected", "Modality", dicom.modalities, "modalities"),
        ("view_not_selected", "ViewPosition", dicom.views, "views"),
    ):
        value = header[keyword]
        if wanted and value.upper() not in wanted:
            shown = f"{value!r}" if value else "blank"
            return kind, f"{keyword} {shown} not in data.dicom.{key} [{', '.join(wanted)}]"
    return None


def select_dicom(
    manifest: pd.DataFrame, headers: DicomHeaders, dicom: DicomParams, prefix: str = ""
) -> tuple[pd.DataFrame, list[Rejection]]:
    """The manifest rows data.dicom keeps, and a Rejection for each DICOM file it leaves out."""
    if not dicom.modalities and not dicom.views:
        return manifest, []
    keep, rejected = [], []
    for path, relative in zip(manifest["path"], _relative_paths(manifest, prefix), strict=True):
        header = headers.get(relative)
        reason = None if header is None else _left_out(header, dicom)
        keep.append(reason is None)
        if reason is not None:
            rejected.append(Rejection(path, *reason))
    return manifest[keep].reset_index(drop=True), rejected


def filtered_counts(rejected: Sequence[Rejection]) -> dict[str, int]:
    """Files data.dicom left out, per reason, sorted."""
    return dict(sorted(Counter(rejection.kind for rejection in rejected).items()))
