"""Tests for quiet-by-default runs (cxr/core/quiet.py): library chatter dropped, our lines kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.core.quiet import LIBRARY_NOISE, quiet_libraries, verbose_requested

# A program that goes quiet, imports TensorFlow (whose C++ start-up lines go straight to fd 2),
# then writes our own kinds of lines: a stdout result, a warning, a C++ error, a fatal error.
PROGRAM = """
import os, sys
from cxr.core.quiet import quiet_process
if __name__ == "__main__":
    quiet_process()
    import tensorflow as tf
    tf.constant(1.0) + 1.0
    print("result line")
    print("warning: a data warning of ours", file=sys.stderr)
    os.write(2, b"E0000 00:00:1.2   42 some_op.cc:1] an unexpected C++ error\\n")
    raise SystemExit("error: one line naming what to fix")
"""


def _run(tmp_path: Path, verbose: str | None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CXR_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")
    }
    if verbose is not None:
        environment["CXR_VERBOSE"] = verbose
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=environment
    )


def test_a_quiet_program_shows_only_its_own_lines_and_real_errors(tmp_path: Path) -> None:
    # When the program runs with the default settings
    completed = _run(tmp_path, verbose=None)

    # Then stdout has its result and stderr exactly our warning, the real error and the exit line
    assert completed.returncode == 1
    assert completed.stdout == "result line\n"
    assert completed.stderr.splitlines() == [
        "warning: a data warning of ours",
        "E0000 00:00:1.2   42 some_op.cc:1] an unexpected C++ error",
        "error: one line naming what to fix",
    ]


def test_cxr_verbose_lets_every_library_line_through(tmp_path: Path) -> None:
    # When CXR_VERBOSE=1 asks for everything
    completed = _run(tmp_path, verbose="1")

    # Then our lines are there and nothing was filtered or defaulted (TensorFlow's own level)
    assert "warning: a data warning of ours" in completed.stderr
    assert "error: one line naming what to fix" in completed.stderr
    assert completed.stdout == "result line\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("0", False), ("false", False), ("1", True), ("yes", True)],
)
def test_verbose_is_requested_by_any_value_but_off_words(value: str | None, expected: bool) -> None:
    environ = {} if value is None else {"CXR_VERBOSE": value}
    assert verbose_requested(environ) is expected


def test_library_settings_keep_what_the_user_set() -> None:
    # Given a user who asked TensorFlow for its info lines
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}

    # When the quiet settings are applied
    quiet_libraries(environ)

    # Then their choice stands and the MLflow upload bars are off
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


@pytest.mark.parametrize(
    "line",
    [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795511508.048276   19697 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1795511508.049783   19697 cudart_stub.cc:31] Could not find cuda drivers",
        "E0000 00:00:1795511512.691428   19697 cuda_platform.cc:52] failed call to cuInit: X",
        "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.",
        "2026/12/06 12:40:32 INFO mlflow.store.db.utils: Creating initial MLflow database tables",
        "2026/12/06 12:50:46 INFO mlflow.pyfunc: Validating input example against model signature",
        "2026/12/06 12:50:46 WARNING mlflow.pyfunc: Passing a Python object as `python_model` "
        "causes it to be serialized using CloudPickle, it requires exercising caution",
        "Successfully registered model 'cxr-classifier'.",
        "Created version '1' of model 'cxr-classifier'.",
        "Registered model 'cxr-classifier' already exists. Creating a new version of this model...",
    ],
)
def test_library_start_up_lines_are_noise(line: str) -> None:
    assert LIBRARY_NOISE.match(line)


@pytest.mark.parametrize(
    "line",
    [
        "error: data.source: no such folder",
        "warning: 3 images of class covid are copies of test images",
        "E0000 00:00:1.2   42 bfc_allocator.cc:1] Allocator ran out of memory",
        "Traceback (most recent call last):",
        "2026/12/06 12:50:46 WARNING mlflow.tracking: the store could not be reached",
    ],
)
def test_our_lines_and_real_errors_are_not_noise(line: str) -> None:
    assert not LIBRARY_NOISE.match(line)
