import json
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from stages import build, ingest, split, train
from stages.config import parse_params
from stages.images import decode_and_resize, image_dataset
from stages.paths import ProjectPaths

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(weights: str = "none") -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(
        counts={"covid": 10, "normal": 12, "viral_pneumonia": 10}, image_size=40
    )
    params["build"]["histogram_images_per_class"] = 3
    params["train"].update(
        image_size=32,
        epochs=2,
        batch_size=8,
        weights=weights,
        fine_tune_epochs=1,
        fine_tune_layers=5,
    )
    params["train"]["head"]["dense_units"] = 8
    return params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A project whose ingest, build and split have run on tiny phantoms."""
    root = tmp_path_factory.mktemp("train") / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    for stage in (ingest, build, split):
        assert stage.main(["--root", str(root)]) == 0
    return root


def fresh_copy(prepared: Path, tmp_path: Path, params: dict) -> Path:
    root = tmp_path / "project"
    shutil.copytree(prepared, root)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_decode_and_resize_gives_one_uint8_channel(tmp_path):
    Image.new("RGB", (50, 30), (200, 100, 0)).save(tmp_path / "wide.jpg")
    Image.new("L", (20, 20), 77).save(tmp_path / "gray.png")
    wide = decode_and_resize(tf.constant(str(tmp_path / "wide.jpg")), 16).numpy()
    gray = decode_and_resize(tf.constant(str(tmp_path / "gray.png")), 16).numpy()
    assert wide.shape == gray.shape == (16, 16, 1) and wide.dtype == np.uint8
    assert np.all(gray == 77)


def test_dataset_shuffles_with_the_seed_and_keeps_order_without(tmp_path):
    files = []
    for index in range(6):
        Image.new("L", (8, 8), index * 40).save(tmp_path / f"{index}.png")
        files.append(tmp_path / f"{index}.png")

    def labels_of(dataset):
        return [int(label) for _, batch in dataset for label in batch]

    assert labels_of(image_dataset(files, list(range(6)), 8, 4, shuffle_seed=None)) == list(
        range(6)
    )
    first = labels_of(image_dataset(files, list(range(6)), 8, 4, shuffle_seed=3))
    assert first == labels_of(image_dataset(files, list(range(6)), 8, 4, shuffle_seed=3))
    assert sorted(first) == list(range(6))


def test_train_from_scratch_saves_model_history_and_one_mlflow_run(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = fresh_copy(prepared, tmp_path, tiny_params())
    # when train runs on a backbone without pretrained weights
    assert train.main(["--root", str(root)]) == 0
    paths = ProjectPaths(root)
    metrics = json.loads(paths.metrics("train").read_text())
    record = json.loads(paths.run_record.read_text())
    history = pd.read_csv(paths.history)
    # then it trained one phase, saved a loadable model, the history and one MLflow run
    assert metrics["pretrained"] is False and metrics["epochs_run"] == 2 == len(history)
    assert record["class_names"] == ["covid", "normal", "viral_pneumonia"]
    model = keras.models.load_model(paths.model_file)
    assert model.output_shape == (None, 3)
    assert sorted(p.name for p in paths.models_dir.iterdir()) == ["model.keras", "run.json"]
    run = mlflow.get_run(record["run_id"])
    assert run.data.tags["backbone"] == "mobilenetv2" and run.data.tags["pretrained"] == "false"
    assert run.data.tags["data_fingerprint"] == record["data_fingerprint"]
    assert run.data.params["train.epochs"] == "2" and run.data.params["model"] == "mobilenetv2"
    steps = mlflow.tracking.MlflowClient().get_metric_history(record["run_id"], "val_accuracy")
    assert [m.step for m in steps] == [0, 1]


def test_pretrained_backbone_trains_frozen_then_fine_tunes(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    backbone.save_weights(tmp_path / "pretrained.weights.h5")
    root = fresh_copy(prepared, tmp_path, tiny_params(str(tmp_path / "pretrained.weights.h5")))
    assert train.main(["--root", str(root)]) == 0
    metrics = json.loads(ProjectPaths(root).metrics("train").read_text())
    history = pd.read_csv(ProjectPaths(root).history)
    # then the frozen phase (2 epochs) is followed by one fine-tuning epoch at the lower rate
    assert metrics["pretrained"] is True and metrics["epochs_run"] == 3
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["learning_rate"].iloc[-1] == pytest.approx(1e-5)


def test_same_params_give_identical_metrics(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    results = []
    for attempt in ("first", "second"):
        root = fresh_copy(prepared, tmp_path / attempt, tiny_params())
        assert train.main(["--root", str(root)]) == 0
        results.append(pd.read_csv(ProjectPaths(root).history))
    pd.testing.assert_frame_equal(results[0], results[1])


def test_bad_params_stop_train_before_writing(prepared, tmp_path, capsys):
    params = tiny_params()
    params["train"]["epochs"] = 0
    root = fresh_copy(prepared, tmp_path, params)
    assert train.main(["--root", str(root)]) == 2
    assert "train.epochs = 0" in capsys.readouterr().err
    assert not (root / "models").exists()
    assert parse_params(tiny_params()).train.epochs == 2
