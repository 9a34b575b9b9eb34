"""Tests for progress on stderr (cxr/core/progress.py): a bar on a terminal, lines in a log."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from cxr.core.progress import (
    LINE_MAX_GAP_S,
    LINE_MIN_GAP_S,
    MIN_ITEMS,
    Progress,
    format_duration,
    track,
)


class Clock:
    """A clock the test moves by hand, so the log lines do not depend on the machine's speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drawn(count: int, clock: Clock, seconds_each: float) -> Iterator[int]:
    """A generator (no len) of `count` items, each taking `seconds_each` on the clock."""
    for item in range(count):
        clock.now += seconds_each
        yield item


def test_a_log_gets_plain_lines_with_count_rate_and_time_left_then_a_last_line() -> None:
    # Given a log (not a terminal) and 2000 images decoded at 100 per second (20 s)
    log, clock = io.StringIO(), Clock()

    # When they are tracked as a generator of known length
    items = drawn(2000, clock, 0.01)
    done = list(track(items, "decoding", "images", total=2000, stream=log, clock=clock))

    # Then every item came through, and the log has whole lines only, no carriage returns:
    # one per further tenth at most every LINE_MIN_GAP_S, then the last one with the total time
    assert done == list(range(2000))
    assert "\r" not in log.getvalue()
    lines = log.getvalue().splitlines()
    assert lines[0] == "decoding: 501/2000 images (25%), 100 images/s, about 15 s left"
    assert lines[-1] == "decoding: 2000/2000 images (100%) in 20 s, 100 images/s"
    assert len(lines) == 1 + int(20 / LINE_MIN_GAP_S) - 1


def test_a_short_step_in_a_log_prints_only_its_last_line() -> None:
    log, clock = io.StringIO(), Clock()
    for _ in track(drawn(400, clock, 0.005), "phantoms", "images", 400, stream=log, clock=clock):
        pass
    assert log.getvalue() == "phantoms: 400/400 images (100%) in 2.0 s, 200 images/s\n"


def test_a_slow_step_in_a_log_prints_at_least_every_max_gap() -> None:
    # Given a step whose tenths take longer than LINE_MAX_GAP_S (1000 items at 1 per second)
    log, clock = io.StringIO(), Clock()
    items = drawn(1000, clock, 1.0)
    for _ in track(items, "Grad-CAM", "images", 1000, stream=log, clock=clock):
        pass
    # Then a line comes at each tenth and at least every LINE_MAX_GAP_S seconds
    lines = log.getvalue().splitlines()
    counts = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert max(later - earlier for earlier, later in pairwise(counts)) <= LINE_MAX_GAP_S
    assert set(range(100, 1001, 100)) <= set(counts)
    assert lines[0] == "Grad-CAM: 60/1000 images (6%), 1.00 images/s, about 15 min 40 s left"


def test_a_terminal_gets_a_tqdm_bar_with_count_percentage_and_rate() -> None:
    # Given a terminal
    screen = io.StringIO()

    # When 300 items of a list are tracked (its length is the total)
    for _ in track(list(range(300)), "decoding", "images", stream=screen, terminal=True):
        pass

    # Then the bar redraws in place and ends at the whole count, with the rate, on its own line
    output = screen.getvalue()
    assert "\r" in output and output.endswith("\n")
    last = output.rstrip("\n").split("\r")[-1]
    assert re.fullmatch(r"decoding: 100%\|.*\| 300/300 images \[.*, *[\d.]+ images/s\]", last)


def test_a_step_of_unknown_length_shows_once_it_reaches_min_items() -> None:
    # Given a folder copy whose number of files is not known beforehand
    log, clock, screen = io.StringIO(), Clock(), io.StringIO()
    with (
        Progress("copying", "files", stream=log, clock=clock) as logged,
        Progress("copying", "files", stream=screen, terminal=True) as shown,
    ):
        for _ in range(MIN_ITEMS - 1):
            clock.now += 1.0
            logged.update()
            shown.update()
        # Then nothing shows below MIN_ITEMS, even after LINE_MAX_GAP_S
        assert log.getvalue() == screen.getvalue() == ""
        clock.now += 1.0
        logged.update()
        shown.update()
    # And then the count without a total or percentage, with the rate
    assert log.getvalue().splitlines()[-1] == "copying: 100 files in 1 min 40 s, 1.00 files/s"
    assert screen.getvalue().rstrip().split("\r")[-1].startswith("copying: 100 files [")


