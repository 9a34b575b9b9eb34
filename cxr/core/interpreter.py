"""The project's Python: a stage started by a Python lacking the packages re-runs in .venv.

DVC runs each stage's `cmd` (`python3 -m stages.<name>`) with whatever `python3` comes first on
PATH, not with the interpreter DVC itself runs in. So `.venv/bin/dvc repro` in a shell where the
venv is not activated would start the stages with the system Python, which lacks TensorFlow,
MLflow and the rest. Instead of failing there, a stage looks for the checkout's `.venv` (in the
working directory or above it: DVC's temporary and queued experiments run in copies under
`.dvc/tmp`) and re-executes the same command line with that venv's Python, its `bin` first on
PATH for whatever the stage starts. Only the standard library is imported here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Top-level modules of the project's dependencies: a Python that finds them all runs the stage,
# with the module of the Keras backend it runs (KERAS_BACKEND, TensorFlow by default).
REQUIRED_MODULES = ("yaml", "numpy", "pandas", "sklearn", "mlflow", "keras", "PIL")
# Set on the re-executed process, so a venv that is itself incomplete fails instead of looping.
REEXEC_VARIABLE = "CXR_REEXECUTED"
VENV_PYTHON = Path(".venv") / "bin" / "python"


class MissingPackagesError(SystemExit):
    """The running Python lacks the project's packages and no .venv can take over."""


def required_modules(environ: Mapping[str, str]) -> tuple[str, ...]:
    """REQUIRED_MODULES and the Keras backend's: tensorflow, or jax under KERAS_BACKEND=jax."""
    backend = environ.get("KERAS_BACKEND", "").strip() or "tensorflow"
    return (*REQUIRED_MODULES, backend)


def missing_modules(modules: Sequence[str] | None = None) -> list[str]:
    """The modules of `modules` (default: required_modules) this Python cannot import.

    Found without importing them.
    """
    wanted = required_modules(os.environ) if modules is None else modules
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def find_project_python(start: Path) -> Path | None:
    """The `.venv/bin/python` of `start` or of the nearest folder above it that has one."""
    for folder in (start, *start.parents):
        candidate = folder / VENV_PYTHON
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def reexec_command(
    missing: Sequence[str],
    cwd: Path,
    environ: Mapping[str, str],
    orig_argv: Sequence[str],
    executable: str,
) -> tuple[Path, list[str], dict[str, str]] | None:
    """What to execute instead of this process (python, argv, environment); None to go on.

    None when nothing is missing. Raises MissingPackagesError, with one line naming this Python,
    what it lacks and how to get the project's, when no venv can take over.
    """
    if not missing:
        return None
    python = find_project_python(cwd)
    if python is None or environ.get(REEXEC_VARIABLE) or Path(executable) == python:
        where = f"{python} also lacks them" if python else "no .venv found here or above"
        raise MissingPackagesError(
            f"error: {executable} cannot import {', '.join(missing)} ({where}): run `make install`"
            " in the repository root, then `. .venv/bin/activate`, or put .venv/bin first on PATH"
        )
    env = dict(environ)
    env["PATH"] = os.pathsep.join(filter(None, [str(python.parent), environ.get("PATH")]))
    env[REEXEC_VARIABLE] = "1"
    return python, [str(python), *orig_argv[1:]], env


def ensure_project_python() -> None:
    """Re-execute this command with the checkout's .venv Python when this one lacks packages."""
    command = reexec_command(
        missing_modules(), Path.cwd(), os.environ, sys.orig_argv, sys.executable
    )
    if command is not None:
        python, argv, env = command
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(python, argv, env)
