"""How a dataset's folders say which file is which class: the folder layouts and their detection."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr.core.dicom import is_dicom_file
from cxr.core.errors import PipelineError
from cxr.core.warnings import DataWarnings

LAYOUTS = ("auto", "class_folders", "split_folders", "radiography", "binary", "csv")

# A folder is a class only if it holds at least one image: a file with one of these suffixes,
# or a DICOM file whatever its name (.dcm, .DCM, IM000001, none). Every file in it is still
# listed (a JPEG saved as .dat is an image; build rejects what does not decode).
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

ARCHIVE_SUFFIX = re.compile(r"(\.tar)?\.(zip|tar|tgz|gz|bz2|xz)$", re.IGNORECASE)


def is_hidden(name: str) -> bool:
    """Files and folders that are never samples: dotfiles, macOS ._ forks and __MACOSX."""
    return name.startswith(".") or name.startswith("~$") or name == "__MACOSX"


@dataclass(frozen=True)
class Rejection:
    """A metadata table row or a source folder's file that ingest could not use, and why."""

    # the row: table path and row number (header = row 1), e.g. metadata.csv:12; or the file's
    # posix path inside the source folder
    path: str
    kind: str  # snake_case, counted in ingest.json (dropped_rows, skipped_ or filtered_files)
    detail: str  # what was looked for and what was found

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Entry:
    """One file (or table row) found in a layout, before its label is mapped."""

    path: str  # posix, relative to the dataset root; '' for a row whose file was not found
    raw_label: str
    given_split: str = ""
    group: str = ""
    row: str = ""  # the table row it came from (csv layout), e.g. metadata.csv:12
    rejection: Rejection | None = None  # why the row cannot be used; None when it can


@dataclass(frozen=True)
class DatasetRoot:
    """The dataset root inside ingest's staging copy, and how the user names it."""

    path: Path  # in the staging copy: never shown to the user
    origin: str  # the user's folder or archive (data.source resolved)
    member: str = ""  # the dataset root inside origin, posix; '' = origin itself
    is_archive: bool = False

    @classmethod
    def local(cls, path: Path) -> DatasetRoot:
        """A dataset root the user names by its own path (a folder read in place)."""
        return cls(path, str(path))

    def shown(self, relative: str = "") -> str:
        """The user's name of a path in the dataset: <folder>/<path> or <archive>:<member>."""
        inner = "/".join(part for part in (self.member, relative) if part)
        if self.is_archive:
            return f"{self.origin}:{inner}" if inner else self.origin
        return str(Path(self.origin, inner)) if inner else self.origin

    @property
    def name(self) -> str:
        """The dataset's own name: its folder's name, or the archive's without the suffix."""
        if self.member:
            return self.member.rsplit("/", 1)[-1]
        name = Path(self.origin).name
        return ARCHIVE_SUFFIX.sub("", name) if self.is_archive else name

    def relative(self, path: Path) -> str:
        """A path under the root as the posix path relative to it."""
        return path.relative_to(self.path).as_posix()


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_hidden(p.name))


def files_below(folder: Path) -> Iterator[Path]:
    """Every visible file under folder, skipping hidden and mask folders, in sorted order."""
    for child in sorted(folder.iterdir()):
        if is_hidden(child.name):
            continue
        if child.is_dir():
            if child.name.lower() not in MASK_FOLDERS:
                yield from files_below(child)
        elif child.is_file():
            yield child


def has_image_suffix(path: Path) -> bool:
    """Whether the file's name ends in an image suffix (.png, .jpg, ...), in any case."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_dicom(path: Path) -> bool:
    """Whether a file is DICOM by its content; a file named as an image is not even opened."""
    return not has_image_suffix(path) and is_dicom_file(path)


def is_image(path: Path) -> bool:
    """Whether a file is an image: named as one, or DICOM by its content (132 bytes read)."""
    return has_image_suffix(path) or is_dicom_file(path)


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


def _class_files(class_dir: Path, layout: str) -> tuple[Path, list[Path]] | None:
    """The folder a class's images are in and every file under it; None for a non-class."""
    if layout != "radiography":
        return class_dir, list(files_below(class_dir))
    images = next((d for d in _visible_dirs(class_dir) if d.name.lower() == "images"), None)
    # A folder without images/ beside the class folders holds metadata, not a class.
    return None if images is None else (images, list(files_below(images)))


def _class_entries(
    folder: Path, dataset: DatasetRoot, layout: str, given_split: str, warnings: DataWarnings
) -> list[Entry]:
    """Entries of <folder>/<class>/... for the class folders, radiography and binary layouts."""
    entries: list[Entry] = []
    for class_dir in _visible_dirs(folder):
        found = _class_files(class_dir, layout)
        if found is None:
            continue
        images_dir, files = found
        if not any(is_image(path) for path in files):
            others = f" (only {len(files)} other file(s))" if files else ""
            warnings.warn(
                "empty_class_folder",
                f"{dataset.shown(dataset.relative(images_dir))}: no image file{others}; "
                "not read as a class",
            )
            continue
        entries.extend(Entry(dataset.relative(path), class_dir.name, given_split) for path in files)
    return entries


def _split_entries(dataset: DatasetRoot, warnings: DataWarnings) -> list[Entry]:
    entries: list[Entry] = []
    others = []
    for split_dir in _visible_dirs(dataset.path):
        split = _split_of(split_dir.name)
        if split is None:
            others.append(split_dir.name)
            continue
        layout = _class_level_layout(split_dir)
        entries.extend(_class_entries(split_dir, dataset, layout, split, warnings))
    if others:
        raise PipelineError(
            f"{dataset.shown()}: folder(s) {', '.join(sorted(others))} beside the split folders; "
            "a split layout holds only train/val/test folders (set data.layout to read it "
            "another way)"
        )
    return entries


def _single_class_entries(dataset: DatasetRoot) -> list[Entry]:
    """A dataset of images without class folders: one class, named after the dataset."""
    files = _visible_files(dataset.path)
    if not any(is_image(path) for path in files):
        return []
    return [Entry(dataset.relative(path), dataset.name) for path in files]


def list_files(
    dataset: DatasetRoot, layout: str, warnings: DataWarnings
) -> tuple[str, list[Entry]]:
    """List every sample file of a folder layout with its raw label: (layout used, entries)."""
    if layout == "csv":
        raise ValueError("the csv layout is read by cxr.ingestion.metadata, not from folders")
    if layout == "auto":
        layout = detect_layout(dataset.path)
    if layout == "split_folders":
        return layout, _split_entries(dataset, warnings)
    entries = _class_entries(dataset.path, dataset, layout, "", warnings)
    if not entries and layout == "class_folders":
        entries = _single_class_entries(dataset)
    return layout, entries
