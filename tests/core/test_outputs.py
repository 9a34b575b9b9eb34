"""Tests for atomic writes (cxr/core/outputs.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from math import inf
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.core.outputs import (
    STAGING_DIR,
    json_number,
    read_json,
    remove_leftovers,
    staged_dir,
    staged_file,
    staging_dir,
    write_json,
    write_results,
    write_table,
)
from cxr.core.processes import owner_alive, owner_token


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
        assert temporary.parent == target.parent / STAGING_DIR  # outside a repository
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


def test_write_results_keeps_everything_in_the_summary_and_the_headline_in_the_metrics(
    tmp_path: Path,
) -> None:
    # Given a stage's results, nested and flat, and its headline keys (one not recorded)
    results = {"test_accuracy": 0.9, "per_class": {"covid": {"recall": 1.0}}, "model_uri": "m"}
    summary, metrics = tmp_path / "metrics" / "summary" / "evaluate.json", tmp_path / "e.json"

    # When they are written
    write_results(summary, metrics, results, ("test_accuracy", "test_f1_macro"))

    # Then the summary holds every result and the metrics file the recorded headline alone
    assert read_json(summary) == results
    assert read_json(metrics) == {"test_accuracy": 0.9}


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


# --- where temporaries live, and what a killed process leaves -------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A folder git and DVC would take for a repository root (it holds .git and .dvc)."""
    (tmp_path / ".git").mkdir()
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def _python(code: str, repo: Path, **pipes: int) -> subprocess.Popen[str]:
    """Start a Python process in `repo` running `code` (this interpreter, this package)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=repo, text=True, **pipes
    )


def _killed_while_staging(repo: Path, target: str) -> list[Path]:
    """Run a process that stages `target` (a folder), writes into it and is killed by SIGKILL."""
    code = f"""
        import os, signal
        from pathlib import Path
        from cxr.core.outputs import staged_dir
        with staged_dir(Path({target!r})) as staging:
            (staging / "covid").mkdir()
            (staging / "covid" / "a.png").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """
    process = _python(code, repo)
    assert process.wait(timeout=60) == -signal.SIGKILL
    return sorted((repo / STAGING_DIR).iterdir())


def test_temporaries_are_staged_at_the_repository_root(repo: Path) -> None:
    # Given a target deep inside a repository
    target = repo / "data" / "interim" / "manifest.parquet"

    # When a file and a folder are staged
    with staged_file(target) as temporary, staged_dir(repo / "models") as folder:
        # Then both temporaries sit in the one staging folder at the root, named after target
        assert temporary.parent == folder.parent == repo / STAGING_DIR
        assert temporary.name.startswith("data%2Finterim%2Fmanifest.parquet+")
        assert temporary.name.endswith(".parquet")
        assert folder.name.startswith("models+")
        assert list(target.parent.iterdir()) == []
        temporary.write_bytes(b"table")

    # And once done nothing is left but the outputs: the empty staging folder is gone too
    assert target.read_bytes() == b"table"
    assert sorted(path.name for path in repo.iterdir()) == [".dvc", ".git", "data", "models"]


def test_a_temporary_keeps_every_suffix_of_its_target(repo: Path) -> None:
    # Given a Keras weights file, whose writer insists on the name ending in .weights.h5
    target = repo / ".train_backup" / "best.weights.h5"

    # When it is staged
    with staged_file(target) as temporary:
        # Then the temporary ends the same way
        assert temporary.name.endswith(".weights.h5")


def test_a_kill_leaves_nothing_beside_the_target_and_the_next_write_removes_it(
    repo: Path,
) -> None:
    # Given a process killed by SIGKILL while it staged data/raw
    leftovers = _killed_while_staging(repo, "data/raw")

    # Then what it left lies only in the staging folder (ignored by git), not beside data/raw
    assert [path.name.split("+")[0] for path in leftovers] == ["data%2Fraw"]
    assert not (repo / "data" / "raw").exists()
    assert list((repo / "data").iterdir()) == []

    # When the next run stages data/raw again
    with staged_dir(repo / "data" / "raw") as staging:
        (staging / "normal").mkdir()

    # Then the dead process's leftovers are gone, and so is the staging folder
    assert not (repo / STAGING_DIR).exists()
    assert [path.name for path in (repo / "data" / "raw").iterdir()] == ["normal"]


def test_leftovers_of_other_targets_and_live_processes_are_kept(repo: Path) -> None:
    # Given a dead process's leftover for another target
    dead_other = _killed_while_staging(repo, "models")
    # and a live process staging the same target, waiting for its input
    code = """
        import sys
        from pathlib import Path
        from cxr.core.outputs import staged_dir
        with staged_dir(Path("data/raw")) as staging:
            (staging / "covid").mkdir()
            print(staging, flush=True)
            sys.stdin.readline()
    """
    live = _python(code, repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert live.stdout is not None and live.stdin is not None
        live_staging = Path(live.stdout.readline().strip())

        # When this process cleans up and stages the same target
        removed = remove_leftovers(repo / "data" / "raw")
        with staged_dir(repo / "data" / "raw") as staging:
            (staging / "normal").mkdir()

        # Then the live process's folder and the other target's leftover are untouched
        assert removed == []
        assert (live_staging / "covid").is_dir()
        assert all(path.exists() for path in dead_other)
    finally:
        if live.stdin is not None:
            live.stdin.close()
        assert live.wait(timeout=60) == 0
    # And the live process finished its own write normally
    assert [path.name for path in (repo / "data" / "raw").iterdir()] == ["covid"]


def test_the_previous_folder_is_moved_aside_before_the_new_one_replaces_it(repo: Path) -> None:
    # Given an existing output folder
    target = repo / "data" / "processed"
    target.mkdir(parents=True)
    (target / "train.parquet").write_bytes(b"old")

    # When a new one is staged, then while it is written the old one is still in place
    with staged_dir(target) as staging:
        (staging / "train.parquet").write_bytes(b"new")
        assert (target / "train.parquet").read_bytes() == b"old"

    # Then the new one replaced it and nothing is left in the staging folder
    assert (target / "train.parquet").read_bytes() == b"new"
    assert not (repo / STAGING_DIR).exists()


def test_outside_a_repository_temporaries_are_staged_beside_the_target(tmp_path: Path) -> None:
    # Given a target in no repository
    target = tmp_path / "out" / "table.csv"

    # When its staging folder is asked for
    # Then it is beside the target
    assert staging_dir(target) == target.parent / STAGING_DIR


def test_a_data_folder_on_another_filesystem_stages_on_that_filesystem(repo: Path) -> None:
    # Given data/ linked to a folder on another filesystem (a data disk mounted elsewhere)
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or elsewhere.stat().st_dev == repo.stat().st_dev:
        pytest.skip("needs a second filesystem (/dev/shm)")
    disk = elsewhere / f"cxr-test-{os.getpid()}"
    disk.mkdir()
    try:
        (repo / "data").symlink_to(disk)

        # When data/raw is staged
        with staged_dir(repo / "data" / "raw") as staging:
            # Then the temporary is on that filesystem, so the final rename stays atomic
            assert staging.stat().st_dev == disk.stat().st_dev
            (staging / "a.png").write_bytes(b"x")

        assert (disk / "raw" / "a.png").read_bytes() == b"x"
        assert sorted(path.name for path in disk.iterdir()) == ["raw"]
    finally:
        shutil.rmtree(disk)


def test_an_owner_token_names_a_live_process_until_it_ends() -> None:
    # Given this process, a process that ran and ended, and a token from another machine
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    ended_pid = int(ended.stdout)
    host = socket.gethostname()

    # Then this process is alive, the ended one is not, and another host's cannot be judged
    assert owner_alive(owner_token())
    assert not owner_alive(f"{host}+{ended_pid}+1")
    assert owner_alive(f"another-{host}+{ended_pid}+1")


def test_a_reused_pid_is_not_the_process_that_wrote_the_token() -> None:
    # Given a token with this process's pid but another start time (pid reused after a crash)
    host, pid, started = owner_token().split("+")
    if started == "-":
        pytest.skip("process start times need Linux /proc")

    # Then it names a process that has ended
    assert not owner_alive(f"{host}+{pid}+{int(started) + 1}")


def test_write_json_refuses_nan_and_infinity_naming_where_they_are(tmp_path: Path) -> None:
    # Given payloads holding NaN or an infinity, nested in a mapping and a list
    path = tmp_path / "metrics" / "summary.json"
    payload = {"ci": [0.1, inf], "per_class": {"covid": {"auc": None}}, "test_ece": float("nan")}

    # When one is written, then it is refused, naming every offending key, and nothing is written
    with pytest.raises(ValueError, match=r"summary\.json: ci\[1\], test_ece not a finite number"):
        write_json(path, payload)
    assert not path.exists()

    # and the same payload with None where no value exists parses with a strict parser
    write_json(path, {**payload, "test_ece": json_number(float("nan")), "ci": [0.1, None]})
    strict = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse)
    assert strict["test_ece"] is None and strict["ci"] == [0.1, None]


@pytest.mark.parametrize(
    ("value", "number"),
    [(0.25, 0.25), (np.float32(0.5), 0.5), (3, 3.0), (None, None), (float("nan"), None),
     (pd.NA, None), (-inf, None), (np.inf, None)],
)  # fmt: skip
def test_json_number_is_a_finite_float_or_none(value: object, number: float | None) -> None:
    assert json_number(value) == number


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_threads_writing_outputs_at_once_never_trip_over_the_shared_staging_folder(
    tmp_path: Path,
) -> None:
    # given four threads each writing 60 outputs through the one staging folder, which each
    # write creates when it is missing and removes when it leaves it empty
    (tmp_path / ".git").mkdir()

    def write_many(thread: int) -> None:
        for index in range(60):
            with staged_file(tmp_path / "out" / f"{thread}-{index}.txt") as staging:
                staging.write_text(str(index))

    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "out").mkdir()
    # when they all run, then every write succeeds (none loses the race between one thread's
    # mkdir and another's rmdir) and nothing is left staged
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write_many, range(4)))
    assert len(list((tmp_path / "out").iterdir())) == 240
    assert not (tmp_path / ".staging").exists()
