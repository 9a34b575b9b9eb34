"""Tests for the dataframe build stage (stages/build.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from stages.build import build, main, scan_images
from stages.config import BuildParams
from stages.errors import PipelineError
from stages.outputs import read_json
from stages.paths import ProjectPaths
from stages.tables import IMAGE_COLUMNS

FIGURES = ("class_counts.png", "image_sizes.png", "intensity_histograms.png")


def _files(raw_dir: Path) -> list[Path]:
    return sorted(path for path in raw_dir.glob("*/*") if path.is_file())


def test_scan_gives_one_row_per_file_with_the_table_columns(phantom_raw_dir: Path) -> None:
    # Given a raw folder of class folders
    files = _files(phantom_raw_dir)

    # When it is scanned
    images = scan_images(phantom_raw_dir)

    # Then there is one row per file, sorted by relative path, with the shared columns
    assert tuple(images.columns) == IMAGE_COLUMNS
    assert images["path"].tolist() == [
        file.relative_to(phantom_raw_dir).as_posix() for file in files
    ]
    assert images["path"].is_unique


def test_scan_labels_rows_by_their_folder(phantom_raw_dir: Path) -> None:
    # Given a raw folder of class folders
    # When it is scanned
    images = scan_images(phantom_raw_dir)

    # Then each label is the folder the file sits in, and the counts match the folders
    assert (images["label"] == images["path"].str.split("/").str[0]).all()
    assert images["label"].value_counts().to_dict() == {
        folder.name: len(list(folder.iterdir())) for folder in phantom_raw_dir.iterdir()
    }


def test_scan_records_hash_size_and_format(phantom_raw_dir: Path) -> None:
    # Given a raw folder with one image of a different size added
    odd = phantom_raw_dir / "normal" / "wide.png"
    Image.new("RGB", (40, 24), color=(10, 20, 30)).save(odd)

    # When it is scanned
    images = scan_images(phantom_raw_dir).set_index("path")

    # Then sha256 and bytes match the file, and width / height / mode / format are right
    for relative, row in images.iterrows():
        content = (phantom_raw_dir / str(relative)).read_bytes()
        assert row["sha256"] == hashlib.sha256(content).hexdigest()
        assert row["bytes"] == len(content)
    assert tuple(images.loc["normal/wide.png", ["width", "height", "mode", "format"]]) == (
        40,
        24,
        "RGB",
        "PNG",
    )
    phantoms = images.drop(index="normal/wide.png")
    assert set(zip(phantoms["width"], phantoms["height"], strict=True)) == {(32, 32)}
    assert set(phantoms["mode"]) == {"L"}


def test_corrupt_image_fails_naming_the_file(phantom_raw_dir: Path) -> None:
    # Given a file with a .png suffix that holds garbage
    corrupt = phantom_raw_dir / "covid" / "broken.png"
    corrupt.write_bytes(b"this is not a png at all")

    # When the folder is scanned
    with pytest.raises(PipelineError) as error:
        scan_images(phantom_raw_dir)

    # Then one line names the file
    message = str(error.value)
    assert "\n" not in message
    assert str(corrupt) in message
    assert "not a readable image" in message


def test_empty_raw_folder_says_to_run_ingest(tmp_path: Path) -> None:
    # Given a raw folder without class folders
    raw_dir = tmp_path / "data" / "raw"
    raw_dir.mkdir(parents=True)

    # When it is scanned
    with pytest.raises(PipelineError, match="ingest"):
        scan_images(raw_dir)


def test_build_writes_table_metrics_and_figures(phantom_raw_dir: Path, tmp_path: Path) -> None:
    # Given a checkout with raw images
    paths = ProjectPaths(tmp_path)
    build_params = BuildParams(histogram_images_per_class=4, histogram_bins=16)

    # When the build runs
    images = build(build_params, 42, paths)

    # Then the images table, per-class metrics and three PNG figures are written
    pd.testing.assert_frame_equal(pd.read_parquet(paths.images_table), images)
    assert len(images) == len(_files(phantom_raw_dir))
    metrics = read_json(paths.metrics("build"))
    assert metrics == {
        "images": len(images),
        "classes": images["label"].value_counts().to_dict(),
        "distinct_contents": images["sha256"].nunique(),
    }
    assert metrics["classes"] == {"covid": 8, "normal": 10, "viral_pneumonia": 6}
    assert sorted(path.name for path in paths.reports("build").iterdir()) == sorted(FIGURES)
    for figure in FIGURES:
        with Image.open(paths.reports("build") / figure) as png:
            assert png.format == "PNG"


def test_build_counts_identical_files_once_in_distinct_contents(
    phantom_raw_dir: Path, tmp_path: Path
) -> None:
    # Given a raw folder where one image was copied under another name
    original = _files(phantom_raw_dir)[0]
    (original.parent / "copy.png").write_bytes(original.read_bytes())

    # When the build runs
    images = build(
        BuildParams(histogram_images_per_class=2, histogram_bins=8), 0, ProjectPaths(tmp_path)
    )

    # Then both files are rows but they count as one distinct content
    metrics = read_json(ProjectPaths(tmp_path).metrics("build"))
    assert metrics["images"] == len(images) == len(_files(phantom_raw_dir))
    assert metrics["distinct_contents"] == metrics["images"] - 1


def test_main_builds_from_params(
    phantom_raw_dir: Path,
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
) -> None:
    # Given a checkout with raw images and a valid params.yaml
    small_params_dict["build"]["histogram_images_per_class"] = 3
    write_params(tmp_path, small_params_dict)

    # When the stage runs with --root
    status = main(["--root", str(tmp_path)])

    # Then it succeeds and writes the images table
    assert status == 0
    assert len(pd.read_parquet(tmp_path / "data" / "interim" / "images.parquet")) == len(
        _files(phantom_raw_dir)
    )
