"""Tests for atomic writes (stages/outputs.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest

from cxr.core.outputs import read_json, staged_dir, staged_file, write_json, write_table


class _InterruptedError(Exception):
    """Raised inside a block to simulate a stage failing half-way through a write."""


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) with its bytes, keyed by relative path."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _plain_file_mode(directory: Path) -> int:
    """The permission bits a plain open() gives a new file here under the current umask."""
    probe = directory / "probe"
    probe.write_text("x", encoding="utf-8")
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


def test_staged_file_renames_onto_the_target_on_success(tmp_path: Path) -> None:
    # Given a target in a folder that does not exist yet
    target = tmp_path / "metrics" / "split.json"

    # When content is written through a staged file
    with staged_file(target) as temporary:
        assert temporary != target
        assert temporary.parent == target.parent
        temporary.write_text("new", encoding="utf-8")
        assert not target.exists()

    # Then the target holds the content and only the target is left
    assert target.read_text(encoding="utf-8") == "new"
    assert sorted(path.name for path in target.parent.iterdir()) == ["split.json"]


def test_staged_file_keeps_previous_content_when_the_block_fails(tmp_path: Path) -> None:
    # Given a target with earlier content
    target = tmp_path / "images.parquet"
    target.write_bytes(b"previous")

    # When a write through a staged file fails half-way
    with pytest.raises(_InterruptedError), staged_file(target) as temporary:
        temporary.write_bytes(b"half")
        raise _InterruptedError

    # Then the earlier content is untouched and no temp file is left behind
    assert _tree(tmp_path) == {"images.parquet": b"previous"}


def test_staged_file_creates_nothing_when_the_block_fails(tmp_path: Path) -> None:
    # Given a target that does not exist
    target = tmp_path / "out" / "model.keras"

    # When the write fails
    with pytest.raises(_InterruptedError), staged_file(target):
        raise _InterruptedError

    # Then neither the target nor a temp file exists
    assert _tree(tmp_path) == {}


def test_staged_dir_replaces_the_whole_folder_on_success(tmp_path: Path) -> None:
    # Given a folder with an earlier file that the new run does not write
    target = tmp_path / "data" / "raw"
    (target / "covid").mkdir(parents=True)
    (target / "covid" / "old.png").write_bytes(b"old")

    # When new content is written through a staged folder
    with staged_dir(target) as staging:
        assert staging != target
        assert list(staging.iterdir()) == []
        (staging / "normal").mkdir()
        (staging / "normal" / "new.png").write_bytes(b"new")

    # Then the folder holds exactly the new content and nothing is left beside it
    assert _tree(target) == {"normal/new.png": b"new"}
    assert [path.name for path in target.parent.iterdir()] == ["raw"]


def test_staged_dir_keeps_previous_folder_when_the_block_fails(tmp_path: Path) -> None:
    # Given a folder with earlier content
    target = tmp_path / "reports" / "build"
    target.mkdir(parents=True)
    (target / "class_counts.png").write_bytes(b"previous")

    # When a write through a staged folder fails half-way
    with pytest.raises(_InterruptedError), staged_dir(target) as staging:
        (staging / "class_counts.png").write_bytes(b"half")
        raise _InterruptedError

    # Then the earlier folder is untouched and no temp folder is left behind
    assert _tree(tmp_path) == {"reports/build/class_counts.png": b"previous"}
    assert [path.name for path in target.parent.iterdir()] == ["build"]


def test_staged_dir_creates_nothing_when_the_block_fails(tmp_path: Path) -> None:
    # Given a folder that does not exist
    target = tmp_path / "data" / "processed"

    # When the write fails
    with pytest.raises(_InterruptedError), staged_dir(target):
        raise _InterruptedError

    # Then the folder was not created and its parent is empty
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_write_json_round_trips_with_sorted_keys(tmp_path: Path) -> None:
    # Given a nested payload with unsorted keys
    payload = {"val": {"images": 3, "covid": 1}, "train": {"images": 10}}
    path = tmp_path / "metrics" / "split.json"

    # When it is written and read back
    write_json(path, payload)

    # Then the content is equal, keys are sorted and the file ends with a newline
    assert read_json(path) == payload
    text = path.read_text(encoding="utf-8")
    assert text.index('"train"') < text.index('"val"')
    assert text.endswith("}\n")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_table_round_trips(tmp_path: Path, suffix: str) -> None:
    # Given a small table
    table = pd.DataFrame(
        {"path": ["covid/a.png", "normal/b.png"], "label": ["covid", "normal"], "width": [32, 48]}
    )
    path = tmp_path / "tables" / f"images{suffix}"

    # When it is written in the format its suffix names and read back
    write_table(path, table)
    read_back = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)

    # Then the rows and columns are unchanged, without an index column
    pd.testing.assert_frame_equal(read_back, table)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_staged_file_result_has_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    # Given the mode a plain write gives a new file here
    expected = _plain_file_mode(tmp_path)

    # When a file is written atomically
    write_json(tmp_path / "metrics.json", {"accuracy": 1.0})

    # Then it has the same mode (readable by whoever may read plain files)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == expected


def test_staged_dir_result_has_the_permissions_of_a_plain_mkdir(tmp_path: Path) -> None:
    # Given the mode a plain mkdir gives a new folder here
    (tmp_path / "plain").mkdir()
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)

    # When a folder is written atomically
    with staged_dir(tmp_path / "raw") as staging:
        (staging / "a.png").write_bytes(b"x")

    # Then it has the same mode
    assert stat.S_IMODE((tmp_path / "raw").stat().st_mode) == expected
