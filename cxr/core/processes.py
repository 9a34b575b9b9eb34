"""Work spread over processes, one per core, for the data stages (decoding, phantoms)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


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
