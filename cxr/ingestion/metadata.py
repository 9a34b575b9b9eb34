"""The csv layout: a metadata table whose rows give each image (or its name's parts), label, group.

Rows that do not lead to exactly one file are not errors: each becomes a Rejection with the
table row and what was looked for, so one bad row never stops a collection of thousands.
With data.csv.dicom_key a row names DICOM files by a header attribute instead (a study's UID
in a table of labels mined from reports), and leads to every file whose header holds it.
"""

from __future__ import annotations

import bisect
import fnmatch
import glob
import io
import re
import string
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.params import CsvParams
from cxr.core.warnings import DataWarnings
from cxr.ingestion.dicom_headers import DicomHeaders
from cxr.ingestion.labels import canonical_label
from cxr.ingestion.layouts import DatasetRoot, Entry, Rejection, files_below, is_hidden

# Tried in this order under data.csv.encoding: auto. UTF-8 (a byte-order mark allowed) is what
# tables are written in today; cp1252 is what Excel on Windows saves as "CSV"; latin-1 decodes
# any byte, so a table is always read (a wrong character in a label then shows in the classes).
AUTO_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")
GLOB_MAGIC = re.compile(r"[*?[]")


def decode_table(data: bytes, encoding: str, shown: str, warnings: DataWarnings) -> str:
    """The table's text: in `encoding`, or under auto the first of AUTO_ENCODINGS that fits."""
    if encoding != "auto":
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as error:
            raise PipelineError(
                f"data.csv.encoding = {encoding!r}: {shown} is not {encoding} ({error.reason} "
                f"at byte {error.start}); set the table's encoding, or auto"
            ) from None
    for candidate in AUTO_ENCODINGS:
        try:
            text = data.decode(candidate)
        except UnicodeDecodeError:
            continue
        if candidate != AUTO_ENCODINGS[0]:
            warnings.warn(
                "table_encoding",
                f"{shown}: not UTF-8, read as {candidate} (set data.csv.encoding to choose)",
            )
        return text
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def read_metadata(path: Path, encoding: str, shown: str, warnings: DataWarnings) -> pd.DataFrame:
    """The table as text cells ('' for empty ones), named `shown` in every message."""
    text = decode_table(path.read_bytes(), encoding, shown, warnings)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        reason = " ".join(str(error).split())
        raise PipelineError(f"{shown}: not a readable CSV table ({reason})") from None
    return table.fillna("")  # a short row leaves its last cells missing


class FileIndex:
    """The visible files of a dataset, listed once per folder, matched against glob patterns."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[str, list[str]] = {}

    def _names(self, folder: str) -> list[str]:
        if folder not in self._folders:
            directory = self.root / folder
            self._folders[folder] = sorted(
                path.name
                for path in (directory.iterdir() if directory.is_dir() else [])
                if path.is_file() and not is_hidden(path.name)
            )
        return self._folders[folder]

    def matches(self, pattern: str) -> list[str]:
        """Files (posix, relative to the root) matching a glob pattern relative to the root."""
        folder, _, name = pattern.rpartition("/")
        if GLOB_MAGIC.search(folder):
            found = glob.glob(pattern, root_dir=self.root)
            return sorted(path for path in found if (self.root / path).is_file())
        # Sorted names and the literal start of the pattern: one bisect per row, not a scan,
        # so a table of 100,000 rows over a folder of 100,000 images stays fast.
        names = self._names(folder)
        literal = GLOB_MAGIC.split(name, maxsplit=1)[0]
        found = []
        for candidate in names[bisect.bisect_left(names, literal) :]:
            if not candidate.startswith(literal):
                break
            if fnmatch.fnmatchcase(candidate, name):
                found.append(f"{folder}/{candidate}" if folder else candidate)
        return found


def template_columns(template: str) -> list[str]:
    """The column names a file template reads, in order."""
    return [name for _text, name, _spec, _conv in string.Formatter().parse(template) if name]


def fill_template(template: str, record: Mapping[str, str]) -> tuple[str, str]:
    """The template filled from a row: (glob pattern with the values escaped, text to show)."""
    pattern, shown = [], []
    for text, name, _spec, _conversion in string.Formatter().parse(template):
        pattern.append(text)
        shown.append(text)
        if name:
            value = record[name].strip()
            pattern.append(glob.escape(value))
            shown.append(value)
    return "".join(pattern), "".join(shown)


def _inside(path: str) -> bool:
    """Whether a posix path relative to the dataset root stays inside it."""
    return not path.startswith("/") and ".." not in PurePosixPath(path).parts


class _Locator:
    """Finds the file of each table row: from the file column, or the template."""

    def __init__(self, root: Path, csv: CsvParams) -> None:
        self.root = root
        self.csv = csv
        self.index = FileIndex(root)

    def _join(self, name: str) -> str:
        return str(PurePosixPath(self.csv.images_dir, name)) if self.csv.images_dir else name

    def locate(self, record: Mapping[str, str], row: str) -> tuple[str, Rejection | None]:
        """The row's file relative to the root, or '' and why there is none."""
        if self.csv.file_template:
            return self._from_template(record, row)
        return self._from_column(record, row)

    def _from_template(self, record: Mapping[str, str], row: str) -> tuple[str, Rejection | None]:
        template = self.csv.file_template
        blank = [column for column in template_columns(template) if not record[column].strip()]
        if blank:
            return "", Rejection(row, "no_file_match", f"column {blank[0]!r} is blank")
        pattern, shown = (self._join(text) for text in fill_template(template, record))
        found = self.index.matches(pattern) if _inside(shown) else []
        if len(found) == 1:
            return found[0], None
        if not found:
            return "", Rejection(row, "no_file_match", f"no file matches {shown}")
        listed = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        detail = f"{len(found)} files match {shown}: {listed}"
        return "", Rejection(row, "several_file_matches", detail)

    def _from_column(self, record: Mapping[str, str], row: str) -> tuple[str, Rejection | None]:
        column = self.csv.file_column
        name = record[column].strip()
        if not name:
            return "", Rejection(row, "missing_file", f"column {column!r} is blank")
        path = self._join(name)
        if not _inside(path) or not (self.root / path).is_file():
            return "", Rejection(row, "missing_file", f"no file {path}")
        return path, None


