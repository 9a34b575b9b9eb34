"""Quiet by default: a stage or predict prints its own lines, not the libraries' start-up chatter.

TensorFlow, XLA and oneDNN log from C++ straight to file descriptor 2, some of it before absl
is initialised, so neither TF_CPP_MIN_LOG_LEVEL nor Python's logging reaches all of it. When a
stage runs as a program, fd 2 is therefore passed through a filter that drops those lines (the
informational and warning ones, and the known-harmless "no GPU" errors) and forwards the rest,
so real errors and our own warnings still show. `CXR_VERBOSE=1` turns all of this off.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import MutableMapping

VERBOSE_VARIABLE = "CXR_VERBOSE"

# Lines the libraries print that say nothing a user acts on. Errors stay, except the ones a
# machine without a GPU always prints.
LIBRARY_NOISE = re.compile(
    r"""^(?:
      WARNING:\ All\ log\ messages\ before\ absl::InitializeLog\(\)
    | [IW]\d{4}\ [\d:.]+\s+\d+\ [\w./-]+:\d+\]                  # absl INFO / WARNING lines
    | \d{4}-\d\d-\d\d\ [\d:.]+:\ [IW]\ [\w./-]+:\d+\]            # TensorFlow's older format
    | E\d{4}\ [\d:.]+\s+\d+\ [\w./-]+:\d+\]\ failed\ call\ to\ cuInit
    | E\d{4}\ [\d:.]+\s+\d+\ [\w./-]+:\d+\]\ Unable\ to\ register\ cu\w+\ factory
    | To\ enable\ the\ following\ instructions:.*rebuild\ TensorFlow
    )""",
    re.VERBOSE,
)

# Python warnings that libraries raise on every run of a correct pipeline.
HARMLESS_WARNINGS = (
    r"(?s).*Add type hints to the `predict` method",
    r"(?s).*Do not pass an `input_shape`/`input_dim` argument to a layer",
    r"(?s).*cloudpickle",
)


def verbose_requested(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether CXR_VERBOSE asks for every library line (any value but empty, 0 or false)."""
    value = (os.environ if environ is None else environ).get(VERBOSE_VARIABLE, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def quiet_libraries(environ: MutableMapping[str, str] | None = None) -> None:
    """Library settings for a quiet run (values the user set in the environment are kept)."""
    environ = os.environ if environ is None else environ
    # Must be set before TensorFlow is imported: it reads them once.
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # MLflow's per-artifact upload bars are noise for a few small files.
    environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # MLflow's INFO lines (run links, registry notes) repeat what the stage prints itself.
    logging.getLogger("mlflow").setLevel(logging.WARNING)


class _StderrFilter:
    """Moves fd 2 onto a pipe; a thread forwards what is not LIBRARY_NOISE to the real stderr."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._real_stderr = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        # Kept to write the end-of-stream marker: child processes (e.g. a forkserver) inherit
        # fd 2 and may outlive us, so the pipe need not see end-of-file when we finish.
        self._marker_end = write_end
        self._marker = f"\0cxr-stderr-filter-end-{os.getpid()}\n".encode()
        self._reader = threading.Thread(
            target=self._forward, args=(read_end,), name="stderr-filter", daemon=True
        )
        self._reader.start()
        atexit.register(self.close)

    def _forward(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if line == self._marker:
                    return
                if not LIBRARY_NOISE.match(line.decode("utf-8", "replace")):
                    os.write(self._real_stderr, line)

    def close(self) -> None:
        """Put the real stderr back and forward what is still in the pipe."""
        with contextlib.suppress(ValueError):  # sys.stderr already closed at interpreter exit
            sys.stderr.flush()
        os.dup2(self._real_stderr, 2)
        # Everything written before the marker is forwarded before the reader stops.
        os.write(self._marker_end, self._marker)
        self._reader.join(timeout=5.0)


def quiet_process() -> None:
    """Unless CXR_VERBOSE is set: quiet library settings and the stderr filter, for a program."""
    if verbose_requested():
        return
    quiet_libraries()
    _StderrFilter()
