"""A stage's warnings about its data: one line each on stderr, and counted for its metrics.

Warnings say what looks wrong but is not fatal (a class missing from a split, rows dropped);
their counts by kind go into the stage's metrics JSON, so `dvc exp show` and a diff show them.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import TextIO


class DataWarnings:
    """Collects a stage's warnings: each printed once as it happens, counted by kind."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.counts: Counter[str] = Counter()
        self.messages: list[str] = []

    def warn(self, kind: str, message: str) -> None:
        """Print `warning: <message>` on one line and count it under `kind` (snake_case)."""
        line = " ".join(message.split())  # one line, whatever the message held
        self.counts[kind] += 1
        self.messages.append(line)
        print(f"warning: {line}", file=self.stream or sys.stderr)

    def to_metrics(self) -> dict[str, int]:
        """Warnings per kind, sorted, for the stage's metrics JSON ({} when there were none)."""
        return dict(sorted(self.counts.items()))
