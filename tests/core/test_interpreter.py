"""Tests for cxr/core/interpreter.py: a stage started by a bare Python re-runs in the venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import ROOT, clean_env, copy_project, git_repo, run

from cxr.core.interpreter import (
    REEXEC_VARIABLE,
    MissingPackagesError,
    find_project_python,
    missing_modules,
    reexec_command,
    required_modules,
)


def fake_venv(folder: Path) -> Path:
    """An executable `.venv/bin/python` in `folder` (a script: nothing runs it here)."""
    python = folder / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return python


def test_this_python_has_every_module_the_stages_need() -> None:
    # Given the interpreter the tests run in (the project's), when asked what it lacks
    # Then nothing, and a module that does not exist is named
    assert missing_modules() == []
    assert missing_modules(("yaml", "no_such_module_cxr")) == ["no_such_module_cxr"]


@pytest.mark.parametrize(
    ("environ", "backend", "absent"),
    [({}, "tensorflow", "jax"), ({"KERAS_BACKEND": "jax"}, "jax", "tensorflow")],
)
def test_a_stage_needs_the_module_of_its_keras_backend_only(
    environ: dict[str, str], backend: str, absent: str
) -> None:
    # Given KERAS_BACKEND unset or jax, When the required modules are listed
    modules = required_modules(environ)
    # Then the backend's module is one of them and the other backend's is not (a machine with
    # JAX and no TensorFlow runs the stages on JAX)
    assert backend in modules and absent not in modules and "keras" in modules


def test_the_venv_is_found_in_the_working_directory_or_above(tmp_path: Path) -> None:
    # Given a checkout with .venv and a DVC temporary experiment copy below it
    python = fake_venv(tmp_path)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp1234"
    copy.mkdir(parents=True)
    # Then both find the checkout's venv, and a folder outside it finds none
    assert find_project_python(tmp_path) == python
    assert find_project_python(copy) == python
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    assert find_project_python(outside) is None


def test_nothing_missing_runs_the_stage_in_this_python(tmp_path: Path) -> None:
    assert reexec_command([], tmp_path, {}, ["python", "-m", "stages.train"], "python") is None


def test_a_bare_python_re_executes_the_same_command_in_the_venv(tmp_path: Path) -> None:
    # Given a checkout with .venv, and a Python without mlflow running `-m stages.evaluate --x`
    python = fake_venv(tmp_path)
    argv = ["/usr/bin/python3", "-m", "stages.external", "held_back"]
    # When the command to run instead is worked out
    command = reexec_command(["mlflow"], tmp_path, {"PATH": "/usr/bin"}, argv, "/usr/bin/python3")
    # Then it is the same arguments with the venv's Python, its bin first on PATH, marked
    assert command is not None
    executable, new_argv, env = command
    assert executable == python
    assert new_argv == [str(python), "-m", "stages.external", "held_back"]
    assert env["PATH"] == f"{python.parent}{os.pathsep}/usr/bin"
    assert env[REEXEC_VARIABLE] == "1"


def test_no_venv_is_one_line_saying_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(MissingPackagesError) as raised:
        reexec_command(["tensorflow", "mlflow"], tmp_path, {}, ["python", "-m", "x"], "/bin/py")
    message = str(raised.value)
    assert "\n" not in message
    assert "/bin/py cannot import tensorflow, mlflow (no .venv found here or above)" in message
    assert "make install" in message


def test_an_incomplete_venv_fails_instead_of_looping(tmp_path: Path) -> None:
    # Given the venv's own Python, already re-executed once, still missing a module
    python = fake_venv(tmp_path)
    environ = {REEXEC_VARIABLE: "1"}
    with pytest.raises(MissingPackagesError, match=f"{python} also lacks them"):
        reexec_command(["mlflow"], tmp_path, environ, ["python", "-m", "x"], str(python))


def bare_python(tmp_path: Path) -> Path:
    """A folder whose `python` is the base interpreter this venv was made from (no packages)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}"
    lacks = subprocess.run(
        [str(base), "-c", "import importlib.util as u; print(u.find_spec('mlflow') is None)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if lacks != "True":
        pytest.skip(f"{base} has mlflow installed: it is not a bare Python")
    folder = tmp_path / "bare-bin"
    folder.mkdir()
    (folder / "python3").symlink_to(base)
    return folder


def path_without_python(first: Path, environ: dict[str, str]) -> str:
    """PATH as on Debian or Ubuntu: `first` (a bare python3), no venv and no `python` anywhere."""
    venv_bin = Path(sys.executable).parent
    kept = [
        entry
        for entry in environ["PATH"].split(os.pathsep)
        if entry and Path(entry) != venv_bin and not (Path(entry) / "python").exists()
    ]
    path = os.pathsep.join([str(first), *kept])
    assert shutil.which("python", path=path) is None
    return path


@pytest.mark.slow
def test_readme_commands_run_where_there_is_python3_and_no_python(tmp_path: Path) -> None:
    # Given a checkout whose .venv is this interpreter's, and a new shell as on Debian or Ubuntu:
    # a bare `python3` first on PATH, no `python` at all, the venv not activated
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    counts = {"covid": 4, "normal": 4, "viral_pneumonia": 4}
    params["data"]["synthetic"].update(counts=counts, image_size=32)
    repo = tmp_path / "project"
    copy_project(repo, params)
    env = clean_env()
    git_repo(repo, env)
    env["PATH"] = path_without_python(bare_python(tmp_path), env)
    readme_dvc = ".venv/bin/dvc repro ingest"  # README's daily use, run verbatim

    # When this venv's dvc runs there while the checkout has no .venv of its own
    dvc = [str(Path(sys.executable).parent / "dvc"), "repro", "ingest"]
    failed = subprocess.run(dvc, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    # Then the stage fails with the one line that says what to do, and writes nothing
    assert failed.returncode != 0
    assert "no .venv found here or above): run `make install`" in failed.stdout + failed.stderr
    assert not (repo / "data" / "interim" / "manifest.parquet").exists()

    # When the checkout has its .venv (what `make install` creates) and dvc runs again
    (repo / ".venv").symlink_to(sys.prefix)
    output = run(["bash", "-c", readme_dvc], repo, env, timeout=300)
    # Then ingest ran in the venv and wrote its outputs
    assert "Running stage 'ingest'" in output
    assert (repo / "data" / "interim" / "manifest.parquet").is_file()
    assert sorted(p.name for p in (repo / "data" / "raw").iterdir()) == sorted(counts)

    # And with the venv activated, as README's optional first line does, plain `dvc` works too
    activated = run(
        ["bash", "-c", ". .venv/bin/activate && dvc repro -f ingest && dvc status ingest"],
        repo,
        env,
        timeout=300,
    )
    assert "Running stage 'ingest'" in activated
