"""Stage pretrain: self-supervised pre-training of the backbone on unlabelled images (optional).

With pretrain.enabled, the backbone of `model` learns from the images alone, labels unused
(SimCLR-style contrastive learning; two images of one patient or group as the positive pair
where groups exist, as in MICLe): cxr/training/pretraining.py. It writes pretrained/ (the
backbone's weights, encoder.weights.h5, and pretrain.json) and an MLflow run in the experiment
<mlflow_experiment>-pretrain; train then starts from those weights. Off (the default), or for a
scikit-learn baseline, it writes only pretrained/pretrain.json saying so, without loading Keras.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cxr.core.errors import report_errors
from cxr.core.outputs import staged_dir
from cxr.core.params import load_params, run_settings
from cxr.core.paths import paths_from_argv
from cxr.models.pretrain_record import PretrainRecord, skip_reason, write_pretrain_record


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the pretrain stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    reason = skip_reason(params.pretrain.enabled, params.model)
    if reason is not None:
        with staged_dir(paths.pretrained_dir) as staging:
            write_pretrain_record(staging, PretrainRecord(enabled=False, reason=reason))
        print(f"pretrain: off ({reason or 'pretrain.enabled: false'}) -> {paths.pretrained_dir}")
        return 0
    from cxr.training.devices import avoid_empty_replica_batches

    avoid_empty_replica_batches(os.environ)
    # Imported here, after the line above, which must run before TensorFlow loads.
    from cxr.training.pretraining import pretrain_backbone

    record = pretrain_backbone(params, run_settings(os.environ), paths, dict(os.environ))
    images = ", ".join(f"{count} {source}" for source, count in record.images.items())
    loss = "n/a" if record.final_loss is None else f"{record.final_loss:.4f}"
    print(
        f"pretrain: {params.model} on {images} images, {record.epochs_run} epochs, "
        f"final loss {loss} in {record.seconds:.1f} s -> {paths.pretrained_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
