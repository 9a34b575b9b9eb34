"""The pre-training record (cxr/models/pretrain_record.py): pretrained/pretrain.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.core.errors import PipelineError
from cxr.core.paths import ENCODER_WEIGHTS_FILE, PRETRAIN_RECORD_FILE
from cxr.models.pretrain_record import (
    PretrainRecord,
    pretrained_encoder,
    read_pretrain_record,
    skip_reason,
    write_pretrain_record,
)

RECORD = PretrainRecord(
    enabled=True,
    model="compact_cnn",
    image_size=32,
    positives="group",
    images={"train": 24, "val": 9, "extra:unlabelled": 5},
    group_pairs=12,
    epochs_run=2,
    final_loss=1.5,
    loss_per_epoch=(2.0, 1.5),
    data_fingerprint="abc",
    mlflow_run_id="run1",
)


def stale_message(
    folder: Path, model: str = "compact_cnn", image_size: int = 32, fingerprint: str = "abc"
) -> str:
    """The one-line error pretrained_encoder gives for train's model, size and data."""
    with pytest.raises(PipelineError) as error:
        pretrained_encoder(folder, model, image_size, fingerprint)
    message = str(error.value)
    assert "\n" not in message and message.endswith("run `dvc repro pretrain`")
    return message


def test_a_record_round_trips_and_an_off_one_holds_only_enabled(tmp_path: Path) -> None:
    write_pretrain_record(tmp_path / "on", RECORD)
    assert read_pretrain_record(tmp_path / "on") == RECORD
    off = tmp_path / "off"
    write_pretrain_record(
        off, PretrainRecord(enabled=False, reason=skip_reason(False, "vgg16") or "")
    )
    assert json.loads((off / PRETRAIN_RECORD_FILE).read_text()) == {"enabled": False}
    # a baseline is never pre-trained, and says why
    assert "baseline" in str(skip_reason(True, "pixel_logreg"))
    assert skip_reason(True, "compact_cnn") is None


def test_the_encoder_of_the_same_model_size_and_split_is_given(tmp_path: Path) -> None:
    write_pretrain_record(tmp_path, RECORD)
    (tmp_path / ENCODER_WEIGHTS_FILE).write_bytes(b"weights")
    encoder = pretrained_encoder(tmp_path, "compact_cnn", 32, "abc")
    assert encoder.weights == tmp_path / ENCODER_WEIGHTS_FILE and encoder.run_id == "run1"


def test_a_stale_or_missing_pretraining_is_refused_in_one_line(tmp_path: Path) -> None:
    # given no record, then train is told to run the stage
    assert "pretrain.json: missing" in stale_message(tmp_path)
    # given a record of another size, model or split, then it names what differs
    write_pretrain_record(tmp_path, RECORD)
    (tmp_path / ENCODER_WEIGHTS_FILE).write_bytes(b"weights")
    assert "image_size 32 (train: 64)" in stale_message(tmp_path, image_size=64)
    assert "model 'compact_cnn' (train: 'resnet18')" in stale_message(tmp_path, model="resnet18")
    assert "data_fingerprint 'abc' (train: 'def')" in stale_message(tmp_path, fingerprint="def")
    # given a record of a pre-training that did not run
    write_pretrain_record(tmp_path, PretrainRecord(enabled=False))
    assert "no pre-training (off) while pretrain.enabled is true" in stale_message(tmp_path)
    # given something else in its place
    (tmp_path / PRETRAIN_RECORD_FILE).write_text("[1, 2]")
    assert "not a pre-training record" in stale_message(tmp_path)
