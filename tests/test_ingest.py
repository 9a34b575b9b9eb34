"""Tests for the ingest stage (stages/ingest.py)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stages.config import DataParams, load_params, parse_params
from stages.errors import PipelineError
from stages.ingest import ingest, main


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


def _data_params(params: dict[str, Any], source: str) -> DataParams:
    """The validated data section with data.source set."""
    params["data"]["source"] = source
    return parse_params(params).data


def test_synthetic_source_writes_class_folders_and_counts(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the synthetic source with small counts
    data = _data_params(small_params_dict, "synthetic")
    raw_dir = tmp_path / "data" / "raw"

    # When it is ingested
    counts = ingest(data, tmp_path, raw_dir)

    # Then one folder per class holds exactly the requested number of PNGs
    assert counts == data.synthetic.counts
    for label, count in counts.items():
        assert len(list((raw_dir / label).glob("*.png"))) == count
    assert sorted(path.name for path in raw_dir.iterdir()) == sorted(counts)
    # and nothing (no staging folder) is left beside data/raw
    assert [path.name for path in raw_dir.parent.iterdir()] == ["raw"]


def test_synthetic_source_is_byte_for_byte_reproducible(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given the same synthetic params ingested into two checkouts
    data = _data_params(small_params_dict, "synthetic")
    ingest(data, tmp_path / "a", tmp_path / "a" / "data" / "raw")
    ingest(data, tmp_path / "b", tmp_path / "b" / "data" / "raw")

    # When the files are hashed
    first = _digests(tmp_path / "a" / "data" / "raw")
    second = _digests(tmp_path / "b" / "data" / "raw")

    # Then both runs wrote the same files with the same bytes
    assert first
    assert first == second


def test_class_folder_source_is_copied_without_other_files(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a folder of class folders with images and other files
    source = tmp_path / "source"
    _class_folders(source)
    data = _data_params(small_params_dict, str(source))
    raw_dir = tmp_path / "repo" / "data" / "raw"

    # When it is ingested
    counts = ingest(data, tmp_path / "repo", raw_dir)

    # Then only the images are copied, byte for byte, into their class folders
    assert counts == {"covid": 2, "normal": 1}
    source_digests = _digests(source)
    assert _digests(raw_dir) == {
        name: source_digests[name] for name in ("covid/a.png", "covid/b.JPG", "normal/c.jpeg")
    }


def test_class_folder_source_is_left_untouched(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a source folder and a snapshot of its bytes and modification times
    source = tmp_path / "source"
    _class_folders(source)
    before = _snapshot(source)
    data = _data_params(small_params_dict, str(source))

    # When it is ingested twice (the second run replaces the first)
    ingest(data, tmp_path / "repo", tmp_path / "repo" / "data" / "raw")
    ingest(data, tmp_path / "repo", tmp_path / "repo" / "data" / "raw")

    # Then the source has the same files, bytes and modification times
    assert _snapshot(source) == before


def test_reingest_replaces_files_that_left_the_source(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a checkout that already ingested a source
    source = tmp_path / "source"
    _class_folders(source)
    raw_dir = tmp_path / "repo" / "data" / "raw"
    data = _data_params(small_params_dict, str(source))
    ingest(data, tmp_path / "repo", raw_dir)

    # When an image is removed from the source and it is ingested again
    (source / "covid" / "a.png").unlink()
    ingest(data, tmp_path / "repo", raw_dir)

    # Then data/raw mirrors the source: the removed image is gone
    assert sorted(_digests(raw_dir)) == ["covid/b.JPG", "normal/c.jpeg"]


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
    counts = ingest(data, root, root / "data" / "raw")

    # Then it was read from <root>/sources/xray
    assert counts == {"covid": 2, "normal": 1}


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
    counts = ingest(data, experiment_copy, experiment_copy / "data" / "raw")

    # Then the relative source was found in the checkout and data/raw written in the copy
    assert counts == {"covid": 2, "normal": 1}
    assert (experiment_copy / "data" / "raw" / "covid" / "a.png").is_file()


@pytest.mark.parametrize("layout", ["missing", "a file", "one class", "no classes"])
def test_unusable_source_fails_naming_data_source(
    tmp_path: Path, small_params_dict: dict[str, Any], layout: str
) -> None:
    # Given a source that is missing, a file, or holds fewer than two class folders with images
    source = tmp_path / "source"
    if layout == "a file":
        source.write_text("not a folder", encoding="utf-8")
    elif layout == "one class":
        _class_folders(source)
        for image in (source / "normal").iterdir():
            image.unlink()
    elif layout == "no classes":
        source.mkdir()
        (source / "image.png").write_bytes(_png(0))
    data = _data_params(small_params_dict, str(source))
    raw_dir = tmp_path / "repo" / "data" / "raw"

    # When it is ingested
    with pytest.raises(PipelineError) as error:
        ingest(data, tmp_path / "repo", raw_dir)

    # Then one line names data.source and its value, and data/raw was not created
    message = str(error.value)
    assert "\n" not in message
    assert f"data.source = {str(source)!r}" in message
    assert not raw_dir.exists()
    assert list(raw_dir.parent.iterdir()) == []


def test_failed_ingest_keeps_the_previous_raw_data(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given a checkout that already ingested the synthetic source
    root = tmp_path / "repo"
    raw_dir = root / "data" / "raw"
    ingest(_data_params(small_params_dict, "synthetic"), root, raw_dir)
    before = _digests(raw_dir)

    # When an unusable source is ingested
    with pytest.raises(PipelineError):
        ingest(_data_params(small_params_dict, str(tmp_path / "missing")), root, raw_dir)

    # Then the earlier raw data is intact
    assert _digests(raw_dir) == before


def test_main_ingests_with_a_valid_params_file(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a checkout with a valid params.yaml
    write_params(tmp_path, small_params_dict)
    counts = load_params(tmp_path / "params.yaml").data.synthetic.counts

    # When the stage runs with --root
    status = main(["--root", str(tmp_path)])

    # Then it succeeds, writes data/raw and reports what it wrote
    assert status == 0
    assert {path.name for path in (tmp_path / "data" / "raw").iterdir()} == set(counts)
    assert f"{sum(counts.values())} images in {len(counts)} classes" in capsys.readouterr().out


def test_main_with_a_bad_key_exits_2_before_writing(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a params.yaml with a misspelled key
    small_params_dict["data"]["sorce"] = "synthetic"
    write_params(tmp_path, small_params_dict)

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then it exits 2 with one line on stderr naming the key, and writes nothing
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("error: ")
    assert captured.err.count("\n") == 1
    assert "data.sorce: unknown key" in captured.err
    assert captured.out == ""
    assert not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / "data").exists()


def test_main_with_an_unusable_source_exits_2(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    write_params: Callable[[Path, dict[str, Any]], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a params.yaml whose source folder does not exist
    small_params_dict["data"]["source"] = "does/not/exist"
    write_params(tmp_path, small_params_dict)

    # When the stage runs
    status = main(["--root", str(tmp_path)])

    # Then it exits 2 with one line naming data.source, and data/raw is not created
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("error: data.source = ")
    assert captured.err.count("\n") == 1
    assert not (tmp_path / "data" / "raw").exists()
