"""Tests for the typed run record (cxr/models/run_record.py): models/run.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cxr.core.errors import PipelineError
from cxr.models.run_record import RunRecord, read_run_record, write_run_record

RECORD = RunRecord(
    run_id="abc",
    experiment_id="1",
    class_names=("covid", "normal"),
    model="vgg16",
    kind="keras",
    image_size=64,
    cache_size=256,
    resize="pad",
    data_fingerprint="0123456789abcdef",
)


def test_a_record_round_trips_through_run_json(tmp_path: Path) -> None:
    # when a record is written and read back
    path = write_run_record(tmp_path, RECORD)
    # then it is the same record, stored as plain JSON beside the model file it names
    assert path == tmp_path / "run.json"
    assert read_run_record(tmp_path) == RECORD
    assert json.loads(path.read_text())["model"] == "vgg16"
    assert RECORD.model_file == "model.keras"
    assert RECORD.to_json()["class_names"] == ["covid", "normal"]


def test_a_record_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    # given run.json as written before `model` replaced `backbone` and before the pixel cache
    legacy = {
        "run_id": "abc",
        "experiment_id": "1",
        "class_names": ["covid", "normal"],
        "backbone": "pixel_logreg",
        "kind": "sklearn",
        "image_size": 32,
    }
    (tmp_path / "run.json").write_text(json.dumps(legacy))
    # when it is read
    record = read_run_record(tmp_path)
    # then the old names map to the new fields and the cache side defaults to the input side
    assert record.model == "pixel_logreg" and record.kind == "sklearn"
    assert record.cache_size == 32 and record.model_file == "model.joblib"
    assert record.resize == "stretch"  # every image was stretched before build.resize


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "run.json: missing; run the train stage first"),
        ("{", "run.json: not valid JSON"),
        ('{"run_id": "a", "class_names": []}', "run.json: run record without 'image_size'"),
        ('{"kind": "torch"}', "run.json: kind = 'torch'; must be one of keras, sklearn"),
    ],
)
def test_a_bad_record_is_one_line_naming_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    # given a missing, broken, incomplete or foreign run.json
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    # when it is read, then one line names the file and what is wrong
    with pytest.raises(PipelineError) as raised:
        read_run_record(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path}/{message}")
    assert "\n" not in str(raised.value)


def test_the_dicom_window_is_recorded_and_old_records_read_as_auto(tmp_path: Path) -> None:
    # Given a record of a model trained on DICOM shown through [centre, width]
    windowed = dataclasses.replace(RECORD, dicom_window=(40.0, 400.0))
    # When it is written and read, then the window comes back, as [centre, width] in JSON
    path = write_run_record(tmp_path, windowed)
    assert json.loads(path.read_text())["dicom_window"] == [40.0, 400.0]
    assert read_run_record(tmp_path).dicom_window == (40.0, 400.0)
    # and a record written before build.dicom.window existed reads as auto
    legacy = {key: value for key, value in windowed.to_json().items() if key != "dicom_window"}
    path.write_text(json.dumps(legacy))
    assert read_run_record(tmp_path).dicom_window == "auto"


def test_a_bad_dicom_window_in_a_record_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({**RECORD.to_json(), "dicom_window": "bone"}))
    with pytest.raises(PipelineError) as raised:
        read_run_record(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path}/run.json: dicom_window = 'bone': must be")
    assert "\n" not in str(raised.value)
