"""Atomic writes: a stage's outputs appear complete or not at all, and a crash leaves no debris.

Temporaries are staged in one folder at the repository root, `.staging/` (ignored by git and
DVC), on the same filesystem as the outputs so the final rename stays atomic. Each temporary is
named after its target and the process that writes it (host, pid, start time), so the next
write of the same target removes what a killed process left there, and never touches what a
live one is still writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.processes import owner_alive, owner_token

STAGING_DIR = ".staging"
# Where git and DVC find a repository's root: the staging folder goes there.
ROOT_MARKERS = (".dvc", ".git")
# Separates a temporary's fields: target, host, pid, start time, random part (quote() escapes it).
FIELD_SEPARATOR = "+"
# Longer target names are shortened to a digest, so a temporary's name stays a valid file name.
MAX_KEY_LENGTH = 100
# How often to retry creating a temporary when another process removed the empty staging folder.
STAGING_ATTEMPTS = 5

T = TypeVar("T")


def _current_umask() -> int:
    """The process umask (reading it requires setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_dir(target: Path) -> Path:
    """The folder where temporaries for `target` are staged: `.staging/` at the repository root.

    Outside a repository, or when the target lies on another filesystem than the root (a data
    folder mounted from another disk), it is `.staging/` beside the target, so the final rename
    stays atomic.
    """
    parent = target.parent.absolute()
    root = next(
        (
            folder
            for folder in (parent, *parent.parents)
            if any((folder / marker).exists() for marker in ROOT_MARKERS)
        ),
        parent,
    )
    if root != parent and root.stat().st_dev != parent.stat().st_dev:
        root = parent
    return root / STAGING_DIR


def _target_key(target: Path, staging: Path) -> str:
    """The target's path relative to the staging folder's root, as one file-name field."""
    absolute = target.absolute()
    relative = absolute.relative_to(staging.parent).as_posix()
    key = quote(relative, safe="")
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(relative.encode()).hexdigest()[:16]
        key = f"{digest}-{quote(absolute.name, safe='')[-MAX_KEY_LENGTH // 2 :]}"
    return key


def _remove(path: Path) -> None:
    """Delete a file or folder; one another process removed meanwhile is no error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(target: Path) -> list[Path]:
    """Delete the temporaries of `target` that processes no longer running left; return them."""
    staging = staging_dir(target)
    try:
        entries = list(staging.iterdir())
    except FileNotFoundError:
        return []  # none yet, or another writer just removed it empty
    key = _target_key(target, staging)
    removed = []
    for entry in entries:
        fields = entry.name.split(FIELD_SEPARATOR, 4)
        if len(fields) != 5 or fields[0] != key:
            continue
        if not owner_alive(FIELD_SEPARATOR.join(fields[1:4])):
            _remove(entry)
            removed.append(entry)
    return removed


def _in_staging(staging: Path, create: Callable[[], T]) -> T:
    """Create a temporary in `staging`, making the folder first (again if it vanished meanwhile)."""
    for _ in range(STAGING_ATTEMPTS - 1):
        try:
            staging.mkdir(parents=True, exist_ok=True)
            return create()
        except (FileNotFoundError, FileExistsError):
            # Another writer removed the empty folder meanwhile: between our two calls, or
            # inside mkdir, after it found the folder there and before it checked it is one.
            continue
    staging.mkdir(parents=True, exist_ok=True)
    return create()


def _tidy(staging: Path) -> None:
    """Remove the staging folder when it is empty, so a clean run leaves nothing behind."""
    with contextlib.suppress(OSError):
        staging.rmdir()  # fails, as it should, while anything is staged in it


def _prefix(target: Path) -> tuple[Path, str]:
    """The staging folder for `target`, cleared of dead leftovers, and the prefix of its names."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target)
    remove_leftovers(target)
    fields = (_target_key(target, staging), owner_token(), "")
    return staging, FIELD_SEPARATOR.join(fields)


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the staging folder; rename it onto `path` only on success.

    The temporary ends with `path`'s suffixes (`.weights.h5`, `.npy`), which some writers need.
    """
    staging, prefix = _prefix(path)
    suffix = "".join(path.suffixes)
    handle, name = _in_staging(
        staging, lambda: tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=staging)
    )
    os.close(handle)
    temporary = Path(name)
    # mkstemp creates 0600 files; outputs should get the permissions a plain write would.
    os.chmod(temporary, 0o666 & ~_current_umask())
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        _tidy(staging)


@contextlib.contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder in the staging folder; it replaces `path` only on success.

    The previous `path` is first renamed into the staging folder and deleted only after the new
    one is in place, so a crash at any moment leaves the old folder, the new one or none, never
    a half-deleted one.
    """
    staging, prefix = _prefix(path)
    temporary = Path(_in_staging(staging, lambda: tempfile.mkdtemp(prefix=prefix, dir=staging)))
    os.chmod(temporary, 0o777 & ~_current_umask())  # mkdtemp makes 0700 directories
    previous: Path | None = None
    try:
        yield temporary
        if os.path.lexists(path):
            previous = Path(tempfile.mkdtemp(prefix=prefix, dir=staging))
            previous.rmdir()  # only its unique name is needed: rename cannot replace a folder
            os.replace(path, previous)
        try:
            os.replace(temporary, path)
        except OSError:
            if previous is not None:
                os.replace(previous, path)
                previous = None
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        if previous is not None:
            _remove(previous)
        _tidy(staging)


def json_number(value: Any) -> float | None:
    """`value` as a float for strict JSON: None when it is missing (None, NaN, NA) or infinite."""
    if value is None or pd.isna(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def non_finite_keys(payload: Any, key: str = "") -> list[str]:
    """Where `payload` holds NaN or an infinity: dotted keys, list items as [index]."""
    if isinstance(payload, float):
        return [] if math.isfinite(payload) else [key or "the value"]
    if isinstance(payload, Mapping):
        return [
            found
            for name, value in payload.items()
            for found in non_finite_keys(value, f"{key}.{name}" if key else str(name))
        ]
    if isinstance(payload, list | tuple):
        return [
            found
            for index, value in enumerate(payload)
            for found in non_finite_keys(value, f"{key}[{index}]")
        ]
    return []


def write_json(path: Path, payload: Any) -> None:
    """Write strict JSON atomically, keys sorted so diffs stay small.

    NaN and Infinity are refused: they are not JSON, and strict parsers (a browser's
    JSON.parse) reject the whole file. A value that does not exist is None (null).
    """
    try:
        text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as error:
        found = non_finite_keys(payload)
        if not found:
            raise
        raise ValueError(
            f"{path}: {', '.join(found)} not a finite number; JSON has no NaN or Infinity, "
            "so a value that does not exist must be None (null)"
        ) from error
    with staged_file(path) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")


def write_results(
    summary: Path, metrics: Path, results: Mapping[str, Any], headline: Sequence[str]
) -> None:
    """Every result to `summary`; the `headline` keys (those present) to the DVC `metrics` file."""
    write_json(summary, dict(results))
    write_json(metrics, {key: results[key] for key in headline if key in results})


def write_table(path: Path, table: pd.DataFrame) -> None:
    """Write a parquet or CSV table atomically (format from the suffix)."""
    with staged_file(path) as temporary:
        if path.suffix == ".csv":
            table.to_csv(temporary, index=False)
        else:
            table.to_parquet(temporary, index=False)


def read_json(path: Path) -> Any:
    """Read a JSON file written by an earlier stage."""
    return json.loads(path.read_text(encoding="utf-8"))


def read_json_record(path: Path, missing: str, invalid: str) -> Any:
    """A stage's JSON record; a one-line error ending in `missing` or `invalid` (what to run)."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing; {missing}")
    try:
        return read_json(path)
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path}: not valid JSON ({error}); {invalid}") from None


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and release its memory."""
    import matplotlib.pyplot as plt

    with staged_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
