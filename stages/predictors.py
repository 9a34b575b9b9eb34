"""Load a trained classifier (Keras or scikit-learn) from models/, an MLflow run or the registry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.errors import PipelineError
from stages.images import resize_batch
from stages.outputs import read_json

KINDS = ("keras", "sklearn")
MODEL_FILES = {"keras": "model.keras", "sklearn": "model.joblib"}
RUN_RECORD = "run.json"
# The name the pyfunc classifier is logged under in a run (stages/serving.py).
LOGGED_MODEL_NAME = "classifier"


@dataclass(frozen=True)
class Predictor:
    """A trained classifier and what it needs to turn images into class probabilities."""

    model: Any
    kind: str
    class_names: tuple[str, ...]
    image_size: int
    cache_size: int
    backbone: str
    source: str

    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, classes) of uint8 images (N, image_size, image_size, 1)."""
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, 1)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise PipelineError(
                f"{self.source}: images of shape {images.shape[1:]} given; the model takes "
                f"{expected} (resize with stages.images.resize_batch)"
            )
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        if self.kind == "sklearn":
            flat = images.reshape(len(images), -1).astype(np.uint8)
            return np.asarray(self.model.predict_proba(flat), dtype=np.float32)
        return np.asarray(self.model.predict(images, batch_size=batch_size, verbose=0))

    def timed_predict_proba(
        self, images: np.ndarray, batch_size: int = 64
    ) -> tuple[np.ndarray, float]:
        """Probabilities and the inference speed in images per second (after one warm-up batch)."""
        # The first call traces the graph; timing it would understate the speed people get.
        self.predict_proba(images[:batch_size], batch_size)
        started = time.perf_counter()
        probabilities = self.predict_proba(images, batch_size)
        seconds = time.perf_counter() - started
        return probabilities, len(images) / seconds if seconds > 0 else float("inf")

    def prepare(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded gray images (H, W) -> model input, resized exactly as the training images were.

        Training pixels went file -> decode_gray -> resize_square(cache_size) -> resize_batch;
        a new image takes the same path so it meets the model at the same scale and blur.
        """
        from stages.decoding import resize_square

        if not grays:
            return np.zeros((0, self.image_size, self.image_size, 1), dtype=np.uint8)
        squares = np.stack([resize_square(gray, self.cache_size) for gray in grays])
        return resize_batch(squares[..., np.newaxis], self.image_size)

    @property
    def keras_model(self) -> Any:
        """The Keras model, or None for a scikit-learn model."""
        return self.model if self.kind == "keras" else None


def load_model_file(path: Path, kind: str) -> Any:
    """Load models/model.keras (kind keras) or models/model.joblib (kind sklearn)."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run the train stage first")
    if kind == "keras":
        import keras

        import stages.classifier  # noqa: F401  registers the custom layers the saved model uses

        return keras.models.load_model(path)
    import joblib

    return joblib.load(path)


def model_input_sizes(record: dict[str, Any]) -> tuple[int, int]:
    """(image_size, cache_size) of a run record: the model's input side and the cache's side."""
    image_size = int(record["image_size"])
    # A record without cache_size predates the pixel cache: images then went straight to
    # image_size, which is what resize_square(image_size) reproduces.
    return image_size, int(record.get("cache_size") or image_size)


def predictor_from_record(record: dict[str, Any], model_file: Path, source: str) -> Predictor:
    """A Predictor from a run record (models/run.json) and the model file beside it."""
    kind = record.get("kind", "keras")
    if kind not in KINDS:
        raise PipelineError(f"{source}: kind = {kind!r}; must be one of {', '.join(KINDS)}")
    image_size, cache_size = model_input_sizes(record)
    return Predictor(
        model=load_model_file(model_file, kind),
        kind=kind,
        class_names=tuple(record["class_names"]),
        image_size=image_size,
        cache_size=cache_size,
        backbone=str(record.get("backbone", "")),
        source=source,
    )


def load_models_dir(models_dir: Path) -> Predictor:
    """The model the train stage saved in `models_dir` (run.json + model.keras or model.joblib)."""
    record_file = models_dir / RUN_RECORD
    if not record_file.is_file():
        raise PipelineError(f"{record_file}: missing; run the train stage first")
    record = read_json(record_file)
    kind = record.get("kind", "keras")
    return predictor_from_record(
        record, models_dir / MODEL_FILES.get(kind, MODEL_FILES["keras"]), str(models_dir)
    )


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
            raise PipelineError(f"{text}: not a cxr-pipeline classifier (stages/serving.py)")
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
