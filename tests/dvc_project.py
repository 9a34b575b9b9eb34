"""A copy of this project in a fresh git repo, for tests that run the real `dvc` command line."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore"]
# The stages (entry points) and the cxr package they run.
CODE_DIRS = ["stages", "cxr"]
# The offline `dvc plots show` page that .dvc/config names (plots/offline.html).
SUPPORT_DIRS = ["plots"]
STAGES = ["ingest", "build", "split", "pretrain", "train", "evaluate", "compare"]
# The dvc command line of this interpreter's environment.
DVC = [sys.executable, "-m", "dvc"]


def copy_project(target: Path, params: dict[str, Any]) -> None:
    """Copy the code and DVC config (not data, models or stores) into `target` with `params`."""
    target.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, target / name)
    for package in CODE_DIRS:
        shutil.copytree(
            ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for support in SUPPORT_DIRS:
        shutil.copytree(ROOT / support, target / support)
    for ignore in ROOT.glob("data/**/.gitignore"):
        (target / ignore.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ignore, target / ignore.relative_to(ROOT))
    # Folders dvc.yaml depends on before any stage writes into them (compare: metrics/external).
    for keep in ROOT.glob("metrics/**/.gitkeep"):
        (target / keep.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(keep, target / keep.relative_to(ROOT))
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


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    """Run a command, fail the test with its output if it fails, return stdout+stderr.

    The output goes through a file, not a pipe: a daemon the command leaves running (DVC's
    queue workers) inherits it, and a pipe would keep this call waiting until that daemon
    ends. A command still running after `timeout` s is killed with its process group and fails
    the test, so a hang shows as a failure with its output instead of stalling the suite.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
        )
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.seek(0)
        err.seek(0)
        output = out.read() + err.read()
    assert not timed_out, (
        f"{' '.join(args)} still running after {timeout} s, killed:\n{output[-4000:]}"
    )
    assert process.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
    return output


def kill_processes_in(folder: Path) -> list[str]:
    """SIGKILL every process whose working directory lies in `folder`; their command lines.

    For daemons a test started there (DVC's queue workers start their own sessions, so no
    process group reaches them); nothing the test started may outlive it.
    """
    folder = folder.resolve()
    killed = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwd = (entry / "cwd").resolve(strict=True)
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile, or not ours to read
        if int(entry.name) != os.getpid() and cwd.is_relative_to(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(argv.strip())
    return killed


def git_repo(repo: Path, env: dict[str, str]) -> None:
    """Make `repo` a git repository with everything committed."""
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "project"], repo, env)


def stages_run(output: str) -> list[str]:
    """Names of the stages DVC actually ran, from its log (foreach ones with their key)."""
    return re.findall(r"Running stage '([\w@-]+)'", output)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name may hold spaces; the parent pid is the 2nd field after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while the table was read
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        below = children.get(queue.pop(), [])
        found += below
        queue += below
    return found


def stage_process(pid: int, stage: str) -> int | None:
    """The process running `python3 -m stages.<stage>` below `pid`, None when none runs."""
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in argv and f"stages.{stage}".encode() in argv:
            return child
    return None


def run_and_kill_stage(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    stage: str,
    ready: Callable[[], bool],
    delay: float,
    timeout: float = 600,
) -> str:
    """Run a dvc command; SIGKILL its stage `stage` `delay` s after `ready()` first holds.

    Only the stage's own process is killed, as the kernel's out-of-memory killer or `kill -9`
    would; dvc sees the stage fail and exits. Returns dvc's output; fails the test if the stage
    ended before it could be killed or dvc did not fail.
    """
    log = cwd.parent / f"{cwd.name}-{stage}-killed.log"
    with log.open("w") as sink:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            victim = None
            while victim is None or not ready():
                assert process.poll() is None, f"{stage} ended before the kill:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"{stage} never got ready:\n{log.read_text()}"
                victim = stage_process(process.pid, stage)
                time.sleep(0.002)
            time.sleep(delay)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                raise AssertionError(f"{stage} ended before the kill:\n{log.read_text()}") from None
            process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log.read_text()
    assert process.returncode != 0, f"{' '.join(args)} succeeded despite the kill:\n{output}"
    return output


def git_status(repo: Path, env: dict[str, str]) -> list[str]:
    """`git status --porcelain` of `repo`, every untracked file listed on its own."""
    output = run(["git", "status", "--porcelain", "--untracked-files=all"], repo, env)
    return [line[3:] for line in output.splitlines() if line.strip()]


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path: a folder's exact content."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# DVC rewrites a running experiment's executor info file in place (the JSON is truncated, then
# written: dvc.utils.serialize.modify_json), so a `dvc queue status` that reads it in between
# fails with the JSON parser's message (treeverse/dvc#8014). Such a failure is DVC's, not the
# queue's: the status is asked for again.
TORN_INFO_READ = re.compile(
    r"unexpected error - (Expecting |Extra data|Unterminated string|Invalid control)"
)


def torn_info_read(output: str) -> bool:
    """Whether a failed `dvc queue status` read an executor info file while it was rewritten."""
    return TORN_INFO_READ.search(output) is not None


def queue_status(clone: Path, env: dict[str, str], attempts: int = 5) -> str:
    """`dvc queue status`: one row per task (Queued, Running, Success, Failed) and the workers.

    Asked again, up to `attempts` times, while it fails on a torn executor info read.
    """
    for _ in range(attempts - 1):
        try:
            return run([*DVC, "queue", "status"], clone, env)
        except AssertionError as failure:
            if not torn_info_read(str(failure)):
                raise
        time.sleep(0.5)
    return run([*DVC, "queue", "status"], clone, env)


def task_states(status: str) -> list[str]:
    """The state of each task in `dvc queue status` (its rows end with the state), in order.

    A task that has just ended can be listed twice, as Running and as Success (or Failed): its
    ended state is the one that counts.
    """
    states = ("Queued", "Running", "Success", "Failed")
    by_task: dict[str, str] = {}
    for row in map(str.split, status.splitlines()):
        if row and row[-1] in states and by_task.get(row[0]) not in ("Success", "Failed"):
            by_task[row[0]] = row[-1]
    return list(by_task.values())


def queue_logs(clone: Path, failed: Collection[str] = ()) -> str:
    """The end of every log the queue wrote (workers and experiments), for a failure message.

    The logs of the `failed` tasks (short ids from `dvc queue status`) come last, so a report
    that keeps only the end of a long message still shows why they failed.
    """
    logs = sorted(
        clone.glob(".dvc/tmp/exps/**/*.out"),
        key=lambda log: (log.name[:7] in failed, log.name),
    )
    return "".join(f"\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}" for log in logs)


def failed_tasks(status: str) -> list[str]:
    """The short ids of the tasks `dvc queue status` shows as Failed."""
    return [row[0] for row in map(str.split, status.splitlines()) if row and row[-1] == "Failed"]


def wait_for_tasks(
    clone: Path, env: dict[str, str], count: int, timeout: float = 900, interval: float = 2
) -> str:
    """Wait until `count` tasks have ended (Success or Failed); the last status.

    Only the tasks are waited for, not the workers: an idle worker waits 10 s for more work,
    and on some machines one has been seen to stay idle for good (it is stopped afterwards).
    The status is asked for every `interval` s (each ask starts a dvc process).
    """
    deadline = time.monotonic() + timeout
    while True:
        status = queue_status(clone, env)
        ended = [state for state in task_states(status) if state in ("Success", "Failed")]
        if len(ended) >= count:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks not ended after {timeout} s:\n{status}{queue_logs(clone)}")
        time.sleep(interval)
