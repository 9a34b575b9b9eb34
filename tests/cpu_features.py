"""Run Python in a subprocess with NumPy's run-time CPU dispatch turned off (another "machine")."""

from __future__ import annotations

import os
import subprocess
import sys

from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__


def dispatched_features() -> list[str]:
    """The SIMD targets NumPy dispatches to on this CPU (empty on a baseline-only CPU)."""
    return [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]


def run_without_dispatch(code: str) -> str:
    """Run `code` with every dispatched SIMD target disabled; return its stdout."""
    environment = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(dispatched_features())}
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout
