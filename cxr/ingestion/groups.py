"""data.group_pattern: the group of each file (patient, study, paper) read from its path.

The split keeps a group in one split; files of one patient in train and test would let a
model recognise the patient rather than the finding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from cxr.core.warnings import DataWarnings
from cxr.ingestion.layouts import Entry


def path_group(pattern: re.Pattern[str], path: str) -> str:
    """The text of the pattern's first group in a path, or '' where it does not match."""
    match = pattern.search(path)
    return (match.group(1) or "") if match else ""


def apply_group_pattern(
    entries: Sequence[Entry], pattern: str, warnings: DataWarnings
) -> list[Entry]:
    """Each entry with its group from the pattern; a path it does not match keeps group ''."""
    if not pattern:
        return list(entries)
    compiled = re.compile(pattern)
    grouped = [
        replace(entry, group=path_group(compiled, entry.path)) if entry.path else entry
        for entry in entries
    ]
    unmatched = [entry.path for entry in grouped if entry.path and not entry.group]
    if unmatched:
        files = sum(1 for entry in grouped if entry.path)
        warnings.warn(
            "group_pattern_unmatched",
            f"data.group_pattern = {pattern!r} finds no group in {len(unmatched)} of {files} "
            f"files (e.g. {unmatched[0]!r}); each of them is a group of its own",
        )
    return grouped
