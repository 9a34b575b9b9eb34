"""Progress of the steps that take long on a large dataset, on stderr: a bar, or lines in a log.

On a terminal, a tqdm bar with the count, the rate and the time left, redrawn in place. Anywhere
else (a log file, `dvc exp run --queue`, CI) a bar's carriage returns would fill the log with
redraws, so plain lines are printed instead: at each further tenth of the work, but at most
every LINE_MIN_GAP_S seconds and at least every LINE_MAX_GAP_S seconds, and one when the step
ends (none when it fails: the error line says what happened):

    decoding: 1200/21165 images (5%), 240 images/s, about 1 min 23 s left
    decoding: 21165/21165 images (100%) in 1 min 28 s, 240 images/s

A step of fewer than MIN_ITEMS items (a test's fixture, the few Grad-CAM images of evaluate,
a bootstrap of 50 resamples) shows nothing: it ends within seconds, and a bar or line would
only clutter the stage's output. A step whose total is unknown beforehand (copying a folder)
shows once it has done MIN_ITEMS. Progress is the project's own output, so it shows whether
CXR_VERBOSE is set or not; it goes to stderr, never to stdout, where the stages print their
results.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from types import TracebackType
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

from cxr.core.quiet import stderr_is_terminal

Item = TypeVar("Item")

# Fewer items than this take seconds at most even in the slowest of these steps (about 0.1 s a
# Grad-CAM overlay or a 256-px phantom on one core); the tests' fixtures stay below it.
MIN_ITEMS = 100

# Log lines: not more often than this, so a step of a few seconds prints only its last line ...
LINE_MIN_GAP_S = 5.0
# ... and at least this often, so a slow step (or one of unknown length) still shows it runs.
LINE_MAX_GAP_S = 60.0

# A bar is redrawn at most this often: each redraw costs a write through the stderr filter.
BAR_MIN_INTERVAL_S = 0.5

# Bars of counted items; the rate always in items per second (tqdm's default turns a slow one
# into seconds per item).
COUNTED_BAR = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} "
    "[{elapsed}<{remaining}, {rate_noinv_fmt}]"
)
OPEN_ENDED_BAR = "{desc}: {n_fmt}{unit} [{elapsed}, {rate_noinv_fmt}]"

# The unit that is counted in bytes and shown as kB, MB, GB (tqdm's binary prefixes).
BYTES = "B"


def _descriptor(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. pytest's capture, io.StringIO
        return None


def _is_tty(stream: TextIO) -> bool:
    descriptor = _descriptor(stream)
    return descriptor is not None and os.isatty(descriptor)


def shows_on_terminal(stream: TextIO) -> bool:
    """Whether `stream` shows on a terminal: a tty, or fd 2 piped by cxr.core.quiet to one."""
    return _is_tty(stream) or (_descriptor(stream) == 2 and stderr_is_terminal())


class Progress:
    """The count of one step's items, shown on stderr as a bar (terminal) or as lines (a log).

    Use as a context manager and call update() as items are done; `total` None when unknown.
    `min_total` replaces MIN_ITEMS for a step whose time does not follow its size (a download).
    `stream`, `terminal` and `clock` default to stderr, whether it is a terminal, and
    time.monotonic; tests pass their own.
    """

    def __init__(
        self,
        label: str,
        unit: str,
        total: int | None = None,
        *,
        min_total: int = MIN_ITEMS,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.count = 0
        self._min_total = min_total
        self._stream = sys.stderr if stream is None else stream
        self._terminal = shows_on_terminal(self._stream) if terminal is None else terminal
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._last_tenth = 0
        self._bar: tqdm[None] | None = None
        self._closed = False
        if self._terminal and self._shown():
            self._bar = self._new_bar()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(completed=kind is None)

    def _shown(self) -> bool:
        """Whether the step is large enough to show (see MIN_ITEMS)."""
        reached = self.count if self.total is None else self.total
        return reached >= self._min_total

    def _new_bar(self) -> tqdm[None]:
        if self.unit == BYTES:
            scaling: dict[str, Any] = {"unit": BYTES, "unit_scale": True, "unit_divisor": 1024}
        else:
            bar_format = COUNTED_BAR if self.total is not None else OPEN_ENDED_BAR
            scaling = {"unit": f" {self.unit}", "bar_format": bar_format}
        return tqdm(
            total=self.total,
            initial=self.count,
            desc=self.label,
            file=self._stream,
            # Through the stderr filter tqdm cannot ask the pipe for a width; the terminal's.
            ncols=None if _is_tty(self._stream) else shutil.get_terminal_size().columns - 1,
            mininterval=BAR_MIN_INTERVAL_S,
            leave=True,
            **scaling,
        )

    def update(self, done: int = 1) -> None:
        """Count `done` more items as finished."""
        self.count += done
        if self._closed or not self._shown():
            return
        if self._terminal:
            if self._bar is None:  # an unknown total that has just reached MIN_ITEMS
                self._bar = self._new_bar()
            else:
                self._bar.update(done)
            return
        now = self._clock()
        since_last = now - self._last_line
        tenth = self.count * 10 // self.total if self.total else 0
        further_tenth = tenth > self._last_tenth and since_last >= LINE_MIN_GAP_S
        if self.count != self.total and (further_tenth or since_last >= LINE_MAX_GAP_S):
            self._print(self._running_line(now))
            self._last_line, self._last_tenth = now, tenth

    def close(self, completed: bool = True) -> None:
        """End the step: the bar stays as it is; a log gets the last line unless it failed."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif completed and not self._terminal and self._shown():
            self._print(self._final_line(self._clock()))

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)

    def _amount(self, count: int) -> str:
        if self.unit == BYTES:
            return tqdm.format_sizeof(count, BYTES, 1024)
        return str(count)

    def _counted(self) -> str:
        """1200/21165 images (5%), or 1200 images when the total is unknown."""
        amount = self._amount(self.count)
        if self.total is not None:
            amount += f"/{self._amount(self.total)}"
        if self.unit != BYTES:  # a size says its unit itself (12.3MB)
            amount += f" {self.unit}"
        if self.total is not None:
            amount += f" ({100 * self.count // self.total if self.total else 100}%)"
        return amount

    def _rate(self, seconds: float) -> str:
        rate = self.count / seconds if seconds > 0 else 0.0
        if self.unit == BYTES:
            return f"{tqdm.format_sizeof(rate, BYTES, 1024)}/s"
        # Three significant digits at most; a rate over 100 in whole items.
        decimals = 0 if rate >= 99.5 else 1 if rate >= 9.995 else 2
        shown = f"{rate:.{decimals}f}"
        return f"{shown} {self.unit}/s"

    def _running_line(self, now: float) -> str:
        seconds = now - self._started
        line = f"{self.label}: {self._counted()}, {self._rate(seconds)}"
        if self.total is not None and self.count > 0 and seconds > 0:
            left = (self.total - self.count) * seconds / self.count
            line += f", about {format_duration(left)} left"
        return line

    def _final_line(self, now: float) -> str:
        seconds = now - self._started
        return (
            f"{self.label}: {self._counted()} in {format_duration(seconds)}, {self._rate(seconds)}"
        )


def track(
    items: Iterable[Item],
    label: str,
    unit: str,
    total: int | None = None,
    *,
    min_total: int = MIN_ITEMS,
    stream: TextIO | None = None,
    terminal: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Item]:
    """Yield every item, counting each one on a Progress (total: len(items) when it has one)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with Progress(
        label, unit, total, min_total=min_total, stream=stream, terminal=terminal, clock=clock
    ) as progress:
        for item in items:
            progress.update()
            yield item


def format_duration(seconds: float) -> str:
    """A duration as people read it in a log: 4.2 s, 38 s, 1 min 23 s, 2 h 05 min."""
    if round(seconds, 1) < 10:
        return f"{seconds:.1f} s"
    if round(seconds) < 60:
        return f"{seconds:.0f} s"
    minutes, whole_seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {whole_seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
