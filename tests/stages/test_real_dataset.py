"""Ingest, build and split over the real covid19-dataset (train / test folders), if present."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxr.core.outputs import read_json
from cxr.core.paths import SPLITS, ProjectPaths
from stages import build, ingest, split

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT.parent / "shared" / "datasets" / "covid19-dataset"

pytestmark = [
    pytest.mark.skipif(not DATASET.is_dir(), reason=f"{DATASET} is absent (shared dataset)"),
    pytest.mark.slow,  # decodes 317 full-size X-rays: about half a minute on two cores
]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> ProjectPaths:
    """A checkout whose ingest, build and split stages ran on the dataset (copied to tmp only)."""
    paths = ProjectPaths(tmp_path_factory.mktemp("covid19"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["source"] = str(DATASET)
    params["build"].update(cache_size=64, histogram_images_per_class=5)
    params["train"].update(image_size=64)  # no larger than the small cache
    params["split"].update(undersample=False, resplit=False, duplicates="drop-from-test")
    paths.params.write_text(yaml.safe_dump(params), encoding="utf-8")
    for stage in (ingest, build, split):
        assert stage.main(["--root", str(paths.root)]) == 0
    return paths


def test_given_folders_hold_the_published_counts(checkout: ProjectPaths) -> None:
    # Given the built images table of the dataset
    images = pd.read_parquet(checkout.images_table)

    # Then every file decoded, and the given train / test folders hold the published counts
    assert read_json(checkout.summary("build"))["rejected"] == 0
    counts = images.groupby(["given_split", "label"]).size().unstack().to_dict("index")
    assert counts == {
        "train": {"covid": 111, "normal": 70, "viral_pneumonia": 70},
        "test": {"covid": 26, "normal": 20, "viral_pneumonia": 20},
    }


def test_duplicates_across_train_and_test_are_found_and_dropped(checkout: ProjectPaths) -> None:
    # Given the split metrics
    duplicates = read_json(checkout.summary("split"))["duplicates"]

    # Then the 10 byte-identical copies are found, 6 of them across given train and test
    # (all covid), and those 6 test copies are dropped from test
    assert duplicates["identical_copies"] == duplicates["identical_sets"] == 10
    assert duplicates["cross_split_units"] == duplicates["cross_split_images"] == 6
    assert duplicates["dropped"] == 6
    tables = {name: pd.read_parquet(checkout.split_table(name)) for name in SPLITS}
    assert tables["test"]["label"].value_counts().to_dict() == {
        "covid": 20,
        "normal": 20,
        "viral_pneumonia": 20,
    }


def test_no_duplicate_straddles_the_splits(checkout: ProjectPaths) -> None:
    # Given the written split tables
    rows = pd.concat(
        pd.read_parquet(checkout.split_table(name)).assign(split=name) for name in SPLITS
    )

    # Then every content and every leakage unit sits in one split only
    assert len(rows) == 317 - 6
    assert rows.groupby("sha256")["split"].nunique().max() == 1
    assert rows.groupby("unit")["split"].nunique().max() == 1
    assert set(rows.loc[rows["split"] != "test", "given_split"]) == {"train"}
