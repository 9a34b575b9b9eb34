"""Classify new image files with a trained model: class and probabilities per image.

    cxr-predict IMAGE_OR_FOLDER... [--model models/ | runs:/<run_id> |
        models:/cxr-classifier@champion] [--csv predictions.csv] [--gradcam DIR]

(`python -m cxr.serving.predict ...` from the repository root does the same.)

A folder is searched recursively for image files and its results also go to a CSV
(--csv, default predictions.csv in the current directory).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.core.errors import PipelineError, report_errors
from cxr.core.outputs import write_table
from cxr.data.decoding import PILLOW_MAX_PIXELS, UnusableImage, decode_gray
from cxr.data.layouts import IMAGE_SUFFIXES
from cxr.evaluation.gradcam import NoFeatureMapError, gradcam_heatmaps, save_overlay
from cxr.serving.predictors import Predictor, load_predictor
from cxr.serving.pyfunc import result_table

DEFAULT_CSV = Path("predictions.csv")


def image_files(inputs: Sequence[Path]) -> tuple[list[Path], bool]:
    """The files to classify (folders searched recursively) and whether a folder was given."""
    files: list[Path] = []
    folder_given = False
    for given in inputs:
        if given.is_dir():
            folder_given = True
            files.extend(
                sorted(
                    path
                    for path in given.rglob("*")
                    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif given.is_file():
            files.append(given)
        else:
            raise PipelineError(f"{given}: no such file or folder")
    if not files:
        raise PipelineError(f"no image files in {', '.join(str(given) for given in inputs)}")
    return files, folder_given


def predict_files(
    predictor: Predictor, files: Sequence[Path], max_pixels: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per file (class, confidence, p_<class>, error) and the model inputs decoded."""
    grays, errors = [], []
    for file in files:
        try:
            # Decoded as build decodes (a large JPEG at the scale the cache needs).
            grays.append(decode_gray(file, max_pixels, predictor.record.cache_size))
            errors.append("")
        except UnusableImage as error:
            errors.append(str(error))
    images = predictor.prepare(grays)
    table = result_table(predictor.predict_proba(images), errors, list(predictor.class_names))
    table.insert(0, "path", [str(file) for file in files])
    return table, images


def save_gradcams(
    predictor: Predictor, table: pd.DataFrame, images: np.ndarray, out_dir: Path
) -> str:
    """Save a Grad-CAM overlay per readable image into out_dir; return what was done."""
    readable = table[table["error"] == ""]
    chosen = [predictor.class_names.index(name) for name in readable["class"]]
    try:
        heatmaps = gradcam_heatmaps(predictor.model, images, chosen)
    except NoFeatureMapError as reason:
        return f"Grad-CAM unavailable for this model: {reason}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for (_, row), image, heatmap in zip(readable.iterrows(), images, heatmaps, strict=True):
        caption = f"{Path(row['path']).name}: {row['class']} ({row['confidence']:.2f})"
        save_overlay(image, heatmap, caption, out_dir / f"{Path(row['path']).stem}_gradcam.png")
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
    parser.add_argument("--csv", type=Path, help="write the results here (default for folders)")
    parser.add_argument("--gradcam", type=Path, help="save a Grad-CAM overlay per image here")
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
    files, folder_given = image_files(args.inputs)
    predictor = load_predictor(args.model)
    table, images = predict_files(predictor, files, args.max_pixels)
    for _, row in table.iterrows():
        print(describe(row, predictor.class_names))
    csv = args.csv or (DEFAULT_CSV if folder_given else None)
    if csv is not None:
        write_table(csv, table)
        print(f"predict: {len(table)} result(s) -> {csv}")
    if args.gradcam is not None:
        print(f"predict: {save_gradcams(predictor, table, images, args.gradcam)}")
    if (table["error"] != "").all():
        raise PipelineError("no given file could be read as an image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
