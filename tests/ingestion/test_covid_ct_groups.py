"""data.group_pattern on the real covid-ct-cropped collection: papers never straddle splits."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxr.core.outputs import read_json
from cxr.core.paths import SPLITS, ProjectPaths
from stages import build, ingest, split

ROOT = Path(__file__).resolve().parents[2]
DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "covid-ct-cropped"
# The README's pattern: the paper (name before -p<page>-) or figure (name before %<n> or _<n>).
COVID_CT = r"([^/]+?)(?:-p\d+-[^/]*|_\d+[^/]*|%\d+)?\.\w+$"

pytestmark = [
    pytest.mark.skipif(
        not DATASET.is_dir(), reason=f"{DATASET} is absent (the shared covid-ct-cropped dataset)"
    ),
    pytest.mark.slow,  # decodes 746 CT crops twice: about half a minute on two cores
]


def _split_rows(root: Path, group_pattern: str) -> pd.DataFrame:
    """Ingest, build and split the dataset in a checkout at root; every image with its split."""
    paths = ProjectPaths(root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(source=str(DATASET), group_pattern=group_pattern)
    params["build"].update(cache_size=64, histogram_images_per_class=2)
    params["train"].update(image_size=64)  # no larger than the small cache
    params["split"].update(undersample=False)
    paths.params.write_text(yaml.safe_dump(params), encoding="utf-8")
    for stage in (ingest, build, split):
        assert stage.main(["--root", str(root)]) == 0
    return pd.concat(pd.read_parquet(paths.split_table(name)).assign(split=name) for name in SPLITS)


def _papers(rows: pd.DataFrame) -> pd.Series:
    """Each image's paper or figure, read with the README's pattern from its file name."""
    pattern = re.compile(COVID_CT)
    return rows["path"].map(lambda path: pattern.search(path).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectPaths, pd.DataFrame]:
    """The checkout and split rows with data.group_pattern set."""
    root = tmp_path_factory.mktemp("grouped")
    return ProjectPaths(root), _split_rows(root, COVID_CT)


def test_every_file_gets_its_paper_as_group(grouped: tuple[ProjectPaths, pd.DataFrame]) -> None:
    # Given the ingest metrics and manifest of the grouped run
    paths, rows = grouped
    metrics = read_json(paths.summary("ingest"))

    # Then every file matched the pattern: 329 papers or figures over 746 images
    assert metrics["files"] == len(rows) == 746
    assert metrics["groups"] == 329
    assert metrics["warnings"] == {}
    assert (rows["group"] == _papers(rows)).all()


def test_no_paper_straddles_the_splits(grouped: tuple[ProjectPaths, pd.DataFrame]) -> None:
    # Given the split tables of the grouped run
    paths, rows = grouped

    # Then each group sits in one split, and split counted the same groups as its units
    assert rows.groupby("group")["split"].nunique().max() == 1
    assert read_json(paths.summary("split"))["duplicates"]["groups"] == 329
    assert set(rows["split"]) == set(SPLITS)


def test_without_the_pattern_papers_straddle_the_splits(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Given the same data split without data.group_pattern
    rows = _split_rows(tmp_path_factory.mktemp("plain"), "")

    # Then slices of one paper land in different splits (the leak the pattern prevents)
    assert (rows["group"] == "").all()
    straddling = (rows.groupby(_papers(rows))["split"].nunique() > 1).sum()
    assert straddling > 10
