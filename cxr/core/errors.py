"""User-facing errors and the wrapper that turns them into one-line messages."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")


class PipelineError(Exception):
    """An error caused by input the user controls (params, data, environment); shown as one line."""


class ParamsError(PipelineError):
    """A params.yaml value is missing, unknown or out of range."""


def report_errors(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a stage's main so a PipelineError prints one line on stderr and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except PipelineError as error:
            # A traceback would bury the one line that says what to fix.
            print(f"error: {error}", file=sys.stderr)
            return 2

    return wrapper
