"""The whole `dvc repro` on the real covid19-dataset (its train / test folders), when present."""

import json
import sys

import pandas as pd
import pytest
import yaml
from dvc_project import ROOT, STAGES, clean_env, copy_project, git_repo, run, stages_run

DATASET = ROOT.parent / "shared" / "datasets" / "covid19-dataset"

pytestmark = [
    pytest.mark.skipif(not DATASET.is_dir(), reason=f"{DATASET} is absent (shared dataset)"),
    pytest.mark.slow,
]


def real_data_params() -> dict:
    """Only data.source changed, plus a small backbone and small images so it takes a minute."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = str(DATASET)
    params["model"] = "vgg16"
    params["build"].update(cache_size=64, histogram_images_per_class=5)
    params["train"].update(image_size=32, epochs=2, batch_size=16, fine_tune_epochs=0)
    params["evaluate"].update(bootstrap_samples=100, gradcam_images=1)
    return params


def test_repro_on_the_real_dataset_keeps_its_test_folder_without_leaks(tmp_path):
    repo = tmp_path / "project"
    copy_project(repo, real_data_params())
    env = clean_env()
    git_repo(repo, env)

    output = run([sys.executable, "-m", "dvc", "repro"], repo, env)

    assert stages_run(output) == STAGES
    ingest = json.loads((repo / "metrics" / "summary" / "ingest.json").read_text())
    assert ingest["layout"] == "split_folders"
    split = json.loads((repo / "metrics" / "summary" / "split.json").read_text())
    assert split["duplicates"]["dropped"] == 6
    tables = {
        name: pd.read_parquet(repo / "data" / "processed" / f"{name}.parquet")
        for name in ("train", "val", "test")
    }
    # the given test folder is the test split, less the 6 copies of train images
    assert set(tables["test"]["given_split"]) == {"test"} and len(tables["test"]) == 60
    contents = [set(table["sha256"]) for table in tables.values()]
    assert not (contents[0] & contents[1] or contents[0] & contents[2] or contents[1] & contents[2])
    evaluate = json.loads((repo / "metrics" / "summary" / "evaluate.json").read_text())
    assert evaluate["test_images"] == 60 and 0.0 <= evaluate["test_accuracy"] <= 1.0
    compare = json.loads((repo / "metrics" / "summary" / "compare.json").read_text())
    assert compare["best_model"] == "vgg16"
