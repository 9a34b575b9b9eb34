"""Classify new image files with a trained model: class and probabilities per image.

    cxr-predict IMAGE_OR_FOLDER... [--model models/ | runs:/<run_id> |
        models:/cxr-classifier@champion] [--csv predictions.csv] [--gradcam DIR]

(`python -m cxr.serving.predict ...` from the repository root does the same.)

A folder is searched recursively for image files: by suffix, and DICOM files by their content
(the DICM marker), whatever they are named. One line per image goes to stdout; the
table goes to a CSV only where --csv says. Grad-CAM overlays keep the images' paths relative to
the given folder (the folder holding every input), so `Normal/0101.jpeg` and
`Viral Pneumonia/0101.jpeg` give `Normal/0101.jpeg.gradcam.png` and
`Viral Pneumonia/0101.jpeg.gradcam.png`, never one file over the other.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.core.dicom import is_dicom_file
from cxr.core.errors import PipelineError, report_errors
from cxr.core.outputs import write_table
from cxr.core.progress import Progress
from cxr.evaluation.gradcam import (
    NoFeatureMapError,
    check_explainable,
    gradcam_heatmaps,
    save_overlay,
)
from cxr.images.decoding import PILLOW_MAX_PIXELS, UnusableImage, decode_gray
from cxr.ingestion.layouts import IMAGE_SUFFIXES
from cxr.models.loading import Predictor, load_predictor
from cxr.serving.pyfunc import result_table

GRADCAM_SUFFIX = ".gradcam.png"

# Files decoded and classified at a time: the progress moves chunk by chunk, and only one
# chunk's decoded full-size images is held (a multiple of predict_proba's batch size).
PREDICT_CHUNK = 256
# Images whose Grad-CAM maps are computed at a time (a multiple of gradcam_heatmaps' batch).
GRADCAM_CHUNK = 64


def image_files(inputs: Sequence[Path]) -> dict[Path, Path]:
    """The files to classify (folders searched recursively), each with its name for outputs.

    The name is the file's path relative to the folder holding every input: the given folder
    itself when one folder is given, the file's own folder for one file. Distinct files get
    distinct names; a file given twice is classified once.
    """
    found: dict[Path, Path] = {}  # absolute path -> the path as given or found
    roots: list[Path] = []
    for given in inputs:
        if given.is_dir():
            root = given
            files = sorted(
                path
                for path in given.rglob("*")
                if path.is_file() and (path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path))
            )
        elif given.is_file():
            root, files = given.parent, [given]
        else:
            raise PipelineError(f"{given}: no such file or folder")
        # Lexical absolute paths (no symlinks resolved), so every file stays under its root.
        roots.append(Path(os.path.abspath(root)))
        for file in files:
            found.setdefault(Path(os.path.abspath(file)), file)
    if not found:
        raise PipelineError(f"no image files in {', '.join(str(given) for given in inputs)}")
    base = Path(os.path.commonpath(roots))
    return {file: absolute.relative_to(base) for absolute, file in found.items()}


def predict_files(
    predictor: Predictor, files: Sequence[Path], max_pixels: int, chunk: int = PREDICT_CHUNK
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per file (class, confidence, p_<class>, error) and the model inputs decoded."""
    probabilities: list[np.ndarray] = []
    inputs: list[np.ndarray] = []
    errors: list[str] = []
    with Progress("predicting", "images", len(files)) as progress:
        for start in range(0, len(files), chunk):
            grays = []
            for file in files[start : start + chunk]:
                try:
                    # Decoded as build decodes (a large JPEG at the scale the cache needs, DICOM
                    # through the window train recorded).
                    record = predictor.record
                    grays.append(
                        decode_gray(file, max_pixels, record.cache_size, record.dicom_window)
                    )
                    errors.append("")
                except UnusableImage as error:
                    errors.append(str(error))
            inputs.append(predictor.prepare(grays))
            probabilities.append(predictor.predict_proba(inputs[-1]))
            progress.update(len(files[start : start + chunk]))
    images = np.concatenate(inputs) if inputs else predictor.prepare([])
    table = result_table(
        np.concatenate(probabilities) if probabilities else predictor.predict_proba(images),
        errors,
        list(predictor.class_names),
    )
    table.insert(0, "path", [str(file) for file in files])
    return table, images


def gradcam_file(out_dir: Path, name: Path) -> Path:
    """Where the overlay of the image named `name` (see image_files) goes: its subfolders kept."""
    return out_dir / name.parent / f"{name.name}{GRADCAM_SUFFIX}"


def save_gradcams(
    predictor: Predictor,
    table: pd.DataFrame,
    images: np.ndarray,
    names: Sequence[Path],
    out_dir: Path,
) -> str:
    """Save a Grad-CAM overlay per readable image under out_dir; return what was done.

    `names` holds each table row's name relative to the given folder (image_files), in order.
    """
    readable = table[table["error"] == ""]
    chosen = [predictor.class_names.index(name) for name in readable["class"]]
    try:
        check_explainable(predictor.model)
    except NoFeatureMapError as reason:
        return f"Grad-CAM unavailable for this model: {reason}"
    rows = list(readable.iterrows())
    with Progress("Grad-CAM", "images", len(rows)) as progress:
        # A chunk at a time: the heat maps of a whole folder need not fit in memory at once.
        for start in range(0, len(rows), GRADCAM_CHUNK):
            stop = start + GRADCAM_CHUNK
            heatmaps = gradcam_heatmaps(predictor.model, images[start:stop], chosen[start:stop])
            for (position, row), image, heatmap in zip(
                rows[start:stop], images[start:stop], heatmaps, strict=True
            ):
                name = names[int(position)]
                target = gradcam_file(out_dir, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                caption = f"{name.as_posix()}: {row['class']} ({row['confidence']:.2f})"
                save_overlay(image, heatmap, caption, target)
                progress.update()
    return f"Grad-CAM overlays of {len(readable)} image(s) -> {out_dir}"


def describe(row: pd.Series, names: Sequence[str]) -> str:
    """One line per image: path, class, confidence and every class probability."""
    if row["error"]:
        return f"{row['path']}: unreadable ({row['error']})"
    scores = ", ".join(f"{name} {row[f'p_{name}']:.3f}" for name in names)
    return f"{row['path']}: {row['class']} ({row['confidence']:.3f})  [{scores}]"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="cxr-predict",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    parser.add_argument(
        "--model",
        default="models",
        help="models/ (default), models/model.keras, runs:/<run_id> or models:/<name>@champion",
    )
    parser.add_argument("--csv", type=Path, help="also write the results as a table here")
    parser.add_argument(
        "--gradcam", type=Path, help="save a Grad-CAM overlay per image here (subfolders kept)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=PILLOW_MAX_PIXELS, help="refuse larger images"
    )
    return parser.parse_args(argv)


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Classify the given images and print one line per image."""
    args = parse_args(argv)
    # MLflow draws a progress bar per artifact download; the results are the point here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    files = image_files(args.inputs)
    predictor = load_predictor(args.model)
    table, images = predict_files(predictor, list(files), args.max_pixels)
    for _, row in table.iterrows():
        print(describe(row, predictor.class_names))
    # No default file: a run from the repository root must not leave a table in it.
    if args.csv is not None:
        write_table(args.csv, table)
        print(f"predict: {len(table)} result(s) -> {args.csv}")
    if args.gradcam is not None:
        names = list(files.values())
        print(f"predict: {save_gradcams(predictor, table, images, names, args.gradcam)}")
    if (table["error"] != "").all():
        raise PipelineError("no given file could be read as an image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
