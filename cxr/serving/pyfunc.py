"""The classifier as an MLflow pyfunc model that takes raw image files and returns classes.

Input: a DataFrame with a column `image` (the bytes of a PNG/JPEG/DICOM/... file; base64-encoded
in JSON requests, as MLflow does for binary columns) or a column `path` (a file path readable by
the serving process); a row uses `image` when it is set, else `path`.
Output: one row per input row: `class`, `confidence`, `p_<class>` for every class, and `error`
(empty, or why that image could not be read, in which case class and scores are None: null in
the served model's JSON, never NaN, which strict JSON parsers refuse). The score columns hold
Python floats or None (dtype object) whether or not a row failed, so their type never depends on
the batch; `.astype(float)` gives NaN for the failed rows.
Every image takes the training path: decode_bytes -> resize_square(cache_size) -> resize_batch,
a DICOM file through the window train recorded (build.dicom.window).
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, Schema
from PIL import Image

from cxr.images.decoding import PILLOW_MAX_PIXELS, UnusableImage, decode_bytes, read_file
from cxr.images.dicom import window_text
from cxr.models.backend import BACKEND_PACKAGES, TENSORFLOW, keras_backend
from cxr.models.loading import Predictor, predictor_from_record
from cxr.models.run_record import RunRecord
from cxr.tracking.runs import LOGGED_MODEL_NAME

# The Keras backend's own packages (tensorflow, or jax and jaxlib) are added to these.
REQUIREMENTS = (
    "mlflow",
    "keras",
    "scikit-learn",
    "numpy",
    "pandas",
    "pillow",
    "pydicom",
)
REQUIREMENTS_OPTIONAL = (
    "imagehash",
    "pyarrow",
    "scipy",
    "matplotlib",
    "pyyaml",
    "pydantic",
    # The decoders of compressed DICOM transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE).
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "pyjpegls",
)


class ImageClassifier(PythonModel):  # type: ignore[misc]
    """Raw image files in, class and probabilities out (see the module docstring)."""

    def __init__(
        self, record: RunRecord, max_pixels: int = PILLOW_MAX_PIXELS, backend: str = TENSORFLOW
    ) -> None:
        # Pickled as plain JSON values, so the logged model does not depend on the class layout.
        self.record = record.to_json()
        self.max_pixels = max_pixels
        self.keras_backend = backend  # whose packages the logged requirements pin
        self.predictor: Predictor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The loaded model travels as the `model` artifact, never inside the pickle.
        return {**self.__dict__, "predictor": None}

    def load_context(self, context: Any) -> None:
        """Load the Keras or scikit-learn model from the `model` artifact.

        A serving process that has not chosen a backend (KERAS_BACKEND) and not imported Keras
        yet runs the one whose packages the model's requirements install.
        """
        if "keras" not in sys.modules:
            os.environ.setdefault("KERAS_BACKEND", getattr(self, "keras_backend", TENSORFLOW))
        record = RunRecord.from_json(self.record, "mlflow model")
        self.predictor = predictor_from_record(
            record, Path(context.artifacts["model"]), "mlflow model"
        )

    # A DataFrame hint is one MLflow takes without inferring a schema from it: it keeps the
    # logged signature (optional image / path columns) and spares every import of this module
    # MLflow's "Add type hints" warning, which its own filter re-enables past any of ours.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Classify every row's image (bytes in `image` or a file in `path`)."""
        if self.predictor is None:
            raise RuntimeError("load_context was not called")
        table = pd.DataFrame(model_input)
        if "image" not in table and "path" not in table:
            raise ValueError("input needs a column `image` (file bytes) or `path` (file path)")
        grays: list[np.ndarray] = []
        errors: list[str] = []
        for row in table.itertuples(index=False):
            try:
                grays.append(
                    self.decode_row(getattr(row, "image", None), getattr(row, "path", None))
                )
                errors.append("")
            except UnusableImage as error:
                errors.append(str(error))
        probabilities = self.predictor.predict_proba(self.predictor.prepare(grays))
        return result_table(probabilities, errors, list(self.predictor.class_names))

    def decode_row(self, image: Any, path: Any) -> np.ndarray:
        """The gray pixels of one row: its file bytes, else the file at its path."""
        if isinstance(image, bytes | bytearray) and image:
            content = bytes(image)
        elif isinstance(path, str) and path:
            content = read_file(Path(path))
        else:
            raise UnusableImage("missing", "neither `image` bytes nor a `path` given")
        # Decoded as build decodes (a large JPEG at the scale the cache needs, DICOM through
        # the recorded window).
        cache_size = int(self.record.get("cache_size") or 0)  # 0: no draft (older records)
        window = RunRecord.from_json(self.record, "mlflow model").dicom_window
        return decode_bytes(content, self.max_pixels, cache_size, window).pixels


