"""From data.source to data/raw and the manifest: copy or extract it as it is, label its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_dir, write_table
from cxr.core.params import DataParams
from cxr.core.paths import ProjectPaths, workspace_root
from cxr.data.counts import label_counts
from cxr.data.layouts import CsvLayout, Entry, dataset_root, label_entries, list_files
from cxr.data.phantoms import write_phantom_dataset
from cxr.data.sources import copy_tree, extract_archive, resolve_source


@dataclass(frozen=True)
class Ingested:
    """What ingest wrote: the manifest rows and the layout it read them with."""

    manifest: pd.DataFrame
    layout: str

    @property
    def counts(self) -> dict[str, int]:
        """Files per canonical class."""
        return label_counts(self.manifest["label"])


def _synthetic(data: DataParams, staging: Path) -> list[Entry]:
    synthetic = data.synthetic
    write_phantom_dataset(
        staging, synthetic.counts, synthetic.image_size, synthetic.difficulty, synthetic.seed
    )
    return [
        Entry(path.relative_to(staging).as_posix(), path.parent.name)
        for path in sorted(staging.glob("*/*.png"))
    ]


def _read_source(data: DataParams, paths: ProjectPaths, staging: Path) -> tuple[str, pd.DataFrame]:
    """Copy or extract the source into staging; return the layout and the manifest."""
    if data.source == "synthetic":
        return "class_folders", label_entries(_synthetic(data, staging), {}, data.classes)
    resolved = resolve_source(
        data.source, data.sha256, workspace_root(paths.root), paths.downloads_dir
    )
    if resolved.is_archive:
        extract_archive(resolved.path, staging)
    else:
        copy_tree(resolved.path, staging)
    root = dataset_root(staging)
    csv = CsvLayout(
        data.csv.file,
        data.csv.file_column,
        data.csv.label_column,
        data.csv.group_column,
        data.csv.images_dir,
    )
    layout: str = "csv" if data.layout == "auto" and data.csv.file else data.layout
    layout, entries = list_files(root, layout, csv)
    prefix = root.relative_to(staging).as_posix()
    manifest = label_entries(entries, data.label_map, data.classes, "" if prefix == "." else prefix)
    classes = manifest["label"].nunique()
    if classes < 2:
        raise PipelineError(
            f"data.source = {data.source!r}: found {classes} class(es) with files in the "
            f"{layout} layout; need at least two (see data.layout in the README)"
        )
    return layout, manifest


def ingest(data: DataParams, paths: ProjectPaths) -> Ingested:
    """Write data.source into data/raw and the manifest, atomically; never touch the source."""
    # DVC tracks data/downloads as an output, so it exists even when nothing is downloaded.
    paths.downloads_dir.mkdir(parents=True, exist_ok=True)
    with staged_dir(paths.raw_dir) as staging:
        layout, manifest = _read_source(data, paths, staging)
        write_table(paths.manifest, manifest)
    return Ingested(manifest, layout)


def ingest_metrics(ingested: Ingested) -> dict[str, Any]:
    """Layout and file counts per class and per given split, for metrics/ingest.json."""
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
    }
