"""From data.source to data/raw and the manifest: copy or extract it as it is, label its files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_dir, write_table
from cxr.core.params import DataParams
from cxr.core.paths import ProjectPaths, workspace_root
from cxr.core.pseudonyms import Pseudonyms
from cxr.core.tables import REJECTED_COLUMNS, label_counts
from cxr.core.warnings import DataWarnings
from cxr.ingestion.dicom_headers import (
    DicomHeaders,
    filtered_counts,
    patient_groups,
    select_dicom,
    with_dicom_columns,
)
from cxr.ingestion.groups import apply_group_pattern
from cxr.ingestion.labels import label_entries
from cxr.ingestion.layouts import DatasetRoot, Entry, Rejection, dataset_root, list_files
from cxr.ingestion.metadata import csv_entries
from cxr.ingestion.phantoms import write_phantom_dataset
from cxr.ingestion.phantoms_dicom import write_dicom_phantom_dataset
from cxr.ingestion.sources import copy_files, copy_tree, extract_archive, resolve_source

# What each kind of dropped row means, and what to change to keep it.
DROP_HINTS = {
    "blank_label": (
        "blank label",
        f"to keep them set data.label_map {{{DataParams.BLANK_LABEL}: <class>}} "
        f"(-S ++data.label_map.{DataParams.BLANK_LABEL}=<class>)",
    ),
    "missing_file": ("file not found", "check data.csv.file_column and data.csv.images_dir"),
    "no_file_match": (
        "no file matches",
        "check data.csv.file_template (or dicom_key) and data.csv.images_dir",
    ),
    "several_file_matches": (
        "several files match",
        "make data.csv.file_template match one file (e.g. .png instead of .*)",
    ),
}


# What each kind of source file left out of data/raw is, and what to do to use it.
SKIP_HINTS = {
    "symbolic_link": (
        "symbolic link(s), not followed",
        "copy the files or folders themselves into the source to use them",
    ),
    "not_a_regular_file": ("pipe(s), socket(s) or device file(s), not read", ""),
}


@dataclass(frozen=True)
class Ingested:
    """What ingest wrote: the manifest rows, the layout read, what was left out, and warnings."""

    manifest: pd.DataFrame
    layout: str
    rejected: list[Rejection] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    skipped: list[Rejection] = field(default_factory=list)  # source files not copied
    filtered: list[Rejection] = field(default_factory=list)  # DICOM files data.dicom left out

    @property
    def counts(self) -> dict[str, int]:
        """Files per canonical class."""
        return label_counts(self.manifest["label"])

    @property
    def dropped(self) -> dict[str, int]:
        """Table rows dropped per reason (blank_label, missing_file, no_file_match, ...)."""
        return dict(sorted(Counter(rejection.kind for rejection in self.rejected).items()))

    @property
    def skipped_files(self) -> dict[str, int]:
        """Source files not copied into data/raw per reason (symbolic_link, not_a_regular_file)."""
        return dict(sorted(Counter(rejection.kind for rejection in self.skipped).items()))

    @property
    def filtered_files(self) -> dict[str, int]:
        """DICOM files data.dicom left out per reason (modality_ or view_not_selected)."""
        return filtered_counts(self.filtered)


def _synthetic(data: DataParams, staging: Path, workers: int) -> list[Entry]:
    synthetic = data.synthetic
    # The same pixels either way: PNG files, or DICOM files of fake patients.
    write = write_dicom_phantom_dataset if synthetic.format == "dicom" else write_phantom_dataset
    # `workers` processes (0: one per core): the phantoms' bytes do not depend on how many.
    write(
        staging,
        synthetic.counts,
        synthetic.image_size,
        synthetic.difficulty,
        synthetic.seed,
        workers=workers,
        exposure=synthetic.exposure,
        positioning=synthetic.positioning,
    )
    # Every file written (some DICOM phantoms have no extension), labelled by its class folder.
    return [
        Entry(path.relative_to(staging).as_posix(), path.parent.name)
        for path in sorted(staging.glob("*/*"))
        if path.is_file()
    ]


def _stage_source(
    data: DataParams, paths: ProjectPaths, staging: Path, warnings: DataWarnings
) -> tuple[DatasetRoot, list[Rejection]]:
    """Copy or extract data.source into staging: its dataset root and the files left out."""
    resolved = resolve_source(
        data.source,
        data.sha256,
        workspace_root(paths.root),
        paths.downloads_dir,
        dicomweb=data.dicomweb,
        table=data.csv.file,
    )
    skipped: list[Rejection] = []
    if resolved.is_archive:
        extract_archive(resolved.path, staging, data.max_extract_bytes, data.max_extract_files)
    elif resolved.files is not None:  # a DICOMweb query's instances and its label table
        copy_files(resolved.files, staging)
    else:
        skipped = copy_tree(resolved.path, staging)
        _report_skipped(
            skipped, resolved.path, paths.ingest_rejected.relative_to(paths.root), warnings
        )
    root = dataset_root(staging)
    member = root.relative_to(staging).as_posix()
    dataset = DatasetRoot(
        root, str(resolved.path), "" if member == "." else member, resolved.is_archive
    )
    return dataset, skipped


def _report_skipped(
    skipped: list[Rejection], source: Path, listed_in: Path, warnings: DataWarnings
) -> None:
    """One warning per kind of source file left out of data/raw, naming the first few."""
    for kind, (what, hint) in SKIP_HINTS.items():
        paths = [str(source / rejection.path) for rejection in skipped if rejection.kind == kind]
        if not paths:
            continue
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        warnings.warn(
            kind,
            f"{len(paths)} {what}: {', '.join(paths[:3])}{more}; not copied into data/raw, "
            f"listed in {listed_in}" + (f"; {hint}" if hint else ""),
        )


def _source_entries(
    data: DataParams, dataset: DatasetRoot, warnings: DataWarnings, headers: DicomHeaders
) -> tuple[str, list[Entry]]:
    """Every file (or table row) of the source with its raw label: (layout used, entries)."""
    layout = "csv" if data.layout == "auto" and data.csv.file else data.layout
    if layout == "csv":
        return layout, csv_entries(dataset, data.csv, warnings, headers)
    return list_files(dataset, layout, warnings)


def _report_dropped(rejected: list[Rejection], listed_in: Path, warnings: DataWarnings) -> None:
    """One warning per reason rows were dropped for, with an example and what to change."""
    for kind, count in Counter(rejection.kind for rejection in rejected).items():
        first = next(rejection for rejection in rejected if rejection.kind == kind)
        what, hint = DROP_HINTS.get(kind, (kind, ""))
        warnings.warn(
            kind,
            f"{count} table row(s) dropped ({what}), e.g. {first.path}: {first.detail}; "
            f"all are listed in {listed_in}; {hint}",
        )


def _check_classes(
    manifest: pd.DataFrame, data: DataParams, layout: str, warnings: DataWarnings
) -> None:
    """No file is an error; a single class is a warning (a classifier needs two)."""
    counts = label_counts(manifest["label"])
    if not counts:
        raise PipelineError(
            f"data.source = {data.source!r}: no image files found in the {layout} layout; "
            "see data.layout in the README for the folder layouts it reads"
        )
    if len(counts) == 1:
        (label, files), *_ = counts.items()
        warnings.warn(
            "single_class_source",
            f"data.source = {data.source!r}: one class ({label}, {files} files) in the {layout} "
            "layout; a classifier needs two or more (is a class folder missing?)",
        )


def _check_left(filtered: list[Rejection], manifest: pd.DataFrame) -> None:
    """Fail in one line when data.dicom leaves out every file."""
    if filtered and manifest.empty:
        counts = ", ".join(f"{kind} {count}" for kind, count in filtered_counts(filtered).items())
        raise PipelineError(
            f"data.dicom leaves out every file ({counts}), e.g. {filtered[0].path}: "
            f"{filtered[0].detail}; widen data.dicom.modalities or data.dicom.views"
        )


def _read_source(
    data: DataParams, paths: ProjectPaths, staging: Path, warnings: DataWarnings, workers: int
) -> Ingested:
    """Copy or extract the source into staging: layout, manifest, rows dropped, files left out."""
    skipped: list[Rejection] = []
    # Identifiers become pseudonyms under the key of the user's checkout (also from .dvc/tmp).
    pseudonyms = Pseudonyms(paths.root)
    if data.source == "synthetic":
        entries = _synthetic(data, staging, workers)
        headers = DicomHeaders(staging, pseudonyms, workers)
        layout, prefix, label_map = "class_folders", "", {}
    else:
        dataset, skipped = _stage_source(data, paths, staging, warnings)
        headers = DicomHeaders(dataset.path, pseudonyms, workers)
        layout, entries = _source_entries(data, dataset, warnings, headers)
        prefix, label_map = dataset.member, data.label_map
    headers.load(entry.path for entry in entries if entry.path)
    headers.warn(warnings)
    entries = apply_group_pattern(entries, data.group_pattern, warnings)
    if not data.group_pattern and not (layout == "csv" and data.csv.group_column):
        # A DICOM file's patient is its group: one patient's images never straddle splits.
        entries = patient_groups(entries, headers)
    manifest, rejected = label_entries(entries, label_map, data.classes, prefix)
    _report_dropped(rejected, paths.ingest_rejected.relative_to(paths.root), warnings)
    manifest = with_dicom_columns(manifest, headers, prefix)
    manifest, filtered = select_dicom(manifest, headers, data.dicom, prefix)
    _check_left(filtered, manifest)
    _check_classes(manifest, data, layout, warnings)
    return Ingested(manifest, layout, rejected, {}, skipped, filtered)


def ingest(
    data: DataParams, paths: ProjectPaths, warnings: DataWarnings | None = None, workers: int = 0
) -> Ingested:
    """Write data.source into data/raw, the manifest and the rows dropped, atomically.

    `workers` processes draw synthetic phantoms (0: one per core, CXR_WORKERS).
    """
    warnings = DataWarnings() if warnings is None else warnings
    # DVC tracks data/downloads as an output, so it exists even when nothing is downloaded.
    paths.downloads_dir.mkdir(parents=True, exist_ok=True)
    with staged_dir(paths.raw_dir) as staging:
        ingested = _read_source(data, paths, staging, warnings, workers)
        write_table(paths.manifest, ingested.manifest)
        # Source files left out first (their paths are inside the source folder), then rows,
        # then the DICOM files data.dicom left out (their paths are inside data/raw).
        left_out = [*ingested.skipped, *ingested.rejected, *ingested.filtered]
        write_table(
            paths.ingest_rejected,
            pd.DataFrame(
                [(rejection.path, str(rejection)) for rejection in left_out],
                columns=list(REJECTED_COLUMNS),
            ),
        )
    return replace(ingested, warnings=warnings.to_metrics())


def ingest_metrics(ingested: Ingested) -> dict[str, Any]:
    """Layout, files per class and given split, groups, rows dropped, files left out, warnings.

    skipped_files: source files not copied into data/raw; filtered_files: DICOM files data.dicom
    left out of the manifest.
    """
    manifest = ingested.manifest
    per_split = {
        str(split): label_counts(rows["label"])
        for split, rows in manifest.groupby("given_split")
        if split
    }
    return {
        "layout": ingested.layout,
        "files": len(manifest),
        "classes": ingested.counts,
        "given_splits": per_split,
        "groups": int(manifest.loc[manifest["group"] != "", "group"].nunique()),
        "dropped_rows": ingested.dropped,
        "skipped_files": ingested.skipped_files,
        "filtered_files": ingested.filtered_files,
        "warnings": ingested.warnings,
    }
