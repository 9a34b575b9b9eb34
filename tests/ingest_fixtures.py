"""Files for the ingest tests: a dataset's files are only listed there, never decoded."""

from __future__ import annotations

from pathlib import Path


def touch(path: Path, content: bytes = b"\x89PNG fake") -> None:
    """A file with some bytes at path, its folders created (decoding is build's job)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
