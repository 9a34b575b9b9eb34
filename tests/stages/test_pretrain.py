"""Stage pretrain (stages/pretrain.py): off, on and then train, stale, bad extra folders, JAX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from training_fixtures import fresh_copy, tiny_pretrain_params, write_prepared_project

from cxr.core.paths import ENCODER_WEIGHTS_FILE, PRETRAIN_RECORD_FILE, ProjectPaths
from cxr.models.backbones import load_backbone
from cxr.models.pretrain_record import PretrainRecord, read_pretrain_record, write_pretrain_record
from cxr.models.run_record import read_run_record
from cxr.training.pretraining import EXPERIMENT_SUFFIX
from stages import pretrain, train

ROOT = Path(__file__).resolve().parents[2]

# Every test gets its own MLflow store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_store")

# Runs the stage in a fresh process and says which heavy modules it imported.
STAGE_IMPORTS = """
import json, sys
from stages import pretrain
code = pretrain.main(["--root", sys.argv[1]])
print(json.dumps({"code": code, **{name: name in sys.modules for name in ("keras", "tensorflow")}}))
"""

# pretrain on JAX; whether it imported TensorFlow.
PRETRAIN_ON_JAX = """
import json, sys
from stages import pretrain
code = pretrain.main(["--root", sys.argv[1]])
import keras
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules,
                  "backend": keras.backend.backend()}))
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project whose build and split outputs exist (pixel cache and split tables)."""
    return write_prepared_project(tmp_path_factory.mktemp("pretrain") / "prepared")


def subprocess_env() -> dict[str, str]:
    """This environment for a stage in another process: the checkout importable, no progress bar."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    return env | {"PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def test_off_it_writes_only_its_record_and_never_loads_keras(prepared, tmp_path):
    # given pre-training off, and an encoder an earlier pre-training left in pretrained/
    root = fresh_copy(prepared, tmp_path, tiny_pretrain_params(enabled=False))
    paths = ProjectPaths(root)
    paths.pretrained_dir.mkdir()
    (paths.pretrained_dir / ENCODER_WEIGHTS_FILE).write_bytes(b"earlier")
    # when the stage runs in a process of its own
    done = subprocess.run(
        [sys.executable, "-c", STAGE_IMPORTS, str(root)],
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # then it succeeded without importing Keras or TensorFlow
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "code": 0,
        "keras": False,
        "tensorflow": False,
    }
    # and pretrained/ holds only the record saying pre-training is off
    assert [path.name for path in paths.pretrained_dir.iterdir()] == [PRETRAIN_RECORD_FILE]
    assert json.loads((paths.pretrained_dir / PRETRAIN_RECORD_FILE).read_text()) == {
        "enabled": False
    }


def test_a_baseline_is_not_pretrained_and_says_why(prepared, tmp_path, capsys):
    params = tiny_pretrain_params()
    params["model"] = "pixel_logreg"
    root = fresh_copy(prepared, tmp_path, params)
    assert pretrain.main(["--root", str(root)]) == 0
    record = read_pretrain_record(ProjectPaths(root).pretrained_dir)
    assert record.enabled is False and "scikit-learn baseline" in record.reason
    assert "pretrain: off (model pixel_logreg is a scikit-learn baseline" in capsys.readouterr().out


@pytest.mark.slow
def test_train_starts_from_the_encoder_pretrain_left(prepared, tmp_path):
    # given pre-training on for one epoch
    root = fresh_copy(prepared, tmp_path, tiny_pretrain_params(epochs=1))
    paths = ProjectPaths(root)
    # when pretrain and then train run
    assert pretrain.main(["--root", str(root)]) == 0
    pretrained = read_pretrain_record(paths.pretrained_dir)
    assert train.main(["--root", str(root)]) == 0
    # then the trained model's record and MLflow run name the pre-training run
    record = read_run_record(paths.models_dir)
    assert pretrained.enabled and record.pretrain_run_id == pretrained.mlflow_run_id != ""
    run = mlflow.get_run(record.run_id)
    assert run.data.tags["backbone_init"] == "self_supervised"
    assert run.data.tags["pretrain_run_id"] == pretrained.mlflow_run_id
    assert run.data.params["pretrain.enabled"] == "True"
    # and the backbone trained as from scratch: one phase, not frozen
    summary = json.loads(paths.summary("train").read_text())
    assert summary["pretrained"] is False and summary["epochs_run"] == 1
    # and the pre-training run is in an experiment of its own, which compare does not rank
    pretraining = mlflow.get_experiment(mlflow.get_run(pretrained.mlflow_run_id).info.experiment_id)
    assert pretraining.name == f"cxr-pipeline{EXPERIMENT_SUFFIX}"
    ranked = mlflow.search_runs(experiment_names=["cxr-pipeline"])
    assert ranked["run_id"].tolist() == [record.run_id]


