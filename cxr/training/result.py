"""What fitting one model hands back to the train stage, whichever library fitted it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.models.run_record import ModelKind


@dataclass(frozen=True)
class FitResult:
    """The saved model file, its input size, and the metrics, history and tags of the fit."""

    kind: ModelKind
    image_size: int
    model_file: Path
    metrics: dict[str, Any]  # one value each: logged to MLflow and metrics/train.json
    history: pd.DataFrame  # one row per epoch: epoch, loss, accuracy, val_loss, ...
    tags: dict[str, str]  # how it was fitted: device, strategy, library versions
    val_predicted: np.ndarray  # the saved model's class index for each validation image
