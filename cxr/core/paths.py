"""Every path the pipeline reads or writes, under the repository root (dvc.yaml lists them too)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
# Files of models/: the run record and the model file of each kind (keras or sklearn).
RUN_RECORD_FILE = "run.json"
MODEL_FILES: dict[str, str] = {"keras": "model.keras", "sklearn": "model.joblib"}
# Files of pretrained/: what the pretrain stage did, and the backbone weights it left.
PRETRAIN_RECORD_FILE = "pretrain.json"
ENCODER_WEIGHTS_FILE = "encoder.weights.h5"


def workspace_root(cwd: Path) -> Path:
    """Return the user's checkout, also when DVC runs a --temp or queued experiment in .dvc/tmp."""
    parts = cwd.resolve().parts
    # DVC runs temp and queued experiments in a copy under <repo>/.dvc/tmp/exps/...; relative
    # data sources and the MLflow store must still mean the checkout the user works in.
    for index in range(len(parts) - 1):
        if parts[index] == ".dvc" and parts[index + 1] == "tmp":
            return Path(*parts[:index])
    return cwd.resolve()


@dataclass(frozen=True)
class ProjectPaths:
    """The data lifecycle of one checkout: raw, interim, processed, models, metrics, reports."""

    root: Path

    @property
    def params(self) -> Path:
        """params.yaml."""
        return self.root / "params.yaml"

    @property
    def raw_dir(self) -> Path:
        """Immutable copy of data.source as ingested (its own layout; the manifest labels it)."""
        return self.root / "data" / "raw"

    @property
    def downloads_dir(self) -> Path:
        """Archives fetched from a URL or Kaggle, kept between runs (persisted DVC output)."""
        return self.root / "data" / "downloads"

    @property
    def manifest(self) -> Path:
        """One row per raw file found by ingest: path, label, given split, group and source."""
        return self.root / "data" / "interim" / "manifest.parquet"

    @property
    def images_table(self) -> Path:
        """One row per decodable raw image (the dataframe build)."""
        return self.root / "data" / "interim" / "images.parquet"

    @property
    def ingest_rejected(self) -> Path:
        """Table rows ingest dropped (blank label, no or several files), with the reason (CSV)."""
        return self.root / "data" / "interim" / "ingest_rejected.csv"

    @property
    def rejected_table(self) -> Path:
        """Raw files the build could not use, with the reason (CSV, for people to read)."""
        return self.root / "data" / "interim" / "rejected.csv"

    @property
    def pixel_cache(self) -> Path:
        """Every accepted image decoded once: uint8 (N, size, size) gray, row = cache_index."""
        return self.root / "data" / "interim" / "pixels.npy"

    @property
    def split_dir(self) -> Path:
        """Train / val / test tables."""
        return self.root / "data" / "processed"

    def split_table(self, split: str) -> Path:
        """The table of one split."""
        return self.split_dir / f"{split}.parquet"

    @property
    def fold_design(self) -> Path:
        """Which cross-validation design and fold the split tables are (JSON, beside them)."""
        return self.split_dir / "cv_design.json"

    @property
    def pretrained_dir(self) -> Path:
        """The self-supervised pre-training's record and backbone weights (stage pretrain)."""
        return self.root / "pretrained"

    @property
    def models_dir(self) -> Path:
        """The trained model and its run record."""
        return self.root / "models"

    def model_file(self, kind: str = "keras") -> Path:
        """The trained model of `kind`: Keras (raw gray pixels in) or scikit-learn (joblib)."""
        return self.models_dir / MODEL_FILES[kind]

    @property
    def run_record(self) -> Path:
        """What train recorded about the model (cxr.models.run_record), read by evaluate."""
        return self.models_dir / RUN_RECORD_FILE

    @property
    def metrics_dir(self) -> Path:
        """Metrics JSON and plot data, tracked by git so `dvc exp show` can show them."""
        return self.root / "metrics"

    def metrics(self, stage: str) -> Path:
        """The DVC metrics of one stage (train, evaluate, compare): its headline numbers only.

        `dvc metrics show` and `dvc exp show` print a column per key of every metrics file, so
        the rest of what a stage records is in its summary.
        """
        return self.metrics_dir / f"{stage}.json"

    def summary(self, stage: str) -> Path:
        """metrics/summary/<stage>.json: everything one stage records (counts, intervals, ids)."""
        return self.metrics_dir / "summary" / f"{stage}.json"

    @property
    def history(self) -> Path:
        """Per-epoch loss and accuracy (DVC plot)."""
        return self.metrics_dir / "train_history.csv"

    @property
    def predictions(self) -> Path:
        """Per-test-image true and predicted labels (DVC confusion plot)."""
        return self.metrics_dir / "test_predictions.csv"

    @property
    def evaluate_plots(self) -> Path:
        """ROC and PR points per class and the reliability table (DVC plots data)."""
        return self.metrics_dir / "evaluate_plots"

    def reports(self, stage: str) -> Path:
        """Figures and tables drawn by one stage."""
        return self.root / "reports" / stage


