"""Stage build: decode every manifest file once into the pixel cache and the images table."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr.core.errors import PipelineError, report_errors
from cxr.core.outputs import staged_dir, staged_file, write_json, write_table
from cxr.core.params import BuildParams, load_params, run_settings
from cxr.core.paths import ProjectPaths, paths_from_argv
from cxr.core.tables import read_manifest
from cxr.images.exploration import build_metrics, draw_exploration, intensity_histograms
from cxr.images.pixel_cache import check_classes_left, decode_into_cache


def build(build_params: BuildParams, seed: int, workers: int, paths: ProjectPaths) -> pd.DataFrame:
    """Write the pixel cache (decoded in `workers` processes), tables, summary and figures."""
    manifest = read_manifest(paths.manifest)
    if manifest.empty:
        raise PipelineError(
            f"{paths.manifest}: lists no files; check data.source and re-run ingest"
        )
    with staged_file(paths.pixel_cache) as staging:
        images, rejected = decode_into_cache(
            manifest, paths.raw_dir, build_params, staging, workers
        )
        check_classes_left(images, rejected, paths.raw_dir)
        pixels = np.load(staging, mmap_mode="r")
        histograms = intensity_histograms(
            images,
            pixels,
            build_params.histogram_images_per_class,
            build_params.histogram_bins,
            seed,
        )
        del pixels  # the memory map is closed before the cache is renamed into place
    with staged_dir(paths.reports("build")) as figures_dir:
        draw_exploration(images, histograms, figures_dir)
    write_table(paths.images_table, images)
    write_table(paths.rejected_table, rejected)
    write_json(paths.summary("build"), build_metrics(images, rejected))
    return images


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the build stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    images = build(params.build, params.seed, run_settings(os.environ).workers, paths)
    rejected = len(pd.read_csv(paths.rejected_table))
    print(
        f"build: {len(images)} images, {images['label'].nunique()} classes, {rejected} rejected "
        f"-> {paths.images_table}, {paths.pixel_cache}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
