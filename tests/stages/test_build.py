"""Tests for the build stage (stages/build.py): manifest in, pixel cache and tables out."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.core.errors import PipelineError
from cxr.core.outputs import read_json, write_table
from cxr.core.params import BuildParams
from cxr.core.paths import ProjectPaths
from cxr.core.tables import IMAGE_COLUMNS, MANIFEST_COLUMNS, REJECTED_COLUMNS
from cxr.images.decoding import decode_gray, resize_square
from stages.build import build, main

FIGURES = ("class_counts.png", "image_sizes.png", "intensity_histograms.png")
CACHE_SIZE = 32
WORKERS = 2  # decoding processes: more than one, so the rows cross process boundaries


def _params(**changes: Any) -> BuildParams:
    values: dict[str, Any] = {
        "cache_size": CACHE_SIZE,
        "resize": "pad",
        "max_pixels": 1_000_000,
        "histogram_images_per_class": 4,
        "histogram_bins": 16,
        "dicom": {"window": "auto"},
    }
    return BuildParams(**{**values, **changes})


def _write_manifest(paths: ProjectPaths) -> pd.DataFrame:
    """The manifest ingest would write for class folders: label = folder, no given split."""
    files = sorted(path for path in paths.raw_dir.glob("*/*") if path.is_file())
    manifest = pd.DataFrame(
        {
            "path": [file.relative_to(paths.raw_dir).as_posix() for file in files],
            "label": [file.parent.name for file in files],
            "given_split": "",
            "group": "",
            "source": "",
        },
        columns=list(MANIFEST_COLUMNS),
    )
    write_table(paths.manifest, manifest)
    return manifest


def _add_bad_files(raw_dir: Path) -> dict[str, str]:
    """Unusable files of every kind in the covid folder; returns path -> expected reason kind."""
    folder = raw_dir / "covid"
    (folder / "notes.png").write_text("radiologist notes, not an image")
    (folder / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "cut.png")
    content = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(content[: len(content) // 2])
    Image.new("L", (1200, 1000)).save(folder / "huge.png")  # 1.2 M pixels, over the test limit
    return {
        "covid/notes.png": "not_an_image",
        "covid/empty.jpg": "empty",
        "covid/cut.png": "corrupt",
        "covid/huge.png": "too_large",
    }


def test_build_writes_table_cache_rejected_metrics_and_figures(
    phantom_raw_dir: Path, tmp_path: Path
) -> None:
    # Given a manifest of phantoms
    paths = ProjectPaths(tmp_path)
    manifest = _write_manifest(paths)

    # When the build runs
    images = build(_params(), 42, WORKERS, paths)

    # Then the images table, pixel cache, an empty rejected table, metrics and figures exist
    pd.testing.assert_frame_equal(pd.read_parquet(paths.images_table), images)
    assert tuple(images.columns) == IMAGE_COLUMNS
    assert images["path"].tolist() == manifest["path"].tolist()
    pixels = np.load(paths.pixel_cache)
    assert pixels.shape == (len(manifest), CACHE_SIZE, CACHE_SIZE)
    assert pixels.dtype == np.uint8
    rejected = pd.read_csv(paths.rejected_table)
    assert tuple(rejected.columns) == REJECTED_COLUMNS
    assert rejected.empty
    metrics = read_json(paths.summary("build"))
    assert metrics == {
        "images": len(images),
        "classes": {"covid": 8, "normal": 10, "viral_pneumonia": 6},
        "distinct_contents": images["sha256"].nunique(),
        "rejected": 0,
        "rejected_reasons": {},
    }
    assert sorted(path.name for path in paths.reports("build").iterdir()) == sorted(FIGURES)
    for figure in FIGURES:
        with Image.open(paths.reports("build") / figure) as png:
            assert png.format == "PNG"


def test_each_cache_row_is_the_image_of_its_cache_index(
    phantom_raw_dir: Path, tmp_path: Path
) -> None:
    # Given a manifest with a bad file in the middle, so cache rows and manifest rows differ
    paths = ProjectPaths(tmp_path)
    (phantom_raw_dir / "covid" / "covid_00003b.png").write_text("not an image")
    _write_manifest(paths)

    # When the build runs
    images = build(_params(), 0, WORKERS, paths)

    # Then cache_index is 0..N-1 and row i is exactly decode_gray -> resize_square of that file
    assert images["cache_index"].tolist() == list(range(len(images)))
    pixels = np.load(paths.pixel_cache, mmap_mode="r")
    assert len(pixels) == len(images)
    for row in images.itertuples():
        expected = resize_square(decode_gray(phantom_raw_dir / row.path, 10**6), CACHE_SIZE, "pad")
        np.testing.assert_array_equal(pixels[row.cache_index], expected)


def test_metadata_hash_and_size_are_recorded(phantom_raw_dir: Path, tmp_path: Path) -> None:
    # Given phantoms plus one RGB image of another size saved with a .jpg name
    paths = ProjectPaths(tmp_path)
    Image.new("RGB", (40, 24), color=(10, 20, 30)).save(
        phantom_raw_dir / "normal" / "wide.jpg", format="PNG"
    )
    _write_manifest(paths)

    # When the build runs
    images = build(_params(), 0, WORKERS, paths).set_index("path")

    # Then sha256 and bytes match the file, and size / mode / format (by content) are right
    for relative, row in images.iterrows():
        content = (phantom_raw_dir / str(relative)).read_bytes()
        assert row["sha256"] == hashlib.sha256(content).hexdigest()
        assert row["bytes"] == len(content)
        assert len(row["phash"]) == 16
    assert tuple(images.loc["normal/wide.jpg", ["width", "height", "mode", "format"]]) == (
        40,
        24,
        "RGB",
        "PNG",
    )
    phantoms = images.drop(index="normal/wide.jpg")
    assert set(zip(phantoms["width"], phantoms["height"], strict=True)) == {(32, 32)}
    assert set(phantoms["mode"]) == {"L"}


def test_bad_files_are_listed_with_their_reason_and_counted(
    phantom_raw_dir: Path, tmp_path: Path
) -> None:
    # Given a manifest holding a text file, an empty, a truncated and a too-large image
    paths = ProjectPaths(tmp_path)
    expected = _add_bad_files(phantom_raw_dir)
    manifest = _write_manifest(paths)

    # When the build runs
    images = build(_params(), 0, WORKERS, paths)

    # Then the stage succeeds, the bad files are in rejected.csv with their reason, not in images
    rejected = pd.read_csv(paths.rejected_table).set_index("path")["reason"]
    assert {path: reason.split(":")[0] for path, reason in rejected.items()} == expected
    assert "build.max_pixels = 1000000" in rejected["covid/huge.png"]
    assert set(images["path"]) == set(manifest["path"]) - set(expected)
    metrics = read_json(paths.summary("build"))
    assert metrics["rejected"] == 4
    assert metrics["rejected_reasons"] == {
        "corrupt": 1,
        "empty": 1,
        "not_an_image": 1,
        "too_large": 1,
    }
    assert np.load(paths.pixel_cache).shape[0] == metrics["images"] == len(images)


def test_awkward_file_names_are_built(phantom_raw_dir: Path, tmp_path: Path) -> None:
    # Given files whose names hold spaces, a percent sign and non-ASCII letters
    paths = ProjectPaths(tmp_path)
    source = next((phantom_raw_dir / "normal").iterdir())
    names = ["normal/chest x-ray 1.png", "normal/50%_dose.png", "normal/radiografía_ü.png"]
    for index, name in enumerate(names):
        Image.fromarray(np.full((20, 20), index * 40, dtype=np.uint8)).save(phantom_raw_dir / name)
    source.rename(source.parent / "renamed #1.png")
    _write_manifest(paths)

    # When the build runs
    images = build(_params(), 0, WORKERS, paths).set_index("path")

    # Then each is a row with its own pixels
    pixels = np.load(paths.pixel_cache)
    for index, name in enumerate(names):
        assert (pixels[images.loc[name, "cache_index"]] == index * 40).all()
    assert "normal/renamed #1.png" in images.index
    assert pd.read_csv(paths.rejected_table).empty


def test_fewer_than_two_usable_classes_fail_without_writing_the_cache(tmp_path: Path) -> None:
    # Given two classes of which one holds only unusable files
    paths = ProjectPaths(tmp_path)
    (paths.raw_dir / "covid").mkdir(parents=True)
    (paths.raw_dir / "normal").mkdir()
    Image.new("L", (16, 16)).save(paths.raw_dir / "covid" / "a.png")
    (paths.raw_dir / "normal" / "b.png").write_text("text")
    _write_manifest(paths)

    # When the build runs
    with pytest.raises(PipelineError) as error:
        build(_params(), 0, WORKERS, paths)

    # Then one line says how many classes remain and why; no cache or table is left behind
    message = str(error.value)
    assert "\n" not in message
    assert "1 class(es)" in message
    assert "need at least two classes" in message
    assert not paths.pixel_cache.exists()
    assert not paths.images_table.exists()
    assert [path.name for path in paths.pixel_cache.parent.iterdir()] == ["manifest.parquet"]


def test_missing_manifest_says_to_run_dvc_repro(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="dvc repro"):
        build(_params(), 0, WORKERS, ProjectPaths(tmp_path))


def test_manifest_without_a_column_fails_naming_it(tmp_path: Path) -> None:
    # Given a manifest without the label column
    paths = ProjectPaths(tmp_path)
    write_table(paths.manifest, pd.DataFrame({"path": ["a.png"], "given_split": [""]}))

    # When the build runs
    with pytest.raises(PipelineError) as error:
        build(_params(), 0, WORKERS, paths)

    # Then the missing columns are named
    assert "missing column(s) label, group, source" in str(error.value)


def test_main_builds_from_params(
    phantom_raw_dir: Path,
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a checkout with a manifest and a valid params.yaml, decoding in one process
    monkeypatch.setenv("CXR_WORKERS", "1")
    small_params_dict["build"].update(histogram_images_per_class=3, cache_size=32)
    small_params_dict["train"]["image_size"] = 32  # params require it to fit the cache
    write_params(tmp_path, small_params_dict)
    manifest = _write_manifest(ProjectPaths(tmp_path))

    # When the stage runs with --root
    status = main(["--root", str(tmp_path)])

    # Then it succeeds, reports the counts and writes the images table and cache
    assert status == 0
    assert "24 images, 3 classes, 0 rejected" in capsys.readouterr().out
    assert len(pd.read_parquet(ProjectPaths(tmp_path).images_table)) == len(manifest)
    assert np.load(ProjectPaths(tmp_path).pixel_cache).shape == (len(manifest), 32, 32)


@pytest.mark.parametrize(
    ("environ", "build_keys", "expected"),
    [
        ({"CXR_WORKERS": "all"}, {}, "CXR_WORKERS = 'all': allowed: integer >= 0"),
        ({}, {"workers": 1}, "build.workers: moved to the environment variable CXR_WORKERS"),
    ],
    ids=["bad-variable", "old-params-key"],
)
def test_bad_run_settings_stop_build_before_writing(
    phantom_raw_dir: Path,
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    build_keys: dict[str, Any],
    expected: str,
) -> None:
    # Given a checkout ready to build, and a bad CXR_WORKERS or the old build.workers param
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    small_params_dict["build"].update(cache_size=32, **build_keys)
    small_params_dict["train"]["image_size"] = 32
    write_params(tmp_path, small_params_dict)
    _write_manifest(ProjectPaths(tmp_path))

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then it stops with one line naming the variable, and writes no pixel cache
    error = capsys.readouterr().err
    assert status == 2 and expected in error and error.count("\n") == 1
    assert not ProjectPaths(tmp_path).pixel_cache.exists()