def result_table(probabilities: np.ndarray, errors: list[str], names: list[str]) -> pd.DataFrame:
    """One output row per input row; a row with an error has None as class and scores."""
    readable = iter(np.asarray(probabilities, dtype=np.float64))
    scores = [None if error else next(readable) for error in errors]

    def column(values: list[Any]) -> pd.Series:
        # dtype object keeps None as None; a float column would turn it into NaN.
        return pd.Series(values, dtype=object)

    return pd.DataFrame(
        {
            "class": column([None if row is None else names[int(row.argmax())] for row in scores]),
            "confidence": column([None if row is None else float(row.max()) for row in scores]),
            **{
                f"p_{name}": column([None if row is None else float(row[index]) for row in scores])
                for index, name in enumerate(names)
            },
            "error": errors,
        }
    )


def signature(names: list[str]) -> ModelSignature:
    """Input: optional binary `image` and string `path`; output: class, scores and error."""
    inputs = Schema(
        [ColSpec("binary", "image", required=False), ColSpec("string", "path", required=False)]
    )
    # Class and scores are null for a row whose image could not be read.
    outputs = Schema(
        [
            ColSpec("string", "class", required=False),
            ColSpec("double", "confidence", required=False),
            *[ColSpec("double", f"p_{name}", required=False) for name in names],
            ColSpec("string", "error"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 gray image (H, W) or (H, W, 1) encoded as PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8).reshape(image.shape[:2])).save(buffer, "PNG")
    return buffer.getvalue()


def pinned_requirements(backend: str = TENSORFLOW) -> list[str]:
    """Exact pins of what the model needs at serving time, from this environment."""
    pins = []
    for package in (*REQUIREMENTS, *BACKEND_PACKAGES[backend], *REQUIREMENTS_OPTIONAL):
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def log_classifier(
    models_dir: Path, record: RunRecord, example_image: np.ndarray, max_pixels: int
) -> str:
    """Log models/ as a pyfunc in the active run (name `classifier`); return its model URI."""
    backend = keras_backend() if record.kind == "keras" else TENSORFLOW
    classifier = ImageClassifier(record, max_pixels, backend)
    # The whole cxr package travels with the model, so it is served without this checkout.
    package_dir = Path(__file__).resolve().parents[1]
    info = mlflow.pyfunc.log_model(
        name=LOGGED_MODEL_NAME,
        python_model=classifier,
        artifacts={"model": str(models_dir / record.model_file)},
        code_paths=[str(package_dir)],
        signature=signature(list(record.class_names)),
        input_example=pd.DataFrame({"image": [png_bytes(example_image)]}),
        pip_requirements=pinned_requirements(backend),
        metadata={
            "class_names": list(record.class_names),
            "kind": record.kind,
            "model": record.model,
            "keras_backend": backend,
            "preprocessing": (
                f"decode to 8-bit gray (cxr.images.decoding.decode_bytes, EXIF applied, 16-bit "
                f"scaled, DICOM through window {window_text(record.dicom_window)}), Lanczos "
                f"resize to {record.cache_size}x{record.cache_size} "
                f"(resize_square, mode {record.resize}), area resize to "
                f"{record.image_size}x{record.image_size} (resize_batch); "
                "raw 0-255 pixels in"
            ),
            "input": "DataFrame column `image` (file bytes, base64 in JSON) or `path`",
        },
    )
    return str(info.model_uri)
