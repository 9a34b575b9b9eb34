"""Stage train: fit one model (params `model`) on the train split, recorded as an MLflow run.

A Keras backbone trains in one phase from scratch, or frozen then fine-tuned when pretrained
(cxr/training/keras_fit.py); a scikit-learn baseline is fitted on flattened downscaled pixels
(cxr/training/sklearn_fit.py). Writes models/ (model file and run record), the epoch history
metrics/train.json (its headline: TRAIN_HEADLINE) and metrics/summary/train.json (everything).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cxr.core.errors import report_errors
from cxr.core.outputs import write_results
from cxr.core.params import load_params, run_settings
from cxr.core.paths import paths_from_argv
from cxr.training.devices import avoid_empty_replica_batches

# The DVC metrics of train: `dvc metrics show` and `dvc exp show` print one column per key.
TRAIN_HEADLINE = ("best_val_accuracy", "epochs_run", "train_seconds")


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the train stage from the repository root."""
    avoid_empty_replica_batches(os.environ)
    # Imported here, after the line above, which must run before TensorFlow loads.
    from cxr.training.run import train_model

    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    metrics = train_model(params, run_settings(os.environ), paths, dict(os.environ))
    if metrics is None:  # another process of the run (CXR_PROCESS_ID > 0): process 0 writes
        return 0
    results = {"model": params.model, **metrics}
    write_results(paths.summary("train"), paths.metrics("train"), results, TRAIN_HEADLINE)
    # A scikit-learn baseline is fitted once: it has no epochs to count.
    epochs = metrics["epochs_run"]
    fitted = f"in {epochs} epochs" if epochs else f"in one fit ({metrics['train_seconds']:.1f} s)"
    print(
        f"train: {params.model} best val accuracy {metrics['best_val_accuracy']:.3f} "
        f"{fitted} -> {paths.models_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
