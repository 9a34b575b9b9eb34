"""data.dicom.modalities and data.dicom.views: DICOM files left out, counted and listed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from dicom_header_fixtures import dicom_file
from ingest_fixtures import touch

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.ingestion.ingest import ingest
from stages.ingest import main


def _source(root: Path) -> Path:
    """Radiographs PA, AP, lateral and without a view, a CT slice, and a PNG, in two classes."""
    source = root / "source"
    dicom_file(source / "covid" / "IM1", patient_id="P1", view="PA")
    dicom_file(source / "covid" / "IM2", patient_id="P2", view="AP", modality="CR")
    dicom_file(source / "covid" / "IM3", patient_id="P3", view="LL")
    dicom_file(source / "normal" / "IM4", patient_id="P4", view="PA")
    dicom_file(source / "normal" / "IM5", patient_id="P5", view="", modality="DX")
    dicom_file(source / "normal" / "IM6", patient_id="P6", view="PA", modality="CT")
    touch(source / "normal" / "photo.png")
    return source


def _run(root: Path, params: dict[str, Any], source: Path, **dicom: list[str]) -> int:
    params["data"]["source"] = str(source)
    params["data"]["dicom"].update(dicom)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return main(["--root", str(root)])


def test_filters_leave_files_out_counted_and_listed_per_reason(
    tmp_path: Path, small_params_dict: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given radiographs of several views, a CT slice and a PNG
    source = _source(tmp_path)
    repo = tmp_path / "repo"

    # When ingest keeps DX and CR files with a PA or AP view
    status = _run(repo, small_params_dict, source, modalities=["DX", "CR"], views=["PA", "AP"])

    # Then the others are left out of the manifest; the PNG has no header to filter on
    paths = ProjectPaths(repo)
    assert status == 0
    manifest = pd.read_parquet(paths.manifest)
    assert manifest["path"].tolist() == ["covid/IM1", "covid/IM2", "normal/IM4", "normal/photo.png"]
    # and counted per reason in the summary, listed with the reason in ingest_rejected.csv
    metrics = json.loads(paths.summary("ingest").read_text(encoding="utf-8"))
    assert metrics["filtered_files"] == {"modality_not_selected": 1, "view_not_selected": 2}
    assert metrics["files"] == 4 and metrics["dropped_rows"] == {}
    rejected = pd.read_csv(paths.ingest_rejected, keep_default_na=False)
    assert dict(zip(rejected["path"], rejected["reason"], strict=True)) == {
        "covid/IM3": "view_not_selected: ViewPosition 'LL' not in data.dicom.views [PA, AP]",
        "normal/IM5": "view_not_selected: ViewPosition blank not in data.dicom.views [PA, AP]",
        "normal/IM6": "modality_not_selected: Modality 'CT' not in data.dicom.modalities [DX, CR]",
    }
    assert "3 DICOM files left out by data.dicom" in capsys.readouterr().out


def test_empty_filters_keep_every_file(tmp_path: Path, small_params_dict: dict[str, Any]) -> None:
    source = _source(tmp_path)
    assert _run(tmp_path / "repo", small_params_dict, source) == 0
    paths = ProjectPaths(tmp_path / "repo")
    assert len(pd.read_parquet(paths.manifest)) == 7
    assert json.loads(paths.summary("ingest").read_text())["filtered_files"] == {}


def test_a_filter_leaving_nothing_is_a_one_line_error(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    source = tmp_path / "source"
    dicom_file(source / "covid" / "IM1", modality="CT")
    dicom_file(source / "normal" / "IM2", modality="CT")
    small_params_dict["data"].update(source=str(source), dicom={"modalities": ["DX"], "views": []})
    with pytest.raises(PipelineError, match=r"data.dicom leaves out every file \(modality_not"):
        ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "repo"))


@pytest.mark.parametrize(
    ("dicom", "message"),
    [
        ({"views": ["pa"]}, "data.dicom.views = \\['pa'\\]: 'pa' is not a DICOM code string"),
        ({"modalities": ["DX", "DX"]}, "data.dicom.modalities = .*names a code twice"),
        ({"modality": ["DX"]}, "data.dicom.modality"),
    ],
)
def test_bad_filters_are_one_line_errors_naming_the_key(
    small_params_dict: dict[str, Any], dicom: dict[str, list[str]], message: str
) -> None:
    small_params_dict["data"]["dicom"].update(dicom)
    with pytest.raises(ParamsError, match=message):
        parse_params(small_params_dict)
