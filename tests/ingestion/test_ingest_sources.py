"""Tests for ingest (cxr/ingestion/ingest.py): data.source into data/raw and the manifest."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.core.errors import PipelineError
from cxr.core.params import DataParams, parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.tables import DICOM_COLUMNS, MANIFEST_COLUMNS
from cxr.ingestion.ingest import ingest, ingest_metrics


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root (hidden ones included), keyed by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every file under root."""
    return {
        path.relative_to(root).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _png(seed: int, fmt: str = "PNG") -> bytes:
    """A tiny grayscale image encoded in memory."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _class_folders(source: Path) -> None:
    """A source of class folders with images in several spellings plus files ingest must skip."""
    (source / "covid").mkdir(parents=True)
    (source / "normal").mkdir()
    (source / "notes").mkdir()
    (source / "covid" / "a.png").write_bytes(_png(1))
    (source / "covid" / "b.JPG").write_bytes(_png(2, "JPEG"))
    (source / "covid" / "labels.csv").write_text("file,label\n", encoding="utf-8")
    (source / "normal" / "c.jpeg").write_bytes(_png(3, "JPEG"))
    (source / "normal" / ".DS_Store").write_bytes(b"\x00\x01")
    (source / "notes" / "readme.txt").write_text("no images here", encoding="utf-8")
    (source / "LICENSE").write_text("CC-BY", encoding="utf-8")


def _data_params(params: dict[str, Any], source: str, **data: Any) -> DataParams:
    """The validated data section with data.source (and any other data keys) set."""
    params["data"]["source"] = source
    params["data"].update(data)
    return parse_params(params).data


def _manifest(paths: ProjectPaths) -> pd.DataFrame:
    return pd.read_parquet(paths.manifest)


def test_synthetic_source_writes_class_folders_and_a_manifest(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the synthetic source with small counts
    data = _data_params(small_params_dict, "synthetic")
    paths = ProjectPaths(tmp_path)

    # When it is ingested
    ingested = ingest(data, paths)

    # Then one folder per class holds exactly the requested number of PNGs
    assert ingested.counts == data.synthetic.counts
    assert ingested.layout == "class_folders"
    for label, count in ingested.counts.items():
        assert len(list((paths.raw_dir / label).glob("*.png"))) == count
    assert sorted(path.name for path in paths.raw_dir.iterdir()) == sorted(ingested.counts)
    # and the manifest lists every PNG once with its class and no given split
    manifest = _manifest(paths)
    assert tuple(manifest.columns) == (*MANIFEST_COLUMNS, *DICOM_COLUMNS)
    assert sorted(manifest["path"]) == sorted(
        path.relative_to(paths.raw_dir).as_posix() for path in paths.raw_dir.rglob("*.png")
    )
    assert (manifest["label"] == manifest["path"].str.split("/").str[0]).all()
    assert set(manifest["given_split"]) == {""}
    # and nothing (no staging folder) is left beside data/raw
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == [
        "downloads",
        "interim",
        "raw",
    ]
    assert sorted(path.name for path in paths.manifest.parent.iterdir()) == [
        "ingest_rejected.csv",
        "manifest.parquet",
    ]


def test_synthetic_source_is_byte_for_byte_reproducible(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the same synthetic params ingested into two checkouts
    data = _data_params(small_params_dict, "synthetic")
    ingest(data, ProjectPaths(tmp_path / "a"))
    ingest(data, ProjectPaths(tmp_path / "b"))

    # When the files are hashed
    first = _digests(tmp_path / "a" / "data" / "raw")
    second = _digests(tmp_path / "b" / "data" / "raw")

    # Then both runs wrote the same files with the same bytes, and the same manifest
    assert first
    assert first == second
    pd.testing.assert_frame_equal(
        _manifest(ProjectPaths(tmp_path / "a")), _manifest(ProjectPaths(tmp_path / "b"))
    )


def test_synthetic_source_honours_data_classes(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the synthetic source and two of its three classes selected
    data = _data_params(small_params_dict, "synthetic", classes=["Covid", "NORMAL"])

    # When it is ingested
    ingested = ingest(data, ProjectPaths(tmp_path))

    # Then the manifest holds only those classes (data/raw stays the full copy)
    assert set(ingested.counts) == {"covid", "normal"}


def test_class_folder_source_is_copied_as_is_and_listed(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a folder of class folders with images and other files
    source = tmp_path / "source"
    _class_folders(source)
    data = _data_params(small_params_dict, str(source))
    paths = ProjectPaths(tmp_path / "repo")

    # When it is ingested
    ingested = ingest(data, paths)

    # Then data/raw is a byte-for-byte copy of the whole source
    assert _digests(paths.raw_dir) == _digests(source)
    # and the manifest lists every visible file of the class folders (build rejects the CSV),
    # not hidden files, not files outside a class, not folders without images
    assert ingested.layout == "class_folders"
    assert ingested.counts == {"covid": 3, "normal": 1}
    assert list(_manifest(paths)["path"]) == [
        "covid/a.png",
        "covid/b.JPG",
        "covid/labels.csv",
        "normal/c.jpeg",
    ]


def test_class_folder_source_is_left_untouched(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a source folder and a snapshot of its bytes and modification times
    source = tmp_path / "source"
    _class_folders(source)
    before = _snapshot(source)
    data = _data_params(small_params_dict, str(source))

    # When it is ingested twice (the second run replaces the first)
    ingest(data, ProjectPaths(tmp_path / "repo"))
    ingest(data, ProjectPaths(tmp_path / "repo"))

    # Then the source has the same files, bytes and modification times
    assert _snapshot(source) == before


def test_read_only_source_is_copied_and_can_be_ingested_again(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a source whose files and folders are all read-only (a mounted dataset)
    source = tmp_path / "source"
    _class_folders(source)
    before = _snapshot(source)
    for path in [*source.rglob("*"), source]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    data = _data_params(small_params_dict, str(source))
    paths = ProjectPaths(tmp_path / "repo")

    try:
        # When it is ingested twice
        ingest(data, paths)
        ingested = ingest(data, paths)
    finally:
        for path in [source, *source.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

    # Then the copy was replaced, the source is unchanged and the copy is writable by us
    assert ingested.counts == {"covid": 3, "normal": 1}
    assert _snapshot(source) == before
    assert all(os.access(path, os.W_OK) for path in paths.raw_dir.rglob("*"))


def _links_and_pipes(source: Path) -> dict[str, str]:
    """Every symbolic link (with its target) and pipe under source, found without following."""
    found = {}
    for folder, dirs, files in os.walk(source):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if path.is_symlink():
                found[path.relative_to(source).as_posix()] = os.readlink(path)
            elif stat.S_ISFIFO(path.lstat().st_mode):
                found[path.relative_to(source).as_posix()] = "fifo"
    return found


def test_folder_source_never_follows_symbolic_links_or_reads_pipes(
    tmp_path: Path, small_params_dict: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given class folders holding links out of the source (a system file, a folder of GIFs),
    # links inside it (a second name for an image, a loop to the source itself, a dangling one)
    # and a named pipe, all with image names
    source = tmp_path / "source"
    _class_folders(source)
    system = tmp_path / "system"
    (system / "icons").mkdir(parents=True)
    (system / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    for index in range(3):
        (system / "icons" / f"{index}.gif").write_bytes(_png(index, "GIF"))
    (source / "covid" / "passwd.png").symlink_to(system / "passwd")
    (source / "normal" / "icons").symlink_to(system / "icons", target_is_directory=True)
    (source / "covid" / "again.png").symlink_to("a.png")
    (source / "loop").symlink_to(source, target_is_directory=True)
    (source / "normal" / "dangling.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(source / "covid" / "pipe.png")
    before = _links_and_pipes(source)
    plain = tmp_path / "plain"
    _class_folders(plain)
    paths = ProjectPaths(tmp_path / "repo")

    # When it is ingested
    ingested = ingest(_data_params(small_params_dict, str(source)), paths)

    # Then data/raw holds exactly the plain files, as if there were no links or pipes
    assert _digests(paths.raw_dir) == _digests(plain)
    assert _links_and_pipes(paths.raw_dir) == {}
    assert list(_manifest(paths)["path"]) == [
        "covid/a.png",
        "covid/b.JPG",
        "covid/labels.csv",
        "normal/c.jpeg",
    ]
    # and every link and the pipe is listed with the reason in ingest_rejected.csv
    rejected = pd.read_csv(paths.ingest_rejected)
    hint = "not followed; copy the file or folder itself into the source to use it"
    assert rejected.to_dict("records") == [
        {"path": "covid/again.png", "reason": f"symbolic_link: a symbolic link to 'a.png', {hint}"},
        {
            "path": "covid/passwd.png",
            "reason": f"symbolic_link: a symbolic link to '{system / 'passwd'}', {hint}",
        },
        {
            "path": "covid/pipe.png",
            "reason": "not_a_regular_file: a pipe, socket or device file, not read",
        },
        {"path": "loop", "reason": f"symbolic_link: a symbolic link to '{source}', {hint}"},
        {
            "path": "normal/dangling.png",
            "reason": f"symbolic_link: a symbolic link to '{tmp_path / 'gone.png'}', {hint}",
        },
        {
            "path": "normal/icons",
            "reason": f"symbolic_link: a symbolic link to '{system / 'icons'}', {hint}",
        },
    ]
    # and counted in the metrics, with one warning line per kind naming the first ones
    metrics = ingest_metrics(ingested)
    assert metrics["skipped_files"] == {"not_a_regular_file": 1, "symbolic_link": 5}
    assert metrics["dropped_rows"] == {}
    assert metrics["warnings"] == {
        "empty_class_folder": 1,  # notes/, as without links
        "not_a_regular_file": 1,
        "symbolic_link": 1,
    }
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not copied" in line]
    assert warnings == [
        f"warning: 5 symbolic link(s), not followed: {source / 'covid/again.png'}, "
        f"{source / 'covid/passwd.png'}, {source / 'loop'} and 2 more; not copied into "
        "data/raw, listed in data/interim/ingest_rejected.csv; copy the files or folders "
        "themselves into the source to use them",
        f"warning: 1 pipe(s), socket(s) or device file(s), not read: "
        f"{source / 'covid/pipe.png'}; not copied into data/raw, listed in "
        "data/interim/ingest_rejected.csv",
    ]
    # and the source still holds its links and pipe
    assert _links_and_pipes(source) == before


def test_folder_source_named_through_a_link_is_read(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given data.source naming a link to a dataset folder (the user's own choice of folder)
    source = tmp_path / "source"
    _class_folders(source)
    (tmp_path / "xray").symlink_to(source, target_is_directory=True)
    paths = ProjectPaths(tmp_path / "repo")

    # When it is ingested
    ingested = ingest(_data_params(small_params_dict, str(tmp_path / "xray")), paths)

    # Then the folder it names is copied
    assert ingested.counts == {"covid": 3, "normal": 1}
    assert _digests(paths.raw_dir) == _digests(source)
    assert ingest_metrics(ingested)["skipped_files"] == {}


def test_folder_source_holding_the_checkout_is_refused(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given data.source naming a folder that holds the checkout (and so its data/raw)
    _class_folders(tmp_path / "images")
    paths = ProjectPaths(tmp_path / "repo")

    # When it is ingested
    with pytest.raises(PipelineError) as error:
        ingest(_data_params(small_params_dict, str(tmp_path)), paths)

    # Then one line says so, instead of copying the copy into itself, and nothing is kept
    assert str(error.value) == (
        f"data.source = {str(tmp_path)!r}: holds the folder ingest copies it into (the "
        "checkout's data folder); point data.source at the dataset folder itself"
    )
    assert not paths.raw_dir.exists()
    assert [path.name for path in paths.raw_dir.parent.iterdir()] == ["downloads"]


def test_names_with_spaces_percent_and_unicode(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given class folders and files whose names have spaces, % and non-ASCII letters
    source = tmp_path / "source"
    (source / "Viral Pneumonia").mkdir(parents=True)
    (source / "COVID-19").mkdir()
    (source / "Viral Pneumonia" / "röntgen 50% (1).png").write_bytes(_png(1))
    (source / "COVID-19" / "病例 %20 a.png").write_bytes(_png(2))
    paths = ProjectPaths(tmp_path / "repo")

    # When it is ingested
    ingest(_data_params(small_params_dict, str(source)), paths)

    # Then the names are kept as they are and point at the copied files
    manifest = _manifest(paths)
    assert dict(zip(manifest["path"], manifest["label"], strict=True)) == {
        "COVID-19/病例 %20 a.png": "covid",
        "Viral Pneumonia/röntgen 50% (1).png": "viral_pneumonia",
    }
    assert all((paths.raw_dir / path).is_file() for path in manifest["path"])


def test_reingest_replaces_files_that_left_the_source(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a checkout that already ingested a source
    source = tmp_path / "source"
    _class_folders(source)
    paths = ProjectPaths(tmp_path / "repo")
    data = _data_params(small_params_dict, str(source))
    ingest(data, paths)

    # When an image is removed from the source and it is ingested again
    (source / "covid" / "a.png").unlink()
    ingest(data, paths)

    # Then data/raw and the manifest mirror the source: the removed image is gone
    assert "covid/a.png" not in _digests(paths.raw_dir)
    assert "covid/a.png" not in set(_manifest(paths)["path"])


def test_relative_source_is_resolved_against_the_root(
    tmp_path: Path, small_params_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a relative source inside the checkout, and a current directory elsewhere
    root = tmp_path / "repo"
    _class_folders(root / "sources" / "xray")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = _data_params(small_params_dict, "sources/xray")

    # When it is ingested
    ingested = ingest(data, ProjectPaths(root))

    # Then it was read from <root>/sources/xray
    assert ingested.counts == {"covid": 3, "normal": 1}


def test_relative_source_in_a_dvc_temp_experiment_means_the_checkout(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a source that exists only in the user's checkout, and DVC's throwaway copy of it
    checkout = tmp_path / "repo"
    _class_folders(checkout / "sources" / "xray")
    experiment_copy = checkout / ".dvc" / "tmp" / "exps" / "tmpab12"
    experiment_copy.mkdir(parents=True)
    data = _data_params(small_params_dict, "sources/xray")

    # When the copy ingests it
    ingested = ingest(data, ProjectPaths(experiment_copy))

    # Then the relative source was found in the checkout and data/raw written in the copy
    assert ingested.counts == {"covid": 3, "normal": 1}
    assert (experiment_copy / "data" / "raw" / "covid" / "a.png").is_file()


@pytest.mark.parametrize("layout", ["missing", "a file", "no images"])
def test_unusable_source_fails_naming_data_source(
    tmp_path: Path, small_params_dict: dict[str, Any], layout: str
) -> None:
    # Given a source that is missing, a file, or holds no image in any class folder
    source = tmp_path / "source"
    if layout == "a file":
        source.write_text("not a folder", encoding="utf-8")
    elif layout == "no images":
        _class_folders(source)
        for image in [*(source / "normal").iterdir(), *(source / "covid").glob("*.*[gG]")]:
            image.unlink()
    data = _data_params(small_params_dict, str(source))
    paths = ProjectPaths(tmp_path / "repo")

    # When it is ingested
    with pytest.raises(PipelineError) as error:
        ingest(data, paths)

    # Then one line names data.source and its value, and neither data/raw nor a manifest exist
    message = str(error.value)
    assert "\n" not in message
    assert f"data.source = {str(source)!r}" in message
    assert not paths.raw_dir.exists()
    assert not paths.manifest.exists()
    assert [path.name for path in paths.raw_dir.parent.iterdir()] == ["downloads"]


def test_failed_ingest_keeps_the_previous_raw_data_and_manifest(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a checkout that already ingested the synthetic source
    paths = ProjectPaths(tmp_path / "repo")
    ingest(_data_params(small_params_dict, "synthetic"), paths)
    before = _digests(paths.raw_dir)
    manifest = paths.manifest.read_bytes()

    # When an unusable source is ingested
    with pytest.raises(PipelineError):
        ingest(_data_params(small_params_dict, str(tmp_path / "missing")), paths)

    # Then the earlier raw data and manifest are intact
    assert _digests(paths.raw_dir) == before
    assert paths.manifest.read_bytes() == manifest


SHARED_DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets"


@pytest.mark.skipif(
    not (SHARED_DATASET / "covid19-dataset").is_dir(),
    reason=f"{SHARED_DATASET / 'covid19-dataset'} not present (the Kaggle Covid19-dataset)",
)
def test_shared_covid19_dataset_is_read_as_split_folders(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the Kaggle Covid19-dataset folder (train/ and test/ of Covid, Normal, Viral Pneumonia)
    data = _data_params(small_params_dict, str(SHARED_DATASET / "covid19-dataset"))
    paths = ProjectPaths(tmp_path)

    # When it is ingested
    ingested = ingest(data, paths)

    # Then the given splits and canonical classes have the dataset's published counts
    assert ingested.layout == "split_folders"
    counts = ingested.manifest.groupby(["given_split", "label"]).size().to_dict()
    assert counts == {
        ("train", "covid"): 111,
        ("train", "normal"): 70,
        ("train", "viral_pneumonia"): 70,
        ("test", "covid"): 26,
        ("test", "normal"): 20,
        ("test", "viral_pneumonia"): 20,
    }
    assert all((paths.raw_dir / path).is_file() for path in ingested.manifest["path"])
