"""The committed dvc.lock matches the code and params: a fresh clone re-runs nothing needlessly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from dvc.repo import Repo
from dvc_data.hashfile.build import build
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
# Stage code lives here; data deps (data/...) are checked by DVC itself against the cache.
CODE_FOLDERS = ("stages/", "cxr/")


def _load(name: str) -> dict[str, Any]:
    # YAML 1.2, as DVC reads and writes these files: `1e-05` is a number there, a string in 1.1.
    loaded: dict[str, Any] = YAML(typ="safe").load((ROOT / name).read_text(encoding="utf-8"))
    return loaded


def _lock_stages() -> dict[str, Any]:
    return _load("dvc.lock")["stages"]


def _locked(stage: str) -> list[tuple[str, dict[str, Any]]]:
    """The lock entries of a dvc.yaml stage: itself, or external@<name> for each foreach item."""
    return [
        (name, entry)
        for name, entry in _lock_stages().items()
        if name == stage or name.startswith(f"{stage}@")
    ]


def _declared_deps(stage: str, name: str) -> set[str]:
    """dvc.yaml's deps of a lock entry, ${key} replaced by its foreach key."""
    body = _load("dvc.yaml")["stages"][stage]
    deps = body.get("do", body).get("deps", [])
    return {dep.replace("${key}", name.partition("@")[2]) for dep in deps}


def dvc_md5(path: str) -> str:
    """DVC's md5 of a repository file (of its bytes) or folder (`<md5>.dir`, .dvcignore applied)."""
    if (ROOT / path).is_file():
        return hashlib.md5((ROOT / path).read_bytes()).hexdigest()  # noqa: S324  DVC's hash
    repo = Repo(str(ROOT))
    try:
        # DVC's own tree hash, without writing to the cache (dry run)
        _, _, tree = build(
            repo.cache.local, str(ROOT / path), repo.fs, "md5", ignore=repo.dvcignore, dry_run=True
        )
    finally:
        repo.close()
    return str(tree.hash_info.value)


def _dotted(params: dict[str, Any], key: str, missing: Any = None) -> Any:
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return missing
        value = value[part]
    return value


@pytest.mark.parametrize("stage", sorted(_load("dvc.yaml")["stages"]))
def test_every_code_dep_in_dvc_lock_has_the_committed_files_md5(stage: str) -> None:
    # Given the stage's code deps as dvc.lock recorded them
    recorded = {
        dep["path"]: dep["md5"]
        for _, entry in _locked(stage)
        for dep in entry["deps"]
        if dep["path"].startswith(CODE_FOLDERS)
    }

    # When the files and folders in the repository are hashed as DVC 3 hashes them
    current = {path: dvc_md5(path) for path in recorded if (ROOT / path).exists()}

    # Then nothing changed since the lock was written (else: run `dvc repro` and commit dvc.lock)
    stale = sorted(path for path in recorded if current.get(path) != recorded[path])
    assert not stale, f"dvc.lock is stale for stage {stage!r}: {stale}; run dvc repro"


@pytest.mark.parametrize("stage", sorted(_load("dvc.yaml")["stages"]))
def test_dvc_lock_lists_exactly_the_deps_of_dvc_yaml(stage: str) -> None:
    # A foreach stage (external) has one entry per item, none while its mapping is empty.
    for name, entry in _locked(stage):
        locked = {dep["path"] for dep in entry["deps"]}
        declared = _declared_deps(stage, name)
        assert locked == declared, (
            f"dvc.lock and dvc.yaml disagree on {name!r}'s deps; run dvc repro"
        )


@pytest.mark.parametrize("stage", sorted(_load("dvc.yaml")["stages"]))
def test_dvc_lock_params_equal_params_yaml(stage: str) -> None:
    # Given the params values dvc.lock recorded for the stage
    recorded = {
        key: value
        for _, entry in _locked(stage)
        for key, value in entry.get("params", {}).get("params.yaml", {}).items()
    }
    params = _load("params.yaml")

    # Then params.yaml still holds the same values (a dataset no longer there: changed too)
    changed = sorted(
        key for key, value in recorded.items() if _dotted(params, key, missing=None) != value
    )
    assert not changed, f"params.yaml changed {changed} since dvc.lock ({stage!r}); run dvc repro"
