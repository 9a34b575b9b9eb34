"""Processes: work spread over one per core (decoding, phantoms); who owns a temporary or run."""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

Item = TypeVar("Item")
Result = TypeVar("Result")

# Separates the fields of an owner token: host, pid, start time.
OWNER_SEPARATOR = "+"


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def map_in_processes(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    preload: Iterable[str],
) -> Iterator[Result]:
    """Function over items on `workers` processes (<= 1: in this process), in input order.

    `function` must be picklable (a module-level function or a functools.partial of one);
    `preload` names the modules each worker imports once, before the first item.
    """
    workers = min(workers, max(len(items), 1))
    if workers <= 1:
        yield from map(function, items)
        return
    # forkserver: workers fork from a clean server process, never from a parent that may hold
    # threads (TensorFlow, pytest plugins), which `fork` could deadlock on.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    # Chunks amortise the inter-process hand-off; four per worker keeps the cores balanced.
    chunksize = max(1, min(32, len(items) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(function, items, chunksize=chunksize)


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (Linux), None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; it ends at the last ")".
    return text.rsplit(")", 1)[-1].split()


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks after boot, Linux), or `-` where unknown."""
    fields = _proc_stat(pid)
    # starttime is field 22 of /proc/<pid>/stat, the 20th after the command name.
    return fields[19] if fields is not None and len(fields) > 19 else "-"


def owner_token(pid: int | None = None) -> str:
    """`host+pid+start` of this process (or of `pid`): who owns a temporary or an MLflow run.

    The start time tells a process from a later one given the same pid (pids are reused, and in
    a container the same pipeline often gets the same pid every time).
    """
    pid = os.getpid() if pid is None else pid
    host = quote(socket.gethostname(), safe="")
    return OWNER_SEPARATOR.join((host, str(pid), _start_time(pid)))


def owner_alive(token: str) -> bool:
    """Whether the process `token` names still runs; a token of another host counts as alive."""
    try:
        host, pid_text, started = token.split(OWNER_SEPARATOR)
        pid = int(pid_text)
    except ValueError:
        return True  # not a token of ours: leave what it names alone
    if host != quote(socket.gethostname(), safe=""):
        return True  # no way to check a process of another machine
    fields = _proc_stat(pid)
    if fields is not None:
        # A zombie has exited (its parent has not reaped it yet); a new start time is a new process.
        return fields[0] != "Z" and started in ("-", fields[19])
    if Path("/proc/self").exists():
        return False  # Linux: a pid without a /proc entry has exited
    try:
        os.kill(pid, 0)  # elsewhere signal 0 checks that the pid exists, and nothing more
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
