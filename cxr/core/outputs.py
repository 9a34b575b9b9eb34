"""Atomic writes: a stage's outputs appear complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


def _current_umask() -> int:
    """The process umask (reading it requires setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent
    )
    os.close(handle)
    # mkstemp creates 0600 files; outputs should get the permissions a plain write would.
    os.chmod(temporary, 0o666 & ~_current_umask())
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; it replaces `path` only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(temporary, 0o777 & ~_current_umask())  # mkdtemp makes 0700 directories
    try:
        yield temporary
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically, keys sorted so diffs stay small."""
    with staged_file(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and release its memory."""
    import matplotlib.pyplot as plt

    with staged_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
