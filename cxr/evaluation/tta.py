"""Test-time augmentation: a model's probabilities averaged over mirrored and shifted views.

The views are the changes a chest image may show without changing its diagnosis: left-right
mirroring and a small shift. Never a vertical flip: no radiograph is taken upside down.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr.models.loading import Predictor

SHIFT_FRACTION = 1 / 16  # of the image side: a few pixels, well inside the lung fields
# (axis, direction) of each shifted view: left, right (axis 2, columns), up, down (axis 1, rows)
SHIFTS = ((2, -1), (2, 1), (1, -1), (1, 1))
VIEW_COUNT = 2 + len(SHIFTS)  # the image itself, its mirror and the shifts


def shifted(images: np.ndarray, axis: int, pixels: int) -> np.ndarray:
    """`images` moved `pixels` along `axis` (negative: towards 0), the uncovered band black."""
    moved = np.roll(images, pixels, axis=axis)
    band: list[Any] = [slice(None)] * images.ndim
    band[axis] = slice(0, pixels) if pixels > 0 else slice(pixels, None)
    moved[tuple(band)] = 0
    return moved


def tta_views(images: np.ndarray) -> list[np.ndarray]:
    """The views of uint8 images (N, S, S, 1): themselves, mirrored, shifted left/right/up/down."""
    step = max(1, round(images.shape[2] * SHIFT_FRACTION))
    mirrored = np.flip(images, axis=2).copy()
    return [
        images,
        mirrored,
        *(shifted(images, axis, direction * step) for axis, direction in SHIFTS),
    ]


class AugmentedPredictor(Predictor):
    """A Predictor whose probabilities are the mean over the tta_views of the images."""

    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Mean class probabilities (N, classes) of the views of uint8 images (N, S, S, 1)."""
        images = np.asarray(images)
        if images.ndim != 4:
            # the plain predictor names the shape the model expects
            return super().predict_proba(images, batch_size)
        predict = super().predict_proba
        views = [predict(view, batch_size) for view in tta_views(images)]
        return np.asarray(np.mean(views, axis=0, dtype=np.float64), dtype=np.float32)


def with_tta(predictor: Predictor, enabled: bool) -> tuple[Predictor, dict[str, Any]]:
    """`predictor` averaging over tta_views when `enabled`, and what to record about it.

    Its timed_predict_proba still counts test images, not views: with TTA the speed it reports
    is about VIEW_COUNT times lower, the price of the averaging.
    """
    if not enabled:
        return predictor, {"tta": False, "tta_views": 1}
    augmented = AugmentedPredictor(predictor.model, predictor.record, predictor.source)
    return augmented, {"tta": True, "tta_views": VIEW_COUNT}