def test_train_refuses_a_pretraining_of_another_size_in_one_line(prepared, tmp_path, capsys):
    # given pre-training on, and pretrained/ left by a pre-training at 64 px
    root = fresh_copy(prepared, tmp_path, tiny_pretrain_params())
    paths = ProjectPaths(root)
    stale = PretrainRecord(
        enabled=True, model="compact_cnn", image_size=64, data_fingerprint="", mlflow_run_id="x"
    )
    write_pretrain_record(paths.pretrained_dir, stale)
    (paths.pretrained_dir / ENCODER_WEIGHTS_FILE).write_bytes(b"weights")
    # when train runs, then it stops in one line saying what differs and what to run
    assert train.main(["--root", str(root)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "image_size 64 (train: 32)" in error
    assert error.endswith("run `dvc repro pretrain`")
    assert not paths.models_dir.exists()


@pytest.mark.parametrize("content", [None, "", "notes.txt"])
def test_an_extra_folder_without_images_is_refused_in_one_line(prepared, tmp_path, capsys, content):
    # given an extra folder that does not exist, or holds a hidden file and perhaps a text file
    root = fresh_copy(prepared, tmp_path, tiny_pretrain_params(extra_folders=["unlabelled"]))
    if content is not None:
        (root / "unlabelled").mkdir()
        (root / "unlabelled" / ".DS_Store").write_bytes(b"\0" * 16)
    if content:
        (root / "unlabelled" / content).write_text("not an image")
    # when the stage runs, then it stops in one line naming the folder, and writes nothing
    assert pretrain.main(["--root", str(root)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("error: pretrain.extra_folders: 'unlabelled' ")
    if content is None:
        assert "is not a folder" in error
    elif not content:
        assert "holds no image build can decode (0 file(s)" in error
    else:
        assert "holds no image build can decode (1 file(s)" in error and "notes.txt" in error
    assert not ProjectPaths(root).pretrained_dir.exists()


@pytest.mark.slow
def test_pretrain_runs_on_jax_without_tensorflow_and_its_encoder_loads_here(prepared, tmp_path):
    # given pre-training on for one epoch
    root = fresh_copy(prepared, tmp_path, tiny_pretrain_params(epochs=1))
    env = {key: value for key, value in subprocess_env().items() if key != "CXR_CPU_DEVICES"}
    # when pretrain runs on JAX
    done = subprocess.run(
        [sys.executable, "-c", PRETRAIN_ON_JAX, str(root)],
        cwd=root,
        env=env | {"KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # then it imported no TensorFlow and recorded a finite loss
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "code": 0,
        "tensorflow": False,
        "backend": "jax",
    }
    paths = ProjectPaths(root)
    pretrained = read_pretrain_record(paths.pretrained_dir)
    assert pretrained.epochs_run == 1 and pretrained.final_loss is not None
    # and the encoder it saved starts a backbone on this process's backend (TensorFlow)
    weights = paths.pretrained_dir / ENCODER_WEIGHTS_FILE
    backbone, pretrained_flag = load_backbone("compact_cnn", 32, "none", weights)
    scratch, _ = load_backbone("compact_cnn", 32, "none")
    assert pretrained_flag is False and keras.backend.backend() == "tensorflow"
    assert not np.array_equal(backbone.get_weights()[0], scratch.get_weights()[0])
