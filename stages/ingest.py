"""Stage ingest: copy data.source into data/raw as it is and list its files in a manifest.

Table rows it cannot use go to data/interim/ingest_rejected.csv; warnings and rows dropped
are counted in metrics/summary/ingest.json.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cxr.core.errors import report_errors
from cxr.core.outputs import write_json
from cxr.core.params import load_params, run_settings
from cxr.core.paths import paths_from_argv
from cxr.ingestion.ingest import ingest, ingest_metrics


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ingest stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    ingested = ingest(params.data, paths, workers=run_settings(os.environ).workers)
    metrics = ingest_metrics(ingested)
    write_json(paths.summary("ingest"), metrics)
    counts = ingested.counts
    print(
        f"ingest: {sum(counts.values())} files in {len(counts)} classes "
        f"({ingested.layout} layout) -> {paths.raw_dir}"
    )
    for label, count in counts.items():
        splits = ", ".join(
            f"{split} {per_class.get(label, 0)}"
            for split, per_class in metrics["given_splits"].items()
        )
        print(f"  {label}: {count}" + (f" ({splits})" if splits else ""))
    if metrics["groups"]:
        print(f"  {metrics['groups']} groups (kept whole by split)")
    dropped = metrics["dropped_rows"]
    if dropped:
        reasons = ", ".join(f"{reason} {count}" for reason, count in dropped.items())
        print(
            f"  {sum(dropped.values())} table rows dropped ({reasons}) -> {paths.ingest_rejected}"
        )
    filtered = metrics["filtered_files"]
    if filtered:
        reasons = ", ".join(f"{reason} {count}" for reason, count in filtered.items())
        print(f"  {sum(filtered.values())} DICOM files left out by data.dicom ({reasons})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
