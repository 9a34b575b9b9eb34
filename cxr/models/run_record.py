"""models/run.json: what train recorded about the model it saved, read by evaluate and serving.

Written and read only through this module, so its fields and file names are defined once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cxr.core.errors import PipelineError
from cxr.core.outputs import read_json_record, write_json
from cxr.core.params import DicomWindow, dicom_window
from cxr.core.paths import MODEL_FILES, RUN_RECORD_FILE

ModelKind = Literal["keras", "sklearn"]


@dataclass(frozen=True)
class RunRecord:
    """The trained model's MLflow run, classes, input sizes and the data it was trained on."""

    run_id: str
    experiment_id: str
    class_names: tuple[str, ...]
    model: str  # params.model: a backbone or a baseline name
    kind: ModelKind
    image_size: int  # the model's input side
    cache_size: int  # the pixel cache's side, the first resize of every image
    resize: str  # build.resize: how a non-square image became the cache's square
    data_fingerprint: str
    # build.dicom.window: how a DICOM file's values became gray (a name or (centre, width)).
    dicom_window: DicomWindow = "auto"
    # The MLflow run of the self-supervised pre-training the backbone started from; '' = none.
    pretrain_run_id: str = ""

    @property
    def model_file(self) -> str:
        """The name of the model file beside the record."""
        return MODEL_FILES[self.kind]

    def to_json(self) -> dict[str, Any]:
        """The record as JSON values."""
        window = self.dicom_window
        return {
            **asdict(self),
            "class_names": list(self.class_names),
            "dicom_window": window if isinstance(window, str) else list(window),
        }

    @classmethod
    def from_json(cls, payload: Any, source: str) -> RunRecord:
        """Parse a record; records of earlier versions (key `backbone`, no sizes) still load."""
        if not isinstance(payload, dict):
            raise PipelineError(f"{source}: not a run record (a JSON object); re-run train")
        kind = payload.get("kind", "keras")
        if kind not in MODEL_FILES:
            raise PipelineError(
                f"{source}: kind = {kind!r}; must be one of {', '.join(MODEL_FILES)}"
            )
        try:
            # Before build.dicom.window existed every DICOM file was windowed as auto does.
            window = dicom_window(payload.get("dicom_window", "auto"))
        except ValueError as problem:
            raise PipelineError(
                f"{source}: dicom_window = {payload['dicom_window']!r}: {problem}; re-run train"
            ) from None
        try:
            image_size = int(payload["image_size"])
            return cls(
                run_id=str(payload["run_id"]),
                experiment_id=str(payload.get("experiment_id", "")),
                class_names=tuple(str(name) for name in payload["class_names"]),
                model=str(payload.get("model", payload.get("backbone", ""))),
                kind=kind,
                image_size=image_size,
                # A record without cache_size predates the pixel cache: images then went
                # straight to image_size, which resizing to image_size twice reproduces.
                cache_size=int(payload.get("cache_size") or image_size),
                # Before build.resize existed every image was stretched to the square.
                resize=str(payload.get("resize", "stretch")),
                data_fingerprint=str(payload.get("data_fingerprint", "")),
                dicom_window=window,
                pretrain_run_id=str(payload.get("pretrain_run_id", "")),
            )
        except KeyError as missing:
            raise PipelineError(f"{source}: run record without {missing}; re-run train") from None


def write_run_record(models_dir: Path, record: RunRecord) -> Path:
    """Write `record` as <models_dir>/run.json, atomically; return its path."""
    path = models_dir / RUN_RECORD_FILE
    write_json(path, record.to_json())
    return path


def read_run_record(models_dir: Path) -> RunRecord:
    """The record train wrote in `models_dir`, with a clear error when there is none."""
    path = models_dir / RUN_RECORD_FILE
    payload = read_json_record(path, "run the train stage first", "re-run train")
    return RunRecord.from_json(payload, str(path))
