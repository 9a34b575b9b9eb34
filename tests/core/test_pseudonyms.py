"""The per-checkout pseudonym key and keyed hashes (cxr/core/pseudonyms.py)."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cxr.core.errors import PipelineError
from cxr.core.pseudonyms import KEY_FILE, Pseudonyms, key_path, load_or_create_key, pseudonym

ROOT = Path(__file__).resolve().parents[2]


def test_the_key_is_created_once_owner_only(tmp_path: Path) -> None:
    # When the key of a fresh checkout is asked for twice
    path = key_path(tmp_path)
    first = load_or_create_key(path)
    second = load_or_create_key(path)

    # Then it is 32 random bytes written once, as hex, readable by its owner only
    assert path == tmp_path / ".cxr" / "pseudonym.key"
    assert first == second and len(first) == 32
    assert path.read_text() == first.hex() + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [entry.name for entry in path.parent.iterdir()] == ["pseudonym.key"]  # no temporaries


def test_processes_creating_the_key_at_once_agree_on_one(tmp_path: Path) -> None:
    # When eight threads create the key of one checkout at the same time
    path = key_path(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key(path), range(8)))

    # Then all use the one key that ended up in the file
    assert keys == {bytes.fromhex(path.read_text())}


def test_a_damaged_key_is_a_one_line_error(tmp_path: Path) -> None:
    path = key_path(tmp_path)
    path.parent.mkdir()
    path.write_text("not a key\n")
    with pytest.raises(PipelineError, match=r"pseudonym.key: not a pseudonym key \(64 hex digits"):
        load_or_create_key(path)


def test_a_pseudonym_is_a_truncated_hmac_of_attribute_and_value() -> None:
    key = bytes(range(32))
    expected = hmac.new(key, b"PatientID\0PAT-1", hashlib.sha256).hexdigest()[:16]
    assert pseudonym(key, "PatientID", "PAT-1") == expected
    assert pseudonym(key, "StudyInstanceUID", "PAT-1") != expected  # attributes kept apart
    assert pseudonym(bytes(32), "PatientID", "PAT-1") != expected  # another key
    assert pseudonym(key, "PatientID", "") == ""


def test_the_key_is_read_only_when_a_pseudonym_is_needed(tmp_path: Path) -> None:
    pseudonyms = Pseudonyms(tmp_path)
    assert pseudonyms("PatientID", "") == "" and not (tmp_path / ".cxr").exists()
    assert len(pseudonyms("PatientID", "PAT-1")) == 16 and (tmp_path / KEY_FILE).is_file()
    assert pseudonyms.key.hex() not in repr(pseudonyms)


def test_the_key_is_ignored_by_git_and_dvc(tmp_path: Path) -> None:
    # Given a git repository with the project's .gitignore and .dvcignore, and a key
    shutil.copy2(ROOT / ".gitignore", tmp_path / ".gitignore")
    shutil.copy2(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    load_or_create_key(key_path(tmp_path))

    # Then git ignores it, and .dvcignore names its folder
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(KEY_FILE)], cwd=tmp_path, check=False
    )
    assert ignored.returncode == 0
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ".cxr" not in status
    assert "/.cxr/" in (tmp_path / ".dvcignore").read_text().splitlines()
