"""Stage split: leakage-safe train / val / test; copies, groups and near-duplicates stay together.

Units of images that must not be separated (see cxr.data.splitting) are assigned to splits;
the three tables go to data/processed, their counts and the duplicates found to the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxr.core.errors import report_errors
from cxr.core.outputs import staged_dir, write_json, write_table
from cxr.core.params import SplitParams, load_params
from cxr.core.paths import ProjectPaths, paths_from_argv
from cxr.core.tables import read_table
from cxr.data.splitting import split_counts, split_with_report


def run_split(split: SplitParams, seed: int, paths: ProjectPaths) -> dict[str, pd.DataFrame]:
    """Write the three split tables, their counts and the duplicates found."""
    tables, found = split_with_report(read_table(paths.images_table), split, seed)
    with staged_dir(paths.split_dir) as staging:
        for name, table in tables.items():
            write_table(staging / paths.split_table(name).name, table)
    write_json(paths.metrics("split"), {**split_counts(tables), "duplicates": found})
    return tables


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the split stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    tables = run_split(params.split, params.seed, paths)
    sizes = ", ".join(f"{name} {len(table)}" for name, table in tables.items())
    print(f"split: {sizes} -> {paths.split_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
