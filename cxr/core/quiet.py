"""Quiet by default: a stage or predict prints its own lines, not the libraries' start-up chatter.

TensorFlow, XLA and oneDNN log from C++ straight to file descriptor 2, some of it before absl
is initialised, so neither TF_CPP_MIN_LOG_LEVEL nor Python's logging reaches all of it. When a
stage runs as a program, fd 2 is therefore passed through a filter that drops those lines (the
informational and warning ones, and the known-harmless "no GPU" errors) and forwards the rest,
so real errors and our own warnings still show. `CXR_VERBOSE=1` turns all of this off.

The filter forwards a progress bar's redraws (text after a carriage return) as they come, and
records in CXR_STDERR_TERMINAL whether the real stderr is a terminal (fd 2 is a pipe now), so
cxr.core.progress draws a bar there and prints plain lines into a log.
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
STDERR_TERMINAL_VARIABLE = "CXR_STDERR_TERMINAL"

# What the filter reads from the pipe at a time, and how it cuts that into pieces: each ends at
# a newline or at a carriage return (where a progress bar starts redrawing its line).
PIPE_READ_BYTES = 1 << 16
LINE_PIECE = re.compile(rb"[^\r\n]*[\r\n]")

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
    | \d{4}/\d\d/\d\d\ [\d:]+\ INFO\ mlflow[\w.]*:                # MLflow's INFO lines
    | \d{4}/\d\d/\d\d\ [\d:]+\ WARNING\ mlflow\.pyfunc:\ Passing\ a\ Python\ object
    | Successfully\ registered\ model\ '                          # compare prints the champion
    | Created\ version\ '\d+'\ of\ model\ '
    | Registered\ model\ '[^']*'\ already\ exists\.\ Creating\ a\ new\ version
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
        pending = b""
        # Text after a carriage return redraws a progress bar's line; library noise never does,
        # so it is forwarded as it comes, not held back until the line ends.
        redrawing = False
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(PIPE_READ_BYTES):
                pending += chunk
                start = 0
                for piece in LINE_PIECE.finditer(pending):
                    start = piece.end()
                    if piece.group().endswith(self._marker):
                        self._pass(piece.group()[: -len(self._marker)], redrawing)
                        return
                    self._pass(piece.group(), redrawing)
                    redrawing = piece.group().endswith(b"\r")
                pending = pending[start:]
                if redrawing:
                    # Up to a NUL only: the end marker starts with one and may come in halves.
                    text, nul, rest = pending.partition(b"\0")
                    self._pass(text, redrawing)
                    pending = nul + rest
        self._pass(pending, redrawing)

    def _pass(self, piece: bytes, redrawing: bool) -> None:
        """Forward a piece of a line unless it is a whole line of LIBRARY_NOISE."""
        if piece and (redrawing or not LIBRARY_NOISE.match(piece.decode("utf-8", "replace"))):
            os.write(self._real_stderr, piece)

    def close(self) -> None:
        """Put the real stderr back and forward what is still in the pipe."""
        with contextlib.suppress(ValueError):  # sys.stderr already closed at interpreter exit
            sys.stderr.flush()
        os.dup2(self._real_stderr, 2)
        # Everything written before the marker is forwarded before the reader stops.
        os.write(self._marker_end, self._marker)
        self._reader.join(timeout=5.0)


def stderr_is_terminal(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether fd 2 shows on a terminal, also when quiet_process has piped it through the filter."""
    environ = os.environ if environ is None else environ
    return os.isatty(2) or environ.get(STDERR_TERMINAL_VARIABLE) == "1"


def quiet_process() -> None:
    """Unless CXR_VERBOSE is set: quiet library settings and the stderr filter, for a program."""
    # Set in every program, so a value inherited from a parent never speaks for this stderr.
    os.environ[STDERR_TERMINAL_VARIABLE] = "1" if os.isatty(2) else "0"
    if verbose_requested():
        return
    quiet_libraries()
    _StderrFilter()