@pytest.mark.parametrize("terminal", [False, True])
def test_tiny_runs_print_nothing(terminal: bool) -> None:
    stream = io.StringIO()
    for _ in track(
        range(MIN_ITEMS - 1), "bootstrap", "resamples", stream=stream, terminal=terminal
    ):
        pass
    assert stream.getvalue() == ""


def test_a_download_shows_its_bytes_whatever_its_size() -> None:
    log, clock = io.StringIO(), Clock()
    with Progress("download a.zip", "B", 3 << 20, min_total=0, stream=log, clock=clock) as bytes_:
        for _ in range(3):
            clock.now += 1.0
            bytes_.update(1 << 20)
    assert log.getvalue() == "download a.zip: 3.00MB/3.00MB (100%) in 3.0 s, 1.00MB/s\n"


def test_a_failed_step_leaves_no_last_line_in_a_log_and_ends_the_bar_line() -> None:
    # Given a step that fails half-way, in a log and on a terminal
    log, screen = io.StringIO(), io.StringIO()
    for stream, terminal in ((log, False), (screen, True)):
        with pytest.raises(ValueError, match="broken"):
            for item in track(range(200), "decoding", "images", stream=stream, terminal=terminal):
                if item == 100:
                    raise ValueError("broken")
    # Then the log says nothing more (the error line will), and the bar's line is ended, so the
    # error starts on a line of its own
    assert log.getvalue() == ""
    assert screen.getvalue().endswith("\n") and "101/200" in screen.getvalue()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (4.24, "4.2 s"),
        (9.97, "10 s"),
        (38.4, "38 s"),
        (59.7, "1 min 00 s"),
        (83, "1 min 23 s"),
        (7500, "2 h 05 min"),
    ],
)
def test_durations_read_as_people_write_them(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


# A program as a stage runs: quiet (stderr through the filter), then a step of 300 items.
PROGRAM = """
import time
from cxr.core.quiet import quiet_process
from cxr.core.progress import track
if __name__ == "__main__":
    quiet_process()
    for _ in track(range(300), "decoding", "images"):
        time.sleep(0.004)
    print("build: 300 images")
"""


def _run_on_terminal(script: Path) -> tuple[str, str]:
    """Run `script` with stderr on a pseudo-terminal: (stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=terminal, text=True
    ) as program:
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 1 << 16)
            except OSError:  # the terminal is closed once the program has exited
                break
            if not chunk:
                break
            shown += chunk
        stdout = program.stdout.read() if program.stdout else ""
    os.close(controller)
    return stdout, shown.decode()


def test_a_stage_on_a_terminal_draws_a_bar_through_the_stderr_filter(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    # When the program runs with stderr on a terminal
    stdout, shown = _run_on_terminal(script)
    # Then the terminal shows the bar redrawn in place, and stdout only the result line
    assert stdout == "build: 300 images\n"
    assert shown.count("\r") >= 2
    assert re.search(r"decoding: 100%\|.*\| 300/300 images \[.*images/s\]", shown)


def test_a_stage_in_a_log_prints_lines_through_the_stderr_filter(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    # When the program runs with stderr into a file, as under a DVC queue or CI
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    )
    # Then stderr holds whole lines only: the step's last line
    assert completed.stdout == "build: 300 images\n"
    assert "\r" not in completed.stderr
    assert re.fullmatch(
        r"decoding: 300/300 images \(100%\) in [\d.]+ s, \d+ images/s\n", completed.stderr
    )


# A step that stops half-way until the test answers on stdin: its bar must be on the terminal by
# then, not held back by the stderr filter until the line ends.
WAITING_PROGRAM = """
import sys, time
from cxr.core.quiet import quiet_process
from cxr.core.progress import Progress
if __name__ == "__main__":
    quiet_process()
    with Progress("decoding", "images", 300) as progress:
        time.sleep(0.6)
        progress.update(150)
        sys.stdin.readline()
        progress.update(150)
"""


def test_the_bar_reaches_the_terminal_while_the_step_runs(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(WAITING_PROGRAM)
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stderr=terminal
    ) as program:
        os.close(terminal)
        shown = b""
        while b"150/300" not in shown:
            ready, _, _ = select.select([controller], [], [], 30.0)
            assert ready, f"no bar at 150/300 on the terminal while the step waits: {shown!r}"
            shown += os.read(controller, 1 << 16)
        assert program.stdin is not None
        program.stdin.write(b"go on\n")
        program.stdin.close()
        assert program.wait(timeout=30) == 0
    os.close(controller)