class _DicomKeyLocator:
    """Finds the DICOM files of each table row: those whose data.csv.dicom_key holds its value."""

    def __init__(self, root: Path, csv: CsvParams, headers: DicomHeaders) -> None:
        self.csv = csv
        folder = root / csv.images_dir if csv.images_dir else root
        self.where = f"{csv.images_dir}/" if csv.images_dir else "the dataset"
        below = [path.relative_to(root).as_posix() for path in files_below(folder)]
        headers.load(below)
        self.files: dict[str, list[str]] = defaultdict(list)
        for relative in below:
            header = headers.get(relative)
            if header is not None and header[csv.dicom_key]:
                self.files[header[csv.dicom_key]].append(relative)

    def locate(self, record: Mapping[str, str], row: str) -> tuple[list[str], Rejection | None]:
        """The row's files relative to the root, or [] and why there are none."""
        column, key = self.csv.file_column, self.csv.dicom_key
        value = record[column].strip()
        if not value:
            return [], Rejection(row, "missing_file", f"column {column!r} is blank")
        files = self.files.get(value, [])
        if not files:
            # The value itself is not shown: an identifier stays in the table it came from.
            detail = f"no DICOM file under {self.where} has this row's {key} (column {column!r})"
            return [], Rejection(row, "no_file_match", detail)
        return files, None


def _dicom_key_entries(entries: list[Entry], key: str, shown: str) -> list[Entry]:
    """One entry per file matched by rows of one label; a file matched with two labels fails."""
    first: dict[str, Entry] = {}
    kept = []
    for entry in entries:
        if not entry.path:
            kept.append(entry)
            continue
        earlier = first.get(entry.path)
        if earlier is None:
            first[entry.path] = entry
            kept.append(entry)
        elif canonical_label(earlier.raw_label) != canonical_label(entry.raw_label):
            rows = f"rows {earlier.row.rsplit(':', 1)[-1]} and {entry.row.rsplit(':', 1)[-1]}"
            raise PipelineError(
                f"{shown}: {rows} give {entry.path!r} different labels "
                f"({earlier.raw_label!r}, {entry.raw_label!r}) through its {key}; "
                f"keep one label per {key}"
            )
    return kept


