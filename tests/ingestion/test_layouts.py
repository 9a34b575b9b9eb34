"""Tests for layout detection, listing and class names (cxr/ingestion/layouts.py) through ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ingest_fixtures import touch

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.warnings import DataWarnings
from cxr.ingestion.ingest import Ingested, ingest
from cxr.ingestion.layouts import DatasetRoot, dataset_root, detect_layout, list_files


def _ingest(tmp_path: Path, params: dict[str, Any], source: Path, **data: Any) -> Ingested:
    params["data"]["source"] = str(source)
    params["data"]["csv"].update(data.pop("csv", {}))
    params["data"].update(data)
    return ingest(parse_params(params).data, ProjectPaths(tmp_path / "repo"))


def _rows(ingested: Ingested, *columns: str) -> set[tuple[str, ...]]:
    return {tuple(row) for row in ingested.manifest[list(columns)].itertuples(index=False)}


def test_split_folders_in_any_case_keep_their_split(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given train / Validation / TEST folders of class folders in two spellings
    source = tmp_path / "source"
    touch(source / "train" / "Covid" / "1.png")
    touch(source / "train" / "Normal" / "2.jpeg")
    touch(source / "Validation" / "COVID-19" / "3.png")
    touch(source / "Validation" / "NORMAL" / "4.png")
    touch(source / "TEST" / "covid" / "5.jpg")
    touch(source / "TEST" / "normal" / "6.jpg")

    # When it is ingested with layout auto
    ingested = _ingest(tmp_path, small_params_dict, source)

    # Then the layout is split folders and each file keeps its given split and canonical class
    assert ingested.layout == "split_folders"
    assert _rows(ingested, "path", "label", "given_split") == {
        ("train/Covid/1.png", "covid", "train"),
        ("train/Normal/2.jpeg", "normal", "train"),
        ("Validation/COVID-19/3.png", "covid", "val"),
        ("Validation/NORMAL/4.png", "normal", "val"),
        ("TEST/covid/5.jpg", "covid", "test"),
        ("TEST/normal/6.jpg", "normal", "test"),
    }


def test_split_folders_with_a_stray_folder_fail_naming_it(tmp_path: Path) -> None:
    # Given split folders beside a folder that is not a split
    touch(tmp_path / "train" / "covid" / "1.png")
    touch(tmp_path / "extra" / "covid" / "2.png")

    # When its files are listed, then the error names the stray folder
    with pytest.raises(PipelineError, match="extra beside the split folders"):
        list_files(DatasetRoot.local(tmp_path), "auto", DataWarnings())


def test_radiography_database_reads_images_and_skips_masks_and_metadata(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the COVID-19 Radiography Database layout inside an archive-like wrapper folder
    source = tmp_path / "source"
    top = source / "COVID-19_Radiography_Dataset"
    for raw, name in (("COVID", "COVID-1.png"), ("Lung_Opacity", "Lung_Opacity-1.png")):
        touch(top / raw / "images" / name)
        touch(top / raw / "masks" / name)
    touch(top / "Normal" / "images" / "Normal-1.png")
    touch(top / "Normal" / "images" / "Normal-2.png")
    touch(top / "Viral Pneumonia" / "images" / "Viral Pneumonia-1.png")
    touch(top / "COVID.metadata.xlsx", b"PK xlsx")
    touch(top / "Normal.metadata.csv", b"FILE NAME,FORMAT\n")
    touch(top / "README.md.txt", b"readme")

    # When it is ingested
    ingested = _ingest(tmp_path, small_params_dict, source)

    # Then only the images are listed, under canonical classes, with paths from data/raw
    assert ingested.layout == "radiography"
    assert ingested.counts == {"covid": 1, "lung_opacity": 1, "normal": 2, "viral_pneumonia": 1}
    assert "COVID-19_Radiography_Dataset/COVID/images/COVID-1.png" in set(ingested.manifest["path"])
    assert not ingested.manifest["path"].str.contains("masks|metadata|README").any()


def test_binary_folders_need_a_label_map(tmp_path: Path, small_params_dict: dict[str, Any]) -> None:
    # Given folders 0 and 1
    source = tmp_path / "source"
    touch(source / "0" / "a.png")
    touch(source / "1" / "b.png")
    touch(source / "1" / "c.png")

    # When it is ingested without a label map, then the error lists the unnamed labels
    with pytest.raises(PipelineError, match=r"label\(s\) '0', '1' need a class name"):
        _ingest(tmp_path, small_params_dict, source)

    # When it is ingested with one (int keys, as YAML reads `0: normal`)
    ingested = _ingest(
        tmp_path, small_params_dict, source, label_map={0: "Non-COVID", 1: "COVID-19"}
    )

    # Then the folders get the mapped, canonical names
    assert ingested.layout == "binary"
    assert ingested.counts == {"covid": 2, "non_covid": 1}


def test_csv_layout_reads_labels_and_groups_from_the_table(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a metadata table naming files under images/ with a label and a patient column
    source = tmp_path / "source"
    for name in ("p1_a.png", "p1 b.png", "p2_a.png", "sub/p3.png"):
        touch(source / "images" / name)
    pd.DataFrame(
        {
            "filename": ["p1_a.png", "p1 b.png", "p2_a.png", "sub/p3.png"],
            "finding": ["COVID-19", "COVID-19", "No Finding", "Pneumonia"],
            "patientid": ["1", "1", "2", "3"],
        }
    ).to_csv(source / "metadata.csv", index=False)
    csv = {
        "file": "metadata.csv",
        "file_column": "filename",
        "label_column": "finding",
        "group_column": "patientid",
        "images_dir": "images",
    }

    # When it is ingested (layout auto picks the table because data.csv.file is set)
    ingested = _ingest(
        tmp_path, small_params_dict, source, csv=csv, label_map={"No Finding": "normal"}
    )

    # Then every row is a manifest entry with its group
    assert ingested.layout == "csv"
    assert _rows(ingested, "path", "label", "group") == {
        ("images/p1_a.png", "covid", "1"),
        ("images/p1 b.png", "covid", "1"),
        ("images/p2_a.png", "normal", "2"),
        ("images/sub/p3.png", "pneumonia", "3"),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"label_column": "diagnosis"},
            "data.csv.label_column = 'diagnosis': no column 'diagnosis' in",
        ),
        ({"file": "missing.csv"}, "data.csv.file = 'missing.csv': no such table"),
        ({"images_dir": "elsewhere"}, "data.csv.images_dir = 'elsewhere': no such folder"),
        ({"images_dir": "empty"}, "data.csv.file_column = 'file': no row of .* leads to a file"),
        (
            {"file": "twice.csv"},
            "1 file\\(s\\) named by more than one row, e.g. 'a.png' \\(rows 2, 3\\)",
        ),
    ],
)
def test_csv_layout_errors_name_the_key(
    tmp_path: Path, small_params_dict: dict[str, Any], change: dict[str, str], message: str
) -> None:
    # Given a table with one image, and csv params with one thing wrong
    source = tmp_path / "source"
    touch(source / "a.png")
    (source / "empty").mkdir()
    (source / "table.csv").write_text("file,label\na.png,covid\n", encoding="utf-8")
    (source / "twice.csv").write_text("file,label\na.png,covid\na.png,normal\n", encoding="utf-8")
    csv = {
        "file": "table.csv",
        "file_column": "file",
        "label_column": "label",
        "group_column": "",
        "images_dir": "",
        **change,
    }

    # When it is ingested, then one line says what is wrong
    with pytest.raises(PipelineError, match=message):
        _ingest(tmp_path, small_params_dict, source, csv=csv, layout="csv")


def test_csv_layout_needs_a_table_in_params(small_params_dict: dict[str, Any]) -> None:
    small_params_dict["data"]["layout"] = "csv"
    with pytest.raises(ParamsError, match="data.layout = 'csv': needs data.csv.file"):
        parse_params(small_params_dict)


def test_label_map_overrides_and_merges_classes(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given four class folders
    source = tmp_path / "source"
    for raw in ("COVID", "Normal", "Viral Pneumonia", "Bacterial Pneumonia"):
        touch(source / raw / "x.png")

    # When a raw name and a canonical name are both mapped onto pneumonia
    ingested = _ingest(
        tmp_path,
        small_params_dict,
        source,
        label_map={"Viral Pneumonia": "pneumonia", "bacterial_pneumonia": "Pneumonia"},
    )

    # Then they are merged and the rest keep their canonical names
    assert ingested.counts == {"covid": 1, "normal": 1, "pneumonia": 2}


def test_classes_select_a_subset(tmp_path: Path, small_params_dict: dict[str, Any]) -> None:
    # Given three class folders, two of them selected in another spelling
    source = tmp_path / "source"
    for raw in ("COVID", "Normal", "Lung_Opacity"):
        touch(source / raw / "x.png")

    # When it is ingested
    ingested = _ingest(tmp_path, small_params_dict, source, classes=["COVID-19", "normal"])

    # Then only those classes are in the manifest
    assert ingested.counts == {"covid": 1, "normal": 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"classes": ["covid", "tuberculosis"]}, "data.classes: tuberculosis not in the source"),
        ({"label_map": {"Covd": "covid"}}, "data.label_map: key\\(s\\) 'Covd' match no label"),
        ({"classes": ["COVID-19", "covid"]}, "names the same class twice"),
    ],
)
def test_unknown_classes_and_map_keys_are_errors_listing_them(
    tmp_path: Path, small_params_dict: dict[str, Any], data: dict[str, Any], message: str
) -> None:
    source = tmp_path / "source"
    for raw in ("COVID", "Normal"):
        touch(source / raw / "x.png")
    with pytest.raises(PipelineError, match=message) as error:
        _ingest(tmp_path, small_params_dict, source, **data)
    assert "\n" not in str(error.value)


def test_layout_override_beats_detection(tmp_path: Path, small_params_dict: dict[str, Any]) -> None:
    # Given folders that look like split folders but are meant as classes
    source = tmp_path / "source"
    touch(source / "train" / "a.png")
    touch(source / "test" / "b.png")

    # When the layout is forced to class folders
    ingested = _ingest(tmp_path, small_params_dict, source, layout="class_folders")

    # Then the folder names are the classes
    assert ingested.layout == "class_folders"
    assert ingested.counts == {"test": 1, "train": 1}


def test_hidden_files_and_macos_folders_are_skipped(tmp_path: Path) -> None:
    # Given an archive-style tree with a wrapper folder, __MACOSX and dotfiles
    touch(tmp_path / "__MACOSX" / "data" / "covid" / "._a.png")
    touch(tmp_path / "data" / "covid" / "a.png")
    touch(tmp_path / "data" / "covid" / "._a.png")
    touch(tmp_path / "data" / "normal" / ".DS_Store")
    touch(tmp_path / "data" / "normal" / "b.png")
    touch(tmp_path / ".hidden")

    # When the dataset root is found, then the wrapper is descended into
    root = dataset_root(tmp_path)
    assert root == tmp_path / "data"
    assert detect_layout(root) == "class_folders"


def test_empty_class_folders_are_skipped_with_a_warning(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given two class folders with images, an empty one and one holding only a text file
    source = tmp_path / "source"
    touch(source / "covid" / "a.png")
    touch(source / "normal" / "b.png")
    (source / "pneumonia").mkdir()
    touch(source / "notes" / "readme.txt", b"text")
    warnings = DataWarnings()
    small_params_dict["data"]["source"] = str(source)

    # When it is ingested
    ingested = ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "r"), warnings)

    # Then the two folders are not classes, and each gets one warning line naming it
    assert ingested.counts == {"covid": 1, "normal": 1}
    assert warnings.messages == [
        f"{source / 'notes'}: no image file (only 1 other file(s)); not read as a class",
        f"{source / 'pneumonia'}: no image file; not read as a class",
    ]
    assert ingested.warnings == {"empty_class_folder": 2}


def test_a_folder_of_images_is_a_single_class_source_with_a_warning(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a source that is one folder of images, no class folders (e.g. CT_COVID alone)
    source = tmp_path / "CT_COVID"
    touch(source / "1.png")
    touch(source / "2%0.jpg")
    warnings = DataWarnings()
    small_params_dict["data"]["source"] = str(source)

    # When it is ingested
    ingested = ingest(parse_params(small_params_dict).data, ProjectPaths(tmp_path / "r"), warnings)

    # Then its files are one class named after the folder, and one line says so
    assert ingested.counts == {"covid": 2}
    assert ingested.warnings == {"single_class_source": 1}
    assert "one class (covid, 2 files) in the class_folders layout" in warnings.messages[0]


def test_split_layout_error_names_the_users_folder_not_the_staging_copy(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given split folders beside a stray folder, inside a wrapper folder
    source = tmp_path / "source"
    touch(source / "data" / "train" / "covid" / "1.png")
    touch(source / "data" / "extra" / "covid" / "2.png")

    # When it is ingested, then the error names <source>/data
    with pytest.raises(PipelineError) as error:
        _ingest(tmp_path, small_params_dict, source)
    assert str(error.value).startswith(f"{source / 'data'}: folder(s) extra beside")
