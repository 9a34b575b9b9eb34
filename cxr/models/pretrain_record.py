"""pretrained/pretrain.json: what the pretrain stage did, and the encoder train starts from.

Written and read only through this module. It imports no Keras, so the pretrain stage writes
the record of a pre-training that is off without loading TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.core.errors import PipelineError
from cxr.core.outputs import read_json_record, write_json
from cxr.core.paths import ENCODER_WEIGHTS_FILE, PRETRAIN_RECORD_FILE
from cxr.core.registry import is_baseline

# How train's MLflow run says where its backbone's weights came from (tag backbone_init).
SELF_SUPERVISED = "self_supervised"


@dataclass(frozen=True)
class PretrainRecord:
    """One pre-training: its encoder's model and size, the images it saw and how it went."""

    enabled: bool
    reason: str = ""  # why it did not run (enabled false)
    model: str = ""
    image_size: int = 0
    positives: str = ""  # pretrain.positives
    images: dict[str, int] = field(default_factory=dict)  # images used per source
    group_pairs: int = 0  # images whose positive was another image of their group
    epochs_run: int = 0
    final_loss: float | None = None
    loss_per_epoch: tuple[float | None, ...] = ()
    data_fingerprint: str = ""  # the split tables' (cxr.core.tables.data_fingerprint)
    extra_fingerprint: str = ""  # the extra folders' files and contents; '' without any
    seconds: float = 0.0
    mlflow_run_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The record as JSON values: only enabled (and the reason) when it did not run."""
        if not self.enabled:
            return {"enabled": False, **({"reason": self.reason} if self.reason else {})}
        return {**asdict(self), "loss_per_epoch": list(self.loss_per_epoch)}

    @classmethod
    def from_json(cls, payload: Any, source: str) -> PretrainRecord:
        """Parse a record pretrain wrote; anything else is a one-line error."""
        if not isinstance(payload, dict) or not isinstance(payload.get("enabled"), bool):
            raise PipelineError(f"{source}: not a pre-training record; run `dvc repro pretrain`")
        known = {name: payload[name] for name in cls.__dataclass_fields__ if name in payload}
        known["loss_per_epoch"] = tuple(known.get("loss_per_epoch", ()))
        return cls(**known)


def skip_reason(enabled: bool, model: str) -> str | None:
    """Why the pretrain stage does not pre-train `model` ('' when off); None when it does."""
    if not enabled:
        return ""
    if is_baseline(model):
        return f"model {model} is a scikit-learn baseline: it has no backbone to pre-train"
    return None


def write_pretrain_record(pretrained_dir: Path, record: PretrainRecord) -> Path:
    """Write `record` as <pretrained_dir>/pretrain.json, atomically; return its path."""
    path = pretrained_dir / PRETRAIN_RECORD_FILE
    write_json(path, record.to_json())
    return path


def read_pretrain_record(pretrained_dir: Path) -> PretrainRecord:
    """The record the pretrain stage wrote in `pretrained_dir`."""
    path = pretrained_dir / PRETRAIN_RECORD_FILE
    remedy = "run `dvc repro pretrain`"
    return PretrainRecord.from_json(read_json_record(path, remedy, remedy), str(path))


@dataclass(frozen=True)
class PretrainedEncoder:
    """The backbone weights a pre-training left, and its MLflow run."""

    weights: Path
    run_id: str


def pretrained_encoder(
    pretrained_dir: Path, model: str, image_size: int, data_fingerprint: str
) -> PretrainedEncoder:
    """The encoder pre-trained for `model` at `image_size` on this split; one line if stale.

    Called by train when pretrain.enabled: a record of another model, size or split (left by a
    run outside DVC, which re-runs pretrain whenever one of them changes) is refused.
    """
    path = pretrained_dir / PRETRAIN_RECORD_FILE
    record = read_pretrain_record(pretrained_dir)
    if not record.enabled:
        raise PipelineError(
            f"{path}: no pre-training ({record.reason or 'off'}) while pretrain.enabled is "
            "true; run `dvc repro pretrain`"
        )
    wanted = {"model": model, "image_size": image_size, "data_fingerprint": data_fingerprint}
    found = {name: getattr(record, name) for name in wanted}
    if found != wanted:
        differ = ", ".join(
            f"{name} {found[name]!r} (train: {wanted[name]!r})"
            for name in wanted
            if found[name] != wanted[name]
        )
        raise PipelineError(f"{path}: pre-trained for another {differ}; run `dvc repro pretrain`")
    weights = pretrained_dir / ENCODER_WEIGHTS_FILE
    if not weights.is_file():
        raise PipelineError(f"{weights}: missing; run `dvc repro pretrain`")
    return PretrainedEncoder(weights, record.mlflow_run_id)
