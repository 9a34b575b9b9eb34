"""The csv layout (cxr/ingestion/metadata.py) through ingest: templates, encodings, rows."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ingest_fixtures import touch

from cxr.core.errors import PipelineError
from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.tables import REJECTED_COLUMNS
from cxr.core.warnings import DataWarnings
from cxr.ingestion.ingest import Ingested, ingest, ingest_metrics
from cxr.ingestion.metadata import FileIndex, fill_template


def _ingest(
    tmp_path: Path, params: dict[str, Any], source: Path | str, **csv: Any
) -> tuple[Ingested, DataWarnings]:
    """Ingest `source` as a csv layout with the repository's csv params updated by `csv`."""
    params["data"]["source"] = str(source)
    params["data"]["csv"].update({"file": "metadata.csv", "label_column": "finding", **csv})
    warnings = DataWarnings()
    return ingest(parse_params(params).data, ProjectPaths(tmp_path / "repo"), warnings), warnings


def _table(source: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> None:
    """metadata.csv with columns patientid, finding and offset (a Latin-1 degree sign)."""
    source.mkdir(parents=True, exist_ok=True)
    lines = ["patientid,finding,offset"] + [f"{pid},{finding},5°" for pid, finding in rows]
    (source / "metadata.csv").write_bytes(("\n".join(lines) + "\n").encode(encoding))


def _rejected(tmp_path: Path) -> pd.DataFrame:
    return pd.read_csv(ProjectPaths(tmp_path / "repo").ingest_rejected, keep_default_na=False)


def test_file_template_finds_each_rows_image_and_rejects_the_rest(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a table without a file column and images/<patientid>.jpg or .png; P3 has both
    # spellings, P4 none, P5 a blank id
    source = tmp_path / "source"
    for name in ("P1.jpg", "P2.png", "P3.jpg", "P3.png", "P10.png", "P6 [x].png"):
        touch(source / "images" / name)
    rows = [("P1", "COVID-19"), ("P2", "No Finding"), ("P3", "COVID-19"), ("P4", "Normal")]
    _table(source, [*rows, ("", "Normal"), ("P6 [x]", "Normal")])

    # When it is ingested with a template
    ingested, warnings = _ingest(
        tmp_path, small_params_dict, source, file_template="images/{patientid}.*"
    )

    # Then rows with exactly one file are in the manifest (P1 does not match P10.png)
    assert dict(zip(ingested.manifest["path"], ingested.manifest["label"], strict=True)) == {
        "images/P1.jpg": "covid",
        "images/P2.png": "normal",
        "images/P6 [x].png": "normal",
    }
    # and the other rows are listed with their row number, reason and what was looked for
    rejected = _rejected(tmp_path)
    assert tuple(rejected.columns) == REJECTED_COLUMNS
    assert rejected.to_dict("records") == [
        {
            "path": "metadata.csv:4",
            "reason": "several_file_matches: 2 files match images/P3.*: images/P3.jpg, "
            "images/P3.png",
        },
        {"path": "metadata.csv:5", "reason": "no_file_match: no file matches images/P4.*"},
        {"path": "metadata.csv:6", "reason": "no_file_match: column 'patientid' is blank"},
    ]
    # and counted by reason, with one warning line per reason
    metrics = ingest_metrics(ingested)
    assert metrics["dropped_rows"] == {"no_file_match": 2, "several_file_matches": 1}
    assert metrics["warnings"] == {"no_file_match": 1, "several_file_matches": 1}
    assert any("images/P4.*" in line for line in warnings.messages)


def test_file_template_is_relative_to_images_dir_and_reads_several_columns(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given images/<patientid>/<view>.png and a table naming patient and view
    source = tmp_path / "source"
    touch(source / "images" / "p1" / "PA.png")
    touch(source / "images" / "p2" / "AP.png")
    (source / "metadata.csv").write_text(
        "patientid,view,finding\np1,PA,covid\np2,AP,normal\n", encoding="utf-8"
    )

    # When the template names two columns under images_dir
    ingested, _ = _ingest(
        tmp_path,
        small_params_dict,
        source,
        file_template="{patientid}/{view}.png",
        images_dir="images",
    )

    # Then each row found its file
    assert list(ingested.manifest["path"]) == ["images/p1/PA.png", "images/p2/AP.png"]


def test_file_index_matches_one_folder_listing_with_escaped_values(tmp_path: Path) -> None:
    # Given files whose names hold glob characters
    for name in ("a[1].png", "a1.png", "a[1].jpg", "b.png"):
        touch(tmp_path / "images" / name)
    index = FileIndex(tmp_path)

    # When a template value holding [ ] is filled in, then it matches literally
    pattern, shown = fill_template("images/{id}.*", {"id": "a[1]"})
    assert shown == "images/a[1].*"
    assert index.matches(pattern) == ["images/a[1].jpg", "images/a[1].png"]
    assert index.matches("images/b.*") == ["images/b.png"]
    assert index.matches("*/b.png") == ["images/b.png"]
    assert index.matches("missing/b.*") == []


def test_latin1_table_is_read_with_a_warning_naming_the_users_file(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a table saved in Latin-1 (a degree sign is not UTF-8)
    source = tmp_path / "source"
    for name in ("P1.png", "P2.png"):
        touch(source / name)
    _table(source, [("P1", "Normal"), ("P2", "Covid")], encoding="latin-1")

    # When it is ingested with encoding auto
    ingested, warnings = _ingest(
        tmp_path, small_params_dict, source, file_template="{patientid}.png"
    )

    # Then it is read, with one warning that names the user's table and the encoding used
    assert ingested.counts == {"covid": 1, "normal": 1}
    assert warnings.messages == [
        f"{source / 'metadata.csv'}: not UTF-8, read as cp1252 (set data.csv.encoding to choose)"
    ]
    assert ingest_metrics(ingested)["warnings"] == {"table_encoding": 1}


def test_utf8_table_with_a_byte_order_mark_needs_no_warning(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a UTF-8 table with a byte-order mark, as Excel writes "CSV UTF-8"
    source = tmp_path / "source"
    touch(source / "P1.png")
    touch(source / "P2.png")
    _table(source, [("P1", "Normal"), ("P2", "Covid")], encoding="utf-8-sig")

    # When it is ingested, then the first column is found by its name and nothing is warned
    ingested, warnings = _ingest(
        tmp_path, small_params_dict, source, file_template="{patientid}.png"
    )
    assert ingested.counts == {"covid": 1, "normal": 1}
    assert warnings.messages == []


@pytest.mark.parametrize(
    ("content", "csv", "message"),
    [
        (
            "patientid,finding,offset\nP1,Normal,5\xb0\n".encode("latin-1"),
            {"encoding": "utf-8"},
            "data.csv.encoding = 'utf-8': {table} is not utf-8 (invalid start byte at byte 36)",
        ),
        (b'patientid,finding\n"P1,Normal\n', {}, "{table}: not a readable CSV table ("),
        (
            b"patientid,finding\nP1,Normal\n",
            {"label_column": "label"},
            "no column 'label' in {table}",
        ),
    ],
)
def test_table_errors_name_the_users_file_not_the_staging_copy(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    content: bytes,
    csv: dict[str, str],
    message: str,
) -> None:
    # Given a source folder whose table is unreadable or lacks a column
    source = tmp_path / "source"
    touch(source / "P1.png")
    (source / "metadata.csv").write_bytes(content)

    # When it is ingested
    with pytest.raises(PipelineError) as error:
        _ingest(tmp_path, small_params_dict, source, file_template="{patientid}.png", **csv)

    # Then the one-line error names the table as the user knows it
    text = str(error.value)
    assert message.format(table=source / "metadata.csv") in text
    assert ".raw." not in text
    assert "\n" not in text


def test_table_in_an_archive_is_named_archive_colon_member(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a zip with a wrapper folder whose table is not UTF-8 and is read as utf-8
    archive = tmp_path / "scans.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("scans/P1.png", b"png")
        bundle.writestr("scans/metadata.csv", "patientid,finding\nP1,Nórmal\n".encode("latin-1"))

    # When it is ingested, then the error names <archive>:<member>
    with pytest.raises(PipelineError, match="is not utf-8") as error:
        _ingest(
            tmp_path, small_params_dict, archive, file_template="{patientid}.png", encoding="utf-8"
        )
    assert f"{archive}:scans/metadata.csv is not utf-8" in str(error.value)


def test_file_column_rows_without_a_file_are_dropped_not_fatal(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a table with a file column where one file is missing and one name is blank
    source = tmp_path / "source"
    touch(source / "images" / "a.png")
    touch(source / "images" / "b.png")
    (source / "metadata.csv").write_text(
        "filename,finding\na.png,covid\nb.png,normal\ngone.png,covid\n,normal\n", encoding="utf-8"
    )

    # When it is ingested
    ingested, _ = _ingest(
        tmp_path, small_params_dict, source, file_column="filename", images_dir="images"
    )

    # Then the two files are in the manifest and the two rows are listed with the reason
    assert list(ingested.manifest["path"]) == ["images/a.png", "images/b.png"]
    assert _rejected(tmp_path).to_dict("records") == [
        {"path": "metadata.csv:4", "reason": "missing_file: no file images/gone.png"},
        {"path": "metadata.csv:5", "reason": "missing_file: column 'filename' is blank"},
    ]
    assert ingested.dropped == {"missing_file": 2}


def test_blank_labels_are_dropped_with_a_warning_and_counted(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a table with two blank labels (one only spaces) and one short row
    source = tmp_path / "source"
    for name in ("P1", "P2", "P3", "P4", "P5"):
        touch(source / f"{name}.png")
    (source / "metadata.csv").write_text(
        "patientid,finding,offset\nP1,covid,1\nP2,,1\nP3,  ,1\nP4,normal,1\nP5\n",
        encoding="utf-8",
    )

    # When it is ingested
    ingested, warnings = _ingest(
        tmp_path, small_params_dict, source, file_template="{patientid}.png"
    )

    # Then the blank rows are dropped, listed and counted, with one warning saying how to keep them
    assert ingested.counts == {"covid": 1, "normal": 1}
    assert _rejected(tmp_path)["path"].tolist() == [
        "metadata.csv:3",
        "metadata.csv:4",
        "metadata.csv:6",
    ]
    assert set(_rejected(tmp_path)["reason"]) == {
        "blank_label: no label (file P2.png)",
        "blank_label: no label (file P3.png)",
        "blank_label: no label (file P5.png)",
    }
    assert ingest_metrics(ingested)["dropped_rows"] == {"blank_label": 3}
    assert ingest_metrics(ingested)["warnings"] == {"blank_label": 1}
    assert "-S ++data.label_map._blank_=<class>" in warnings.messages[0]


@pytest.mark.parametrize("key", ["_blank_", ""])
def test_label_map_can_name_the_blank_label(
    tmp_path: Path, small_params_dict: dict[str, Any], key: str
) -> None:
    # Given a table with a blank label
    source = tmp_path / "source"
    for name in ("P1", "P2", "P3"):
        touch(source / f"{name}.png")
    _table(source, [("P1", "covid"), ("P2", ""), ("P3", "normal")])

    # When label_map maps the blank label (as _blank_, or '' in params.yaml)
    small_params_dict["data"]["label_map"] = {key: "Healthy"}
    ingested, _ = _ingest(tmp_path, small_params_dict, source, file_template="{patientid}.png")

    # Then the row is kept under that class (canonical: healthy is normal) and nothing is dropped
    assert ingested.counts == {"covid": 1, "normal": 2}
    assert ingested.dropped == {}


def test_data_classes_filter_before_the_unnamed_label_check(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a table with classes covid and normal and rows labelled 0 (no class name)
    source = tmp_path / "source"
    for name in ("P1", "P2", "P3"):
        touch(source / f"{name}.png")
    _table(source, [("P1", "covid"), ("P2", "normal"), ("P3", "0"), ("P4", "0")])

    # When only covid and normal are kept
    small_params_dict["data"]["classes"] = ["covid", "normal"]
    ingested, _ = _ingest(tmp_path, small_params_dict, source, file_template="{patientid}.png")

    # Then the unnamed rows are filtered out (P4's missing file is not reported either)
    assert ingested.counts == {"covid": 1, "normal": 1}
    assert ingested.dropped == {}

    # and without data.classes the unnamed label stops ingest with the -S syntax to name it
    small_params_dict["data"]["classes"] = []
    with pytest.raises(PipelineError, match=r"-S \+\+data.label_map.0=<class>"):
        _ingest(tmp_path, small_params_dict, source, file_template="{patientid}.png")
