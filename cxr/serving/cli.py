"""The `cxr-predict` command: predict, quiet by default (cxr.core.quiet), like the stages."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Go quiet before TensorFlow is imported, then run cxr.serving.predict's main."""
    from cxr.core.quiet import quiet_process

    quiet_process()
    # Imported here, after quieting: importing predict imports Keras (and TensorFlow, its default
    # backend).
    from cxr.serving.predict import main as predict_main

    return predict_main(argv)