def _check_columns(table: pd.DataFrame, csv: CsvParams, shown: str) -> None:
    wanted = [("label_column", csv.label_column, csv.label_column)]
    if csv.file_template:
        wanted += [
            ("file_template", csv.file_template, c) for c in template_columns(csv.file_template)
        ]
    else:
        wanted.append(("file_column", csv.file_column, csv.file_column))
    if csv.group_column:
        wanted.append(("group_column", csv.group_column, csv.group_column))
    for key, value, column in wanted:
        if column not in table.columns:
            keyed = csv.dicom_key and key == "file_column"
            what = f" (the column of each row's {csv.dicom_key})" if keyed else ""
            raise PipelineError(
                f"data.csv.{key} = {value!r}{what}: no column {column!r} in {shown}; its "
                f"columns: {', '.join(map(str, table.columns))}"
            )


def _check_one_row_per_file(entries: list[Entry], shown: str) -> None:
    rows: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        if entry.path:
            rows[entry.path].append(entry.row.rsplit(":", 1)[-1])
    repeated = {path: numbers for path, numbers in rows.items() if len(numbers) > 1}
    if repeated:
        path, numbers = sorted(repeated.items())[0]
        raise PipelineError(
            f"{shown}: {len(repeated)} file(s) named by more than one row, e.g. {path!r} "
            f"(rows {', '.join(numbers)}); keep one row per file"
        )


def csv_entries(
    dataset: DatasetRoot,
    csv: CsvParams,
    warnings: DataWarnings,
    headers: DicomHeaders | None = None,
) -> list[Entry]:
    """One entry per row of data.csv.file; rows without exactly one file carry a Rejection.

    With data.csv.dicom_key, one entry per DICOM file a row leads to (`headers` reads them).
    """
    shown = dataset.shown(csv.file)
    table_path = dataset.path / csv.file
    if not table_path.is_file():
        raise PipelineError(f"data.csv.file = {csv.file!r}: no such table ({shown})")
    if csv.images_dir and not (dataset.path / csv.images_dir).is_dir():
        raise PipelineError(
            f"data.csv.images_dir = {csv.images_dir!r}: no such folder "
            f"({dataset.shown(csv.images_dir)})"
        )
    table = read_metadata(table_path, csv.encoding, shown, warnings)
    _check_columns(table, csv, shown)
    if csv.dicom_key:
        if headers is None:
            raise ValueError("data.csv.dicom_key needs the DICOM headers to match rows by")
        entries = _keyed_entries(table, csv, dataset.path, headers)
        entries = _dicom_key_entries(entries, csv.dicom_key, shown)
    else:
        entries = _named_entries(table, csv, dataset.path)
        _check_one_row_per_file(entries, shown)
    if entries and all(entry.rejection for entry in entries):
        first = entries[0].rejection
        assert first is not None
        key = "file_template" if csv.file_template else "file_column"
        value = csv.file_template if csv.file_template else csv.file_column
        also = f", data.csv.dicom_key = {csv.dicom_key!r}" if csv.dicom_key else ""
        raise PipelineError(
            f"data.csv.{key} = {value!r}: no row of {shown} leads to a file (row "
            f"{first.path.rsplit(':', 1)[-1]}: {first.detail}); check it{also} and "
            f"data.csv.images_dir = {csv.images_dir!r}"
        )
    return entries


def _named_entries(table: pd.DataFrame, csv: CsvParams, root: Path) -> list[Entry]:
    """One entry per row, its file named by the file column or the template."""
    locator = _Locator(root, csv)
    entries = []
    for number, record in enumerate(table.to_dict("records"), start=2):  # the header is row 1
        row = f"{csv.file}:{number}"
        path, rejection = locator.locate(record, row)
        group = record[csv.group_column].strip() if csv.group_column else ""
        entries.append(Entry(path, record[csv.label_column], "", group, row, rejection))
    return entries


def _keyed_entries(
    table: pd.DataFrame, csv: CsvParams, root: Path, headers: DicomHeaders
) -> list[Entry]:
    """One entry per DICOM file each row leads to by data.csv.dicom_key, or one rejected row."""
    locator = _DicomKeyLocator(root, csv, headers)
    entries = []
    for number, record in enumerate(table.to_dict("records"), start=2):  # the header is row 1
        row = f"{csv.file}:{number}"
        files, rejection = locator.locate(record, row)
        group = record[csv.group_column].strip() if csv.group_column else ""
        label = record[csv.label_column]
        entries += [Entry(path, label, "", group, row) for path in files]
        if rejection is not None:
            entries.append(Entry("", label, "", group, row, rejection))
    return entries