@dataclass(frozen=True)
class ExternalDataPaths(ProjectPaths):
    """Paths of one external dataset (evaluate.external.<name>): its own raw copy and pixel cache.

    The data-lifecycle paths ingest and build write (raw, downloads, manifest, images table,
    pixel cache) point under data/external/<name>/, so the same code ingests and decodes it;
    every other path (models, splits, metrics) is the project's.
    """

    name: str

    @property
    def external_dir(self) -> Path:
        """data/external/<name>: everything this dataset's stage writes under data/."""
        return self.root / "data" / "external" / self.name

    @property
    def raw_dir(self) -> Path:
        """Immutable copy of the dataset's source as ingested."""
        return self.external_dir / "raw"

    @property
    def downloads_dir(self) -> Path:
        """Its archive fetched from a URL or Kaggle, kept between runs (persisted DVC output)."""
        return self.external_dir / "downloads"

    @property
    def interim_dir(self) -> Path:
        """Its manifest, images table, rejected tables and pixel cache."""
        return self.external_dir / "interim"

    @property
    def manifest(self) -> Path:
        """One row per raw file: path, label, given split, group and source."""
        return self.interim_dir / "manifest.parquet"

    @property
    def images_table(self) -> Path:
        """One row per decodable raw image."""
        return self.interim_dir / "images.parquet"

    @property
    def ingest_rejected(self) -> Path:
        """Table rows ingest dropped, with the reason (CSV)."""
        return self.interim_dir / "ingest_rejected.csv"

    @property
    def rejected_table(self) -> Path:
        """Raw files decoding could not use, with the reason (CSV)."""
        return self.interim_dir / "rejected.csv"

    @property
    def pixel_cache(self) -> Path:
        """Its images decoded once at the model's cache size: uint8 (N, size, size)."""
        return self.interim_dir / "pixels.npy"

    @property
    def external_metrics(self) -> Path:
        """metrics/external/<name>.json: its scores, the drop and the shortcut check."""
        return self.metrics_dir / "external" / f"{self.name}.json"

    @property
    def external_reports(self) -> Path:
        """reports/external/<name>: its confusion matrix, curves and summary."""
        return self.root / "reports" / "external" / self.name


def paths_from_argv(argv: Sequence[str] | None, description: str | None = None) -> ProjectPaths:
    """Parse a stage's command line (`--root`, default the current directory) into its paths."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    return ProjectPaths(parser.parse_args(argv).root)


def external_paths_from_argv(
    argv: Sequence[str] | None, description: str | None = None
) -> ExternalDataPaths:
    """Parse the external stage's command line (`NAME`, `--root`) into that dataset's paths."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("name", metavar="NAME", help="the dataset evaluate.external.NAME")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    arguments = parser.parse_args(argv)
    return ExternalDataPaths(arguments.root, arguments.name)
