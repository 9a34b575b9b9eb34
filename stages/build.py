"""Stage build: decode every manifest file once into the pixel cache and the images table."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from stages.config import BuildParams, load_params
from stages.decoding import decode_files
from stages.errors import PipelineError, report_errors
from stages.outputs import save_figure, staged_dir, staged_file, write_json, write_table
from stages.paths import ProjectPaths, paths_from_argv
from stages.tables import IMAGE_COLUMNS, REJECTED_COLUMNS, read_manifest


def shrink_npy(path: Path, rows: int) -> None:
    """Cut a C-ordered .npy file in place to its first `rows` rows (rewriting its header)."""
    with path.open("r+b") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(handle)
        data_offset = handle.tell()
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": fortran_order,
                "shape": (rows, *shape[1:]),
            },
        )
        # numpy pads every header so the first axis can grow to 21 digits in place.
        if len(header.getvalue()) != data_offset:
            raise RuntimeError(f"{path}: npy header length changed; cannot shrink in place")
        handle.seek(0)
        handle.write(header.getvalue())
        handle.truncate(data_offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def decode_into_cache(
    manifest: pd.DataFrame, raw_dir: Path, build_params: BuildParams, cache: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every manifest file once, pixels into the staged cache; return images and rejects.

    Rows stream from the worker processes in manifest order straight into a memory-mapped
    .npy, so the stage never holds more than one cache's worth of pixels.
    """
    size = build_params.cache_size
    rows: list[dict[str, object]] = []
    rejected: list[dict[str, str]] = []
    pixels = np.lib.format.open_memmap(
        cache, mode="w+", dtype=np.uint8, shape=(len(manifest), size, size)
    )
    results = decode_files(
        raw_dir,
        manifest["path"].tolist(),
        build_params.max_pixels,
        size,
        build_params.workers,
    )
    for entry, result in zip(manifest.to_dict("records"), results, strict=True):
        if result.rejection is not None or result.info is None or result.pixels is None:
            rejected.append({"path": result.path, "reason": str(result.rejection)})
            continue
        pixels[len(rows)] = result.pixels
        rows.append({**entry, **result.info, "cache_index": len(rows)})
    pixels.flush()
    del pixels  # release the memory map before the header is rewritten
    shrink_npy(cache, len(rows))
    images = pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))
    images = images.astype({"width": "int64", "height": "int64", "bytes": "int64"})
    return images.astype({"cache_index": "int64"}), pd.DataFrame(
        rejected, columns=list(REJECTED_COLUMNS)
    )


def intensity_histograms(
    images: pd.DataFrame, pixels: np.ndarray, per_class: int, bins: int, seed: int
) -> dict[str, np.ndarray]:
    """Mean normalised gray-level histogram per class over a seeded sample of cached images."""
    histograms: dict[str, np.ndarray] = {}
    for label, group in images.groupby("label"):
        sample = group.sample(min(per_class, len(group)), random_state=seed)
        counts = np.zeros(bins)
        for index in sample["cache_index"]:
            counts += np.histogram(pixels[index], bins=bins, range=(0, 255), density=True)[0]
        histograms[str(label)] = counts / len(sample)
    return histograms


def draw_exploration(
    images: pd.DataFrame, histograms: dict[str, np.ndarray], figures_dir: Path
) -> None:
    """Images per class (bar), width x height (scatter) and intensity histograms per class."""
    counts = images["label"].value_counts().sort_index()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.bar(counts.index, counts.to_numpy(), color="tab:blue")
    axis.set(title="Images per class", xlabel="class", ylabel="images")
    save_figure(figure, figures_dir / "class_counts.png")

    figure, axis = plt.subplots(figsize=(6, 5))
    for label, group in images.groupby("label"):
        axis.scatter(group["width"], group["height"], s=10, alpha=0.6, label=str(label))
    axis.set(title="Image size", xlabel="width (px)", ylabel="height (px)")
    axis.legend()
    save_figure(figure, figures_dir / "image_sizes.png")

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, histogram in histograms.items():
        edges = np.linspace(0, 255, len(histogram) + 1)
        axis.plot((edges[:-1] + edges[1:]) / 2, histogram, label=label)
    axis.set(
        title="Pixel intensity per class (cached images)", xlabel="gray level", ylabel="density"
    )
    axis.legend()
    save_figure(figure, figures_dir / "intensity_histograms.png")


def build_metrics(images: pd.DataFrame, rejected: pd.DataFrame) -> dict[str, object]:
    """Image and class counts, distinct contents and rejected files per reason."""
    reasons = Counter(reason.split(":", 1)[0] for reason in rejected["reason"])
    return {
        "images": len(images),
        "classes": {str(k): int(v) for k, v in images["label"].value_counts().items()},
        "distinct_contents": int(images["sha256"].nunique()),
        "rejected": len(rejected),
        "rejected_reasons": dict(sorted(reasons.items())),
    }


def build(build_params: BuildParams, seed: int, paths: ProjectPaths) -> pd.DataFrame:
    """Write the pixel cache, images table, rejected table, metrics and exploration figures."""
    manifest = read_manifest(paths.manifest)
    if manifest.empty:
        raise PipelineError(
            f"{paths.manifest}: lists no files; check data.source and re-run ingest"
        )
    with staged_file(paths.pixel_cache) as staging:
        images, rejected = decode_into_cache(manifest, paths.raw_dir, build_params, staging)
        if images["label"].nunique() < 2:
            raise PipelineError(
                f"{paths.raw_dir}: {len(images)} usable image(s) in "
                f"{images['label'].nunique()} class(es) after rejecting {len(rejected)} "
                f"file(s) (e.g. {rejected.head(3).to_dict('records')}); need at least two classes"
            )
        pixels = np.load(staging, mmap_mode="r")
        histograms = intensity_histograms(
            images,
            pixels,
            build_params.histogram_images_per_class,
            build_params.histogram_bins,
            seed,
        )
        del pixels
    with staged_dir(paths.reports("build")) as figures_dir:
        draw_exploration(images, histograms, figures_dir)
    write_table(paths.images_table, images)
    write_table(paths.rejected_table, rejected)
    write_json(paths.metrics("build"), build_metrics(images, rejected))
    return images


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the build stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    images = build(params.build, params.seed, paths)
    rejected = len(pd.read_csv(paths.rejected_table))
    print(
        f"build: {len(images)} images, {images['label'].nunique()} classes, {rejected} rejected "
        f"-> {paths.images_table}, {paths.pixel_cache}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
