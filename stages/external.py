"""Stage external@NAME: score the trained model on another source, evaluate.external.NAME.

The dataset is ingested and decoded with the training data's own code into
data/external/NAME/ (cxr/external/validation.py), scored on the classes it shares with the
model, compared with the internal test figures, and checked for a source shortcut. Writes
metrics/external/NAME.json and reports/external/NAME/, and logs to the model's MLflow run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cxr.core.errors import report_errors
from cxr.core.params import load_params, run_settings
from cxr.core.paths import external_paths_from_argv
from cxr.external.reports import external_summary
from cxr.external.validation import evaluate_external


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the external stage for one dataset from the repository root."""
    paths = external_paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    metrics = evaluate_external(params, run_settings(os.environ), paths, dict(os.environ))
    print("\n".join(external_summary(metrics)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
