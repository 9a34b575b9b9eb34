"""Load a trained classifier (Keras or scikit-learn) from models/, an MLflow run or the registry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core.errors import PipelineError
from cxr.core.paths import MODEL_FILES
from cxr.models.pixels import ImageRows, resize_batch
from cxr.models.run_record import RunRecord, read_run_record
from cxr.tracking.runs import LOGGED_MODEL_NAME

# Images scored at once when a split is predicted (timed_predict_proba): what memory holds of it.
PREDICT_CHUNK = 2048


@dataclass(frozen=True)
class Predictor:
    """A trained classifier and what it needs to turn images into class probabilities."""

    model: Any  # the loaded Keras model or scikit-learn pipeline
    record: RunRecord
    source: str

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes, in the order of the model's outputs."""
        return self.record.class_names

    @property
    def image_size(self) -> int:
        """The model's input side."""
        return self.record.image_size

    @property
    def kind(self) -> str:
        """Keras or sklearn."""
        return self.record.kind

    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, classes) of uint8 images (N, image_size, image_size, 1)."""
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, 1)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise PipelineError(
                f"{self.source}: images of shape {images.shape[1:]} given; the model takes "
                f"{expected} (resize with cxr.models.pixels.resize_batch)"
            )
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        if self.kind == "sklearn":
            flat = images.reshape(len(images), -1).astype(np.uint8)
            return np.asarray(self.model.predict_proba(flat), dtype=np.float32)
        return np.asarray(self.model.predict(images, batch_size=batch_size, verbose=0))

    def timed_predict_proba(
        self, images: ImageRows, batch_size: int = 64, chunk: int = PREDICT_CHUNK
    ) -> tuple[np.ndarray, float]:
        """Probabilities and the inference speed in images per second (after one warm-up batch).

        `images` is an array or cxr.models.pixels.CachedImages: it is read `chunk` images at a
        time, so memory holds one chunk, not the split; only the predictions are timed.
        """
        # The first call traces the graph; timing it would understate the speed people get.
        self.predict_proba(np.asarray(images[:batch_size]), batch_size)
        parts = [np.zeros((0, len(self.class_names)), dtype=np.float32)]
        seconds = 0.0
        for start in range(0, len(images), chunk):
            batch = np.asarray(images[start : start + chunk])
            started = time.perf_counter()
            parts.append(self.predict_proba(batch, batch_size))
            seconds += time.perf_counter() - started
        probabilities = np.concatenate(parts)
        return probabilities, len(images) / seconds if seconds > 0 else float("inf")

    def prepare(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded gray images (H, W) -> model input, resized exactly as the training images were.

        Training pixels went file -> decode_gray -> resize_square(cache_size, build.resize) ->
        resize_batch; a new image takes the same path, so it meets the model at the same scale,
        blur and aspect ratio.
        """
        from cxr.images.decoding import resize_square

        if not grays:
            return np.zeros((0, self.image_size, self.image_size, 1), dtype=np.uint8)
        cache_size, mode = self.record.cache_size, self.record.resize
        squares = np.stack([resize_square(gray, cache_size, mode) for gray in grays])
        return resize_batch(squares[..., np.newaxis], self.image_size)


def load_model_file(path: Path, kind: str) -> Any:
    """Load models/model.keras (kind keras) or models/model.joblib (kind sklearn)."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run the train stage first")
    if kind == "keras":
        from cxr.models.classifier import load_classifier

        return load_classifier(path)
    import joblib

    return joblib.load(path)


def predictor_from_record(record: RunRecord, model_file: Path, source: str) -> Predictor:
    """A Predictor from a run record and the model file it describes."""
    return Predictor(load_model_file(model_file, record.kind), record, source)


def load_models_dir(models_dir: Path) -> Predictor:
    """The model the train stage saved in `models_dir` (run.json + model.keras or model.joblib)."""
    record = read_run_record(models_dir)
    return predictor_from_record(record, models_dir / record.model_file, str(models_dir))


def resolve_model_uri(uri: str) -> str:
    """`runs:/<id>` means the classifier logged in that run; other URIs are used as given."""
    if uri.startswith("runs:/") and uri.removeprefix("runs:/").strip("/").count("/") == 0:
        return f"runs:/{uri.removeprefix('runs:/').strip('/')}/{LOGGED_MODEL_NAME}"
    return uri


def load_predictor(source: str | Path) -> Predictor:
    """A Predictor from models/ (or its model file), `runs:/<id>` or `models:/<name>@<alias>`."""
    text = str(source)
    if text.startswith(("runs:/", "models:/")):
        import mlflow

        uri = resolve_model_uri(text)
        try:
            pyfunc = mlflow.pyfunc.load_model(uri)
        except mlflow.exceptions.MlflowException as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise PipelineError(
                f"{text}: cannot load this MLflow model ({first}); check MLFLOW_TRACKING_URI and "
                "that evaluate logged the run's classifier"
            ) from None
        classifier = pyfunc.unwrap_python_model()
        predictor = getattr(classifier, "predictor", None)
        if not isinstance(predictor, Predictor):
            raise PipelineError(f"{text}: not a cxr-pipeline classifier (cxr/serving/pyfunc.py)")
        return predictor
    path = Path(text)
    if path.is_file() and path.name in MODEL_FILES.values():
        return load_models_dir(path.parent)
    if path.is_dir():
        return load_models_dir(path)
    raise PipelineError(
        f"--model {text!r}: no such directory or model file; give models/, models/model.keras, "
        "runs:/<run_id> or models:/<name>@champion"
    )
