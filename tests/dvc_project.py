"""A copy of this project in a fresh git repo, for tests that run the real `dvc` command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore"]
# The stages (entry points) and the cxr package they run.
CODE_DIRS = ["stages", "cxr"]
STAGES = ["ingest", "build", "split", "train", "evaluate", "compare"]


def copy_project(target: Path, params: dict[str, Any]) -> None:
    """Copy the code and DVC config (not data, models or stores) into `target` with `params`."""
    target.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, target / name)
    for package in CODE_DIRS:
        shutil.copytree(
            ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for ignore in ROOT.glob("data/**/.gitignore"):
        (target / ignore.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ignore, target / ignore.relative_to(ROOT))
    (target / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(ROOT / ".dvc" / name, target / ".dvc" / name)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def clean_env() -> dict[str, str]:
    """The environment for dvc: this interpreter first on PATH, no MLflow or DVC overrides."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        TF_CPP_MIN_LOG_LEVEL="2",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command, fail the test with its output if it fails, return stdout+stderr."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
    return output


def git_repo(repo: Path, env: dict[str, str]) -> None:
    """Make `repo` a git repository with everything committed."""
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "project"], repo, env)


def stages_run(output: str) -> list[str]:
    """Names of the stages DVC actually ran, from its log."""
    return re.findall(r"Running stage '(\w+)'", output)
