"""Stage split: leakage-safe train / val / test; copies, groups and near-duplicates stay together.

Units of images that must not be separated (see cxr.splitting.splits) are assigned to splits;
the three tables go to data/processed, with cv_design.json (which K-fold design and fold they
are, for train's run tags and compare's pooled leaderboard); their counts, the duplicates found
and the warnings (a line each on stderr: classes missing or thin in a split, heavy
undersampling, large units) to its summary (metrics/summary/split.json).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxr.core.errors import report_errors
from cxr.core.outputs import staged_dir, write_json, write_table
from cxr.core.params import SplitParams, load_params
from cxr.core.paths import ProjectPaths, paths_from_argv
from cxr.core.tables import fold_design_json, read_table
from cxr.core.warnings import DataWarnings
from cxr.splitting.splits import split_counts, split_with_report


def run_split(
    split: SplitParams, seed: int, paths: ProjectPaths, warnings: DataWarnings
) -> dict[str, pd.DataFrame]:
    """Write the three split tables, their counts, the duplicates found and the warnings."""
    images = read_table(paths.images_table)
    tables, found, design = split_with_report(images, split, seed, warnings)
    with staged_dir(paths.split_dir) as staging:
        for name, table in tables.items():
            write_table(staging / paths.split_table(name).name, table)
        write_json(
            staging / paths.fold_design.name, fold_design_json(design, split.folds, split.fold)
        )
    metrics = {**split_counts(tables), "duplicates": found, "warnings": warnings.to_metrics()}
    write_json(paths.summary("split"), metrics)
    return tables


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the split stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    warnings = DataWarnings()
    tables = run_split(params.split, params.seed, paths, warnings)
    sizes = ", ".join(f"{name} {len(table)}" for name, table in tables.items())
    warned = sum(warnings.to_metrics().values())
    print(f"split: {sizes} -> {paths.split_dir}" + (f" ({warned} warning(s))" if warned else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
