"""How a dataset's folders say which file is which class: layouts, detection and class names."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.tables import MANIFEST_COLUMNS

LAYOUTS = ("auto", "class_folders", "split_folders", "radiography", "binary", "csv")

# A folder is a class only if it holds at least one file with one of these suffixes; every file
# in it is still listed (a JPEG saved as .dat is an image; build rejects what does not decode).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jfif", ".pgm", ".ppm"}
)

# Folder names of predefined splits, compared case-insensitively.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

# Segmentation masks beside the images (COVID-19 Radiography Database) are not samples.
MASK_FOLDERS = frozenset({"masks", "mask", "lung masks", "lung_masks"})

# Spellings the public collections use for the same class, after case/space/hyphen folding.
LABEL_ALIASES = {
    "covid_19": "covid",
    "covid19": "covid",
    "covid_positive": "covid",
    "ct_covid": "covid",
    "noncovid": "non_covid",
    "non_covid_19": "non_covid",
    "ct_noncovid": "non_covid",
    "ct_non_covid": "non_covid",
    "pneumonia_viral": "viral_pneumonia",
    "pneumonia_bacterial": "bacterial_pneumonia",
    "lung_opacities": "lung_opacity",
    "healthy": "normal",
}


def canonical_label(raw: str) -> str:
    """Fold a class name to lower_snake_case and merge known aliases (COVID-19 -> covid)."""
    folded = re.sub(r"[\W_]+", "_", raw.strip().lower()).strip("_")
    return LABEL_ALIASES.get(folded, folded)


def is_hidden(name: str) -> bool:
    """Files and folders that are never samples: dotfiles, macOS ._ forks and __MACOSX."""
    return name.startswith(".") or name.startswith("~$") or name == "__MACOSX"


@dataclass(frozen=True)
class Entry:
    """One file found in a layout, before its label is mapped."""

    path: str  # posix, relative to the dataset root handed to list_files
    raw_label: str
    given_split: str = ""
    group: str = ""


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_hidden(p.name))


def _files_below(folder: Path) -> Iterator[Path]:
    """Every visible file under folder, skipping hidden and mask folders, in sorted order."""
    for child in sorted(folder.iterdir()):
        if is_hidden(child.name):
            continue
        if child.is_dir():
            if child.name.lower() not in MASK_FOLDERS:
                yield from _files_below(child)
        elif child.is_file():
            yield child


def dataset_root(root: Path) -> Path:
    """Descend through wrapper folders (an archive's single top folder) to the dataset itself."""
    current = root
    while True:
        dirs = _visible_dirs(current)
        if len(dirs) != 1 or _visible_files(current):
            return current
        current = dirs[0]


def _split_of(name: str) -> str | None:
    return SPLIT_NAMES.get(name.strip().lower())


def detect_layout(root: Path) -> str:
    """Guess the layout of a dataset folder (not the csv layout: that needs column names)."""
    dirs = _visible_dirs(root)
    if any(_split_of(d.name) for d in dirs):
        return "split_folders"
    return _class_level_layout(root)


def _class_level_layout(folder: Path) -> str:
    """The layout of one folder of classes: radiography, binary or plain class folders."""
    dirs = _visible_dirs(folder)
    if dirs and all(d.name.isdigit() for d in dirs):
        return "binary"
    if any(sub.name.lower() == "images" for d in dirs for sub in _visible_dirs(d)):
        return "radiography"
    return "class_folders"


def _has_image(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_SUFFIXES for path in _files_below(folder))


def _class_entries(folder: Path, root: Path, layout: str, given_split: str) -> list[Entry]:
    """Entries of <folder>/<class>/... for the class folders, radiography and binary layouts."""
    entries: list[Entry] = []
    for class_dir in _visible_dirs(folder):
        if layout == "radiography":
            images = next((d for d in _visible_dirs(class_dir) if d.name.lower() == "images"), None)
            if images is None:
                continue  # e.g. a folder of metadata beside the class folders
            files = list(_files_below(images))
        else:
            if not _has_image(class_dir):
                continue  # documentation or metadata folders are not classes
            files = list(_files_below(class_dir))
        entries.extend(
            Entry(path.relative_to(root).as_posix(), class_dir.name, given_split) for path in files
        )
    return entries


def _split_entries(root: Path) -> list[Entry]:
    entries: list[Entry] = []
    others = []
    for split_dir in _visible_dirs(root):
        split = _split_of(split_dir.name)
        if split is None:
            others.append(split_dir.name)
            continue
        layout = _class_level_layout(split_dir)
        entries.extend(_class_entries(split_dir, root, layout, split))
    if others:
        raise PipelineError(
            f"{root}: folder(s) {', '.join(sorted(others))} beside the split folders; a split "
            "layout holds only train/val/test folders (set data.layout to read it another way)"
        )
    return entries


@dataclass(frozen=True)
class CsvLayout:
    """Where the metadata table is and which of its columns say file, label and group."""

    table: str
    file_column: str
    label_column: str
    group_column: str
    images_dir: str


def _csv_entries(root: Path, csv: CsvLayout) -> list[Entry]:
    table_path = root / csv.table
    if not table_path.is_file():
        raise PipelineError(
            f"data.csv.file = {csv.table!r}: no such table under the dataset root {root}"
        )
    try:
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise PipelineError(f"{table_path}: not a readable CSV table ({error})") from None
    wanted = {"file_column": csv.file_column, "label_column": csv.label_column}
    if csv.group_column:
        wanted["group_column"] = csv.group_column
    for key, column in wanted.items():
        if column not in table.columns:
            raise PipelineError(
                f"data.csv.{key} = {column!r}: no such column in {table_path.name}; "
                f"columns: {', '.join(map(str, table.columns))}"
            )
    images_dir = root / csv.images_dir
    entries: list[Entry] = []
    missing: list[str] = []
    for record in table.to_dict("records"):
        name = str(record[csv.file_column]).strip()
        path = images_dir / name
        if not name or not path.is_file():
            missing.append(name)
            continue
        group = str(record[csv.group_column]).strip() if csv.group_column else ""
        entries.append(
            Entry(path.relative_to(root).as_posix(), str(record[csv.label_column]), "", group)
        )
    repeated = sorted(path for path, n in Counter(e.path for e in entries).items() if n > 1)
    if repeated:
        raise PipelineError(
            f"{table_path}: file(s) listed more than once in column {csv.file_column!r}: "
            f"{', '.join(map(repr, repeated[:5]))}; keep one row per file"
        )
    if missing:
        raise PipelineError(
            f"{table_path}: {len(missing)} file(s) named in column {csv.file_column!r} are not "
            f"under {images_dir}: {', '.join(repr(m) for m in missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return entries


def list_files(root: Path, layout: str, csv: CsvLayout | None = None) -> tuple[str, list[Entry]]:
    """List every sample file under root with its raw label; return (layout used, entries)."""
    if layout == "csv":
        if csv is None or not csv.table:
            raise PipelineError("data.layout = 'csv': set data.csv.file to the metadata table")
        return layout, _csv_entries(root, csv)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "split_folders":
        entries = _split_entries(root)
    else:
        entries = _class_entries(root, root, layout, "")
    return layout, entries


def _class_names(entries: Sequence[Entry], label_map: Mapping[str, str]) -> list[str]:
    """The canonical class of each entry: data.label_map first, else its folded raw label."""
    by_raw = {raw: canonical_label(name) for raw, name in label_map.items()}
    by_canonical = {canonical_label(raw): canonical_label(name) for raw, name in label_map.items()}
    used: set[str] = set()
    unmapped: set[str] = set()
    labels: list[str] = []
    for entry in entries:
        raw = entry.raw_label
        if raw in by_raw:
            used.add(raw)
            labels.append(by_raw[raw])
            continue
        folded = canonical_label(raw)
        if folded in by_canonical:
            used.update(key for key in label_map if canonical_label(key) == folded)
            labels.append(by_canonical[folded])
            continue
        # A number ("0", "1") or an empty name says nothing about the class.
        if not folded or folded.isdigit():
            unmapped.add(raw)
        labels.append(folded)
    if unmapped:
        names = ", ".join(repr(raw) for raw in sorted(unmapped))
        raise PipelineError(
            f"data.label_map: label(s) {names} need a class name; add e.g. "
            f"label_map: {{{', '.join(f'{raw!r}: <class>' for raw in sorted(unmapped))}}}"
        )
    unused = sorted(set(label_map) - used)
    if unused and entries:
        found = sorted({entry.raw_label for entry in entries})
        raise PipelineError(
            f"data.label_map: key(s) {', '.join(map(repr, unused))} match no label in the "
            f"source; its labels are: {', '.join(map(repr, found))}"
        )
    return labels


def _keep_classes(manifest: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The manifest rows of data.classes (all rows when it is empty), each named class present."""
    if not classes:
        return manifest
    wanted = [canonical_label(name) for name in classes]
    if len(set(wanted)) < len(wanted):
        raise PipelineError(
            f"data.classes = {list(classes)!r}: names the same class twice "
            f"(canonical names: {', '.join(wanted)})"
        )
    missing = sorted(set(wanted) - set(manifest["label"]))
    if missing:
        raise PipelineError(
            f"data.classes: {', '.join(missing)} not in the source; its classes are: "
            f"{', '.join(sorted(set(manifest['label'])))}"
        )
    return manifest[manifest["label"].isin(wanted)].reset_index(drop=True)


def label_entries(
    entries: Sequence[Entry],
    label_map: Mapping[str, str],
    classes: Sequence[str],
    prefix: str = "",
) -> pd.DataFrame:
    """Map raw labels to canonical classes, keep data.classes, and return manifest rows."""
    manifest = pd.DataFrame(
        {
            "path": [
                str(PurePosixPath(prefix, entry.path)) if prefix else entry.path
                for entry in entries
            ],
            "label": _class_names(entries, label_map),
            "given_split": [entry.given_split for entry in entries],
            "group": [entry.group for entry in entries],
            "source": ["" for _ in entries],
        },
        columns=list(MANIFEST_COLUMNS),
    )
    manifest = _keep_classes(manifest, classes)
    return manifest.sort_values("path", kind="stable").reset_index(drop=True)
