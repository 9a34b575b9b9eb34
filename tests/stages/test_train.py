import json
import os

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from training_fixtures import fresh_copy, tiny_params, write_prepared_project

from cxr.core.params import RunSettings, parse_params
from cxr.core.paths import ProjectPaths
from cxr.models.classifier import ensemble_members, weight_layers
from cxr.models.pixels import load_split_pixels
from cxr.models.run_record import read_run_record
from cxr.training.inputs import StreamedPixels, array_dataset, in_memory, load_training_data
from cxr.training.keras_fit import class_weights
from cxr.training.resume import BACKUP_DIR
from cxr.training.run import train_model
from cxr.training.sklearn_fit import HISTORY_COLUMNS
from stages import train
from stages.train import TRAIN_HEADLINE

NO_AUGMENTATION = {
    "horizontal_flip": False,
    "rotation": 0.0,
    "zoom": 0.0,
    "translation": 0.0,
    "contrast": 0.0,
    "brightness": 0.0,
}


# Every test gets its own MLflow store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_store")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project whose build and split outputs exist (pixel cache and split tables)."""
    return write_prepared_project(tmp_path_factory.mktemp("train") / "prepared")


@pytest.fixture(scope="module")
def pretrained_weights(tmp_path_factory):
    """Random VGG16 weights saved to a file, standing in for ImageNet weights."""
    path = tmp_path_factory.mktemp("weights") / "pretrained.weights.h5"
    keras.utils.set_random_seed(1)
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        path
    )
    return path


def head_weights(model_file):
    model = keras.models.load_model(model_file)
    return [
        weights
        for layer in model.layers
        if layer.name.startswith(("head_", "predictions"))
        for weights in layer.get_weights()
    ]


@pytest.mark.slow
def test_train_from_scratch_twice_gives_identical_metrics_and_an_mlflow_run_each(
    prepared, tmp_path
):
    # given the adaptive schedule and balanced class weights
    params = tiny_params(schedule="adaptive", class_weight="balanced")
    histories, records = [], []
    for attempt in ("first", "second"):
        root = fresh_copy(prepared, tmp_path / attempt, params)
        # when train runs on a backbone without pretrained weights
        assert train.main(["--root", str(root)]) == 0
        histories.append(pd.read_csv(ProjectPaths(root).history))
        records.append(read_run_record(ProjectPaths(root).models_dir))
    # then two runs give the same history
    pd.testing.assert_frame_equal(histories[0], histories[1])
    # and one trained one phase, saved a loadable model, the history and one MLflow run
    paths = ProjectPaths(root)
    metrics = json.loads(paths.summary("train").read_text())
    # (the DVC metric holds the headline alone: one `dvc exp show` column per key)
    headline = json.loads(paths.metrics("train").read_text())
    assert headline == {key: metrics[key] for key in TRAIN_HEADLINE}
    record = records[1]
    assert metrics["pretrained"] is False and metrics["epochs_run"] == 2 == len(histories[1])
    assert histories[1]["learning_rate"].notna().all()
    assert record.class_names == ("covid", "normal", "viral_pneumonia")
    assert record.kind == "keras" and record.image_size == 32 and record.cache_size == 40
    assert record.model == "vgg16" and metrics["model"] == "vgg16"
    model = keras.models.load_model(paths.model_file())
    assert model.output_shape == (None, 3)
    assert sorted(p.name for p in paths.models_dir.iterdir()) == ["model.keras", "run.json"]
    assert not any((root / BACKUP_DIR).glob("*"))
    run = mlflow.get_run(record.run_id)
    assert run.data.tags["model"] == "vgg16" and run.data.tags["pretrained"] == "false"
    # train.optimizer / learning_rate auto: adamw at 0.001 for this backbone
    assert (run.data.tags["optimizer"], run.data.tags["learning_rate"]) == ("adamw", "0.001")
    assert run.data.tags["data_fingerprint"] == record.data_fingerprint
    assert run.data.tags["device"] == "CPU" and run.data.tags["kind"] == "keras"
    assert {"tensorflow_version", "keras_version"} <= set(run.data.tags)
    # no CUDA tags on a CPU run (TensorFlow would report the CUDA it was built against)
    assert not {"cuda_version", "cudnn_version"} & set(run.data.tags)
    assert run.data.params["train.epochs"] == "2" and run.data.params["model"] == "vgg16"
    # per-epoch curves at their epoch; no MLflow copies (optimizer_* params, validation_* at 0)
    client = mlflow.tracking.MlflowClient()
    steps = client.get_metric_history(record.run_id, "val_accuracy")
    assert [m.step for m in steps] == [0, 1]
    assert not [name for name in run.data.params if name.startswith("optimizer_")]
    assert not [name for name in run.data.metrics if name.startswith("validation_")]
    assert run.info.run_name == "vgg16"


def test_training_pixels_come_from_the_cache_rows_the_table_names(prepared):
    paths = ProjectPaths(prepared)
    table = pd.read_parquet(paths.split_table("val"))
    names = ["covid", "normal", "viral_pneumonia"]
    data = load_training_data(paths, 32)
    expected = load_split_pixels(paths.pixel_cache, table["cache_index"], 32)
    assert np.array_equal(data.val_images, expected) and data.val_images.shape[1:] == (32, 32, 1)
    assert data.cache_size == 40 and data.class_names == names
    assert data.val_labels.tolist() == [names.index(label) for label in table["label"]]


def test_streamed_batches_are_the_in_memory_batches_in_the_same_order(prepared):
    # Given the training data in memory and streamed from the pixel cache (limit 0 MB)
    paths = ProjectPaths(prepared)
    held = load_training_data(paths, 32, memory_cache_mb=1024)
    streamed = load_training_data(paths, 32, memory_cache_mb=0)
    assert isinstance(held.train_images, np.ndarray)
    assert isinstance(streamed.train_images, StreamedPixels)

    # When both are batched and shuffled with one seed, over two epochs
    def epochs(data):
        batches = array_dataset(data.train_images, data.train_labels.tolist(), 5, 3)
        return [[(x.numpy(), y.numpy()) for x, y in batches] for _ in range(2)]

    # Then every batch holds the same pixels and labels
    for held_epoch, streamed_epoch in zip(epochs(held), epochs(streamed), strict=True):
        for (x1, y1), (x2, y2) in zip(held_epoch, streamed_epoch, strict=True):
            assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert np.array_equal(in_memory(streamed.val_images), held.val_images)


@pytest.mark.slow
def test_a_streamed_fit_equals_the_in_memory_fit(prepared, tmp_path, monkeypatch):
    # Given the same run with its pixels in memory and streamed (CXR_MEMORY_CACHE_MB=0)
    histories = []
    for limit in (1024, 0):
        monkeypatch.setenv("CXR_MEMORY_CACHE_MB", str(limit))
        root = fresh_copy(prepared, tmp_path / f"limit{limit}", tiny_params())
        # When each trains
        assert train.main(["--root", str(root)]) == 0
        histories.append(pd.read_csv(ProjectPaths(root).history))
    # Then the epochs are the same
    pd.testing.assert_frame_equal(histories[0], histories[1])


@pytest.mark.slow
def test_pretrained_backbone_trains_frozen_then_fine_tunes(prepared, tmp_path, pretrained_weights):
    # a constant rate per phase, so the fine-tuning rate shows as it is set
    params = tiny_params(str(pretrained_weights), schedule="constant")
    root = fresh_copy(prepared, tmp_path, params)
    assert train.main(["--root", str(root)]) == 0
    metrics = json.loads(ProjectPaths(root).summary("train").read_text())
    history = pd.read_csv(ProjectPaths(root).history)
    record = read_run_record(ProjectPaths(root).models_dir)
    # then the frozen phase (2 epochs) is followed by one fine-tuning epoch at the lower rate
    assert metrics["pretrained"] is True and metrics["epochs_run"] == 3
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["learning_rate"].iloc[-1] == pytest.approx(1e-5)
    # augmentation is on in tiny_params, so the frozen phase ran end to end
    assert mlflow.get_run(record.run_id).data.tags["cached_features"] == "false"


@pytest.mark.slow
def test_cached_features_give_the_same_head_as_end_to_end(prepared, tmp_path, pretrained_weights):
    # given a pretrained backbone, no augmentation and only the frozen phase
    heads = {}
    for cache_features in ("on", "off"):
        params = tiny_params(
            str(pretrained_weights), cache_features=cache_features, fine_tune_epochs=0
        )
        params["train"]["augment"] = {**params["train"]["augment"], **NO_AUGMENTATION}
        root = fresh_copy(prepared, tmp_path / cache_features, params)
        # when the frozen phase runs on cached features, and end to end
        assert train.main(["--root", str(root)]) == 0
        record = read_run_record(ProjectPaths(root).models_dir)
        tags = mlflow.get_run(record.run_id).data.tags
        assert tags["cached_features"] == str(cache_features == "on").lower()
        heads[cache_features] = head_weights(ProjectPaths(root).model_file())
    # then both give the same head
    assert len(heads["on"]) == len(heads["off"]) >= 4
    for cached, end_to_end in zip(heads["on"], heads["off"], strict=True):
        np.testing.assert_allclose(cached, end_to_end, rtol=1e-4, atol=1e-5)


class InterruptedError(Exception):
    pass


class Interrupt(keras.callbacks.Callback):
    """Stands for a killed process: fails at the end of one epoch, before its backup."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise InterruptedError(f"after epoch {epoch}")


@pytest.mark.slow
def test_resume_after_an_interruption_reaches_the_uninterrupted_weights(
    prepared, tmp_path, pretrained_weights
):
    # given frozen (1 epoch) then fine-tuning (2 epochs), cosine rates, augmentation, weight
    # averages, run without CXR_RESUME (a run never meant to be resumed)
    params = tiny_params(
        str(pretrained_weights), epochs=1, fine_tune_epochs=2, schedule="cosine", ema_momentum=0.9
    )
    environ = dict(os.environ)
    whole = fresh_copy(prepared, tmp_path / "whole", params)
    train_model(parse_params(params), RunSettings(), ProjectPaths(whole), environ)
    # and a run interrupted at the end of epoch 2 (fine-tuning's second, not backed up)
    resumed = fresh_copy(prepared, tmp_path / "resumed", params)
    with pytest.raises(InterruptedError):
        train_model(
            parse_params(params), RunSettings(), ProjectPaths(resumed), environ, [Interrupt(2)]
        )
    assert not ProjectPaths(resumed).models_dir.exists()
    whole_run = read_run_record(ProjectPaths(whole).models_dir).run_id
    (interrupted_run,) = [
        run
        for run in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if run.info.run_id != whole_run
    ]
    # when it runs again with CXR_RESUME=1, the same params and data
    train_model(parse_params(params), RunSettings(resume=True), ProjectPaths(resumed), environ)
    # then it continued the same MLflow run and ended on the uninterrupted run's weights
    history = pd.read_csv(ProjectPaths(resumed).history)
    pd.testing.assert_frame_equal(history, pd.read_csv(ProjectPaths(whole).history))
    assert history["epoch"].tolist() == [0, 1, 2]
    expected = keras.models.load_model(ProjectPaths(whole).model_file()).get_weights()
    actual = keras.models.load_model(ProjectPaths(resumed).model_file()).get_weights()
    for left, right in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(left, right)
    assert len(mlflow.search_runs(search_all_experiments=True)) == 2
    record = read_run_record(ProjectPaths(resumed).models_dir)
    assert record.run_id == interrupted_run.info.run_id
    run = mlflow.get_run(record.run_id)
    assert run.info.status == "FINISHED" and "train.resume" not in run.data.params
    assert not any((ProjectPaths(resumed).root / BACKUP_DIR).glob("*"))


@pytest.mark.slow
def test_without_resume_an_interrupted_runs_backup_is_not_used(prepared, tmp_path):
    # given a run from scratch interrupted in its second epoch, which left the first's backup
    params = tiny_params()
    root = fresh_copy(prepared, tmp_path, params)
    environ = dict(os.environ)
    with pytest.raises(InterruptedError):
        train_model(
            parse_params(params), RunSettings(), ProjectPaths(root), environ, [Interrupt(1)]
        )
    assert list((root / BACKUP_DIR).glob("*/scratch/backup/training_metadata.json"))
    # when train runs again without CXR_RESUME
    train_model(parse_params(params), RunSettings(), ProjectPaths(root), environ)
    # then it started afresh at epoch 0, in a new MLflow run, and left no backup
    record = read_run_record(ProjectPaths(root).models_dir)
    steps = mlflow.tracking.MlflowClient().get_metric_history(record.run_id, "val_loss")
    assert [metric.step for metric in steps] == [0, 1]
    assert pd.read_csv(ProjectPaths(root).history)["epoch"].tolist() == [0, 1]
    assert len(mlflow.search_runs(search_all_experiments=True)) == 2
    assert not any((root / BACKUP_DIR).glob("*"))


def test_a_baseline_logs_the_split_datasets_and_an_epoch_log_without_epochs(prepared, tmp_path):
    # given a scikit-learn baseline, which fits in one go
    params = tiny_params()
    params["model"] = "pixel_logreg"
    root = fresh_copy(prepared, tmp_path, params)
    # when train runs
    assert train.main(["--root", str(root)]) == 0
    # then its epoch log has the Keras columns and no row: the loss and accuracy plots draw
    # no curve rather than a lone dot at epoch 0
    paths = ProjectPaths(root)
    history = pd.read_csv(paths.history)
    assert history.empty and list(history.columns) == list(HISTORY_COLUMNS)
    metrics = json.loads(paths.summary("train").read_text())
    assert metrics["epochs_run"] == 0 and 0 <= metrics["train_accuracy"] <= 1
    # and the run lists the train, val and test tables as its datasets, by the data fingerprint
    record = read_run_record(paths.models_dir)
    inputs = mlflow.tracking.MlflowClient().get_run(record.run_id).inputs.dataset_inputs
    logged = {
        item.dataset.name: (
            item.dataset.digest,
            {tag.key: tag.value for tag in item.tags}["mlflow.data.context"],
            json.loads(item.dataset.source)["uri"],
            json.loads(item.dataset.profile)["num_rows"],
        )
        for item in inputs
    }
    fingerprint = record.data_fingerprint
    assert logged == {
        "train": (fingerprint, "training", "data/processed/train.parquet", 24),
        "val": (fingerprint, "validation", "data/processed/val.parquet", 9),
        "test": (fingerprint, "test", "data/processed/test.parquet", 9),
    }
    # with the split tables' columns, no pixels
    train_table = next(item.dataset for item in inputs if item.dataset.name == "train")
    schema = json.loads(train_table.schema)
    assert {column["name"] for column in schema["mlflow_colspec"]} == {
        "path", "label", "sha256", "group", "source", "cache_index",
    }  # fmt: skip


def test_a_collapsed_model_is_flagged_in_one_line_its_summary_and_its_mlflow_run(
    prepared, tmp_path, capsys
):
    # given a baseline regularised until it cannot learn (C = 1e-9: its pixel weights stay ~0)
    # on a train split where covid is the largest class: it answers covid for every image
    params = tiny_params()
    params["model"] = "pixel_logreg"
    params["train"]["baseline"]["c"] = 1e-9
    root = fresh_copy(prepared, tmp_path, params)
    table = ProjectPaths(root).split_table("train")
    rows = pd.read_parquet(table)
    rows[(rows["label"] == "covid") | (rows.groupby("label").cumcount() < 4)].to_parquet(table)
    # when train runs, then it ends with one warning line naming the model and why
    assert train.main(["--root", str(root)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "collapsed" in line]
    assert warned == [
        "warning: train: pixel_logreg collapsed: it answers covid for all 9 validation images"
    ]
    # and the summary and the MLflow run carry the flag and the reason
    paths = ProjectPaths(root)
    summary = json.loads(paths.summary("train").read_text())
    assert summary["collapsed"] is True
    assert summary["collapse_reason"] == "it answers covid for all 9 validation images"
    tags = mlflow.tracking.MlflowClient().get_run(read_run_record(paths.models_dir).run_id)
    assert tags.data.tags["collapsed"] == "true"
    assert tags.data.tags["collapse_reason"] == summary["collapse_reason"]


def test_class_weights_balance_the_loss_of_each_class():
    labels = np.array([0, 0, 0, 1])
    assert class_weights("none", labels, 3) is None
    weights = class_weights("balanced", labels, 3)
    # n / (classes present * count); a class absent from train keeps weight 1
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0, 2: 1.0})


def test_bad_params_stop_train_before_writing(prepared, tmp_path, capsys):
    params = tiny_params()
    params["train"]["epochs"] = 0
    root = fresh_copy(prepared, tmp_path, params)
    assert train.main(["--root", str(root)]) == 2
    assert "train.epochs = 0" in capsys.readouterr().err
    assert not (root / "models").exists()
    assert parse_params(tiny_params()).train.epochs == 2


def test_a_bad_run_setting_stops_train_before_writing(prepared, tmp_path, capsys, monkeypatch):
    # given valid params and CXR_RESUME set to a word that is not a switch
    monkeypatch.setenv("CXR_RESUME", "maybe")
    root = fresh_copy(prepared, tmp_path, tiny_params())
    # when train runs, then it stops in one line naming the variable and what it allows
    assert train.main(["--root", str(root)]) == 2
    error = capsys.readouterr().err
    assert "CXR_RESUME = 'maybe': allowed: 1, true or yes (on); 0, false or no (off)" in error
    assert not (root / "models").exists()


def test_a_run_of_several_processes_cannot_resume(prepared, tmp_path, capsys, monkeypatch):
    # given the run settings of process 0 of 2 (JAX's cluster) and CXR_RESUME
    for name, value in [
        ("CXR_COORDINATOR_ADDRESS", "127.0.0.1:1"),
        ("CXR_NUM_PROCESSES", "2"),
        ("CXR_RESUME", "1"),
    ]:
        monkeypatch.setenv(name, value)
    root = fresh_copy(prepared, tmp_path, tiny_params())
    # when train runs, then it stops at once in one line: only process 0 keeps a backup
    assert train.main(["--root", str(root)]) == 2
    assert "CXR_RESUME = 1 with CXR_NUM_PROCESSES = 2: a run of several" in capsys.readouterr().err
    assert not (root / "models").exists()


@pytest.mark.slow
def test_adamw_label_smoothing_and_a_time_budget_reach_the_fit(prepared, tmp_path):
    # given AdamW with weight decay, smoothed targets and a budget that one epoch exhausts
    params = tiny_params(
        optimizer="adamw", weight_decay=1e-4, label_smoothing=0.1, time_budget_minutes=1e-4
    )
    root = fresh_copy(prepared, tmp_path, params)
    # when train runs
    assert train.main(["--root", str(root)]) == 0
    # then it stopped after the first of its 2 epochs and saved a model compiled that way
    paths = ProjectPaths(root)
    metrics = json.loads(paths.metrics("train").read_text())
    assert metrics["epochs_run"] == 1 and len(pd.read_csv(paths.history)) == 1
    model = keras.models.load_model(paths.model_file())
    assert type(model.optimizer).__name__ == "AdamW"
    assert float(model.optimizer.weight_decay) == pytest.approx(1e-4)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    assert model.predict(np.zeros((1, 32, 32, 1), np.uint8), verbose=0).shape == (1, 3)


@pytest.mark.slow
def test_auto_optimizer_trains_mobilenetv2_from_scratch_with_nesterov_sgd(prepared, tmp_path):
    # given mobilenetv2 from scratch, train.optimizer and learning_rate auto, a constant rate
    params = tiny_params(epochs=1, schedule="constant", weight_decay=1e-4)
    params["model"] = "mobilenetv2"
    assert params["train"]["optimizer"] == params["train"]["learning_rate"] == "auto"
    root = fresh_copy(prepared, tmp_path, params)
    # when train runs
    assert train.main(["--root", str(root)]) == 0
    # then it fitted with SGD (Nesterov momentum 0.9, decoupled decay) at 0.01, and says so
    paths = ProjectPaths(root)
    model = keras.models.load_model(paths.model_file())
    optimizer = model.optimizer
    assert type(optimizer).__name__ == "SGD" and optimizer.nesterov
    assert optimizer.momentum == pytest.approx(0.9)
    assert float(optimizer.weight_decay) == pytest.approx(1e-4)
    assert pd.read_csv(paths.history)["learning_rate"].tolist() == pytest.approx([0.01])
    tags = mlflow.get_run(read_run_record(paths.models_dir).run_id).data.tags
    assert (tags["optimizer"], tags["learning_rate"]) == ("sgd", "0.01")


@pytest.mark.slow
def test_mixup_without_smoothing_trains_on_one_hot_targets(prepared, tmp_path):
    # given MixUp on and label smoothing off
    params = tiny_params(mixup=0.3, label_smoothing=0.0, epochs=1, fine_tune_epochs=0)
    root = fresh_copy(prepared, tmp_path, params)
    # when train runs
    assert train.main(["--root", str(root)]) == 0
    # then the model was compiled on one-hot (blended) targets, unsmoothed, and its loss is finite
    model = keras.models.load_model(ProjectPaths(root).model_file())
    assert type(model.loss).__name__ == "CategoricalCrossentropy"
    assert model.loss.get_config()["label_smoothing"] == 0
    assert np.isfinite(pd.read_csv(ProjectPaths(root).history)["loss"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("restore", [True, False])
def test_a_phase_ends_on_its_best_or_its_last_epoch_and_runs_every_epoch_at_patience_0(
    prepared, tmp_path, restore
):
    # given a run whose val loss is lowest before its last epoch (a high rate makes it bounce),
    # with early stopping off when the last epoch is kept
    params = tiny_params(
        epochs=4,
        fine_tune_epochs=0,
        learning_rate=0.05,
        restore_best_weights=restore,
        early_stopping_patience=4 if restore else 0,
    )
    params["train"]["augment"] = NO_AUGMENTATION
    root = fresh_copy(prepared, tmp_path, params)
    # when train runs with train.restore_best_weights on or off
    assert train.main(["--root", str(root)]) == 0
    paths = ProjectPaths(root)
    val_loss = pd.read_csv(paths.history)["val_loss"]
    assert len(val_loss) == 4 and val_loss.idxmin() != 3
    # then the saved model's val loss is the best epoch's, or the last epoch's
    data = load_training_data(paths, 32)
    model = keras.models.load_model(paths.model_file())
    targets = keras.utils.to_categorical(data.val_labels, 3)
    loss = model.evaluate(data.val_images, targets, batch_size=8, verbose=0, return_dict=True)
    expected = val_loss.min() if restore else val_loss.iloc[-1]
    assert loss["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_weight_averages_are_validated_and_saved_when_a_phase_stops_before_its_last_epoch(
    prepared, tmp_path
):
    # given the last epoch's weights kept and a time budget that ends 3 epochs after the first,
    # once without and once with a moving average of the weights
    runs = {}
    for momentum in (0.0, 0.9):
        params = tiny_params(
            epochs=3,
            fine_tune_epochs=0,
            restore_best_weights=False,
            early_stopping_patience=0,
            time_budget_minutes=1e-4,
            ema_momentum=momentum,
        )
        root = fresh_copy(prepared, tmp_path / str(momentum), params)
        # when train runs
        assert train.main(["--root", str(root)]) == 0
        runs[momentum] = ProjectPaths(root)
    histories = {momentum: pd.read_csv(paths.history) for momentum, paths in runs.items()}
    # then both trained the same raw weights for one epoch, but validated different ones
    assert [len(history) for history in histories.values()] == [1, 1]
    assert histories[0.9]["loss"][0] == pytest.approx(histories[0.0]["loss"][0], rel=1e-6)
    assert histories[0.9]["val_loss"][0] != pytest.approx(histories[0.0]["val_loss"][0], rel=1e-5)
    # and each saved model is the one it validated: the averages, not the raw weights
    data = load_training_data(runs[0.0], 32)
    targets = keras.utils.to_categorical(data.val_labels, 3)
    for momentum, paths in runs.items():
        model = keras.models.load_model(paths.model_file())
        loss = model.evaluate(data.val_images, targets, batch_size=8, verbose=0, return_dict=True)
        assert loss["loss"] == pytest.approx(histories[momentum]["val_loss"][0], rel=1e-4)


@pytest.mark.slow
def test_a_seed_ensemble_saves_the_mean_of_members_that_each_equal_a_run_with_their_seed(
    prepared, tmp_path
):
    # given two members (seeds 42 and 142) on the split, and one network alone with seed 142
    ensemble_params = tiny_params(members=2)
    alone_params = {**tiny_params(), "seed": 142}
    roots = {}
    for name, params in (("ensemble", ensemble_params), ("alone", alone_params)):
        roots[name] = fresh_copy(prepared, tmp_path / name, params)
        # when train runs
        assert train.main(["--root", str(roots[name])]) == 0
    paths, alone = ProjectPaths(roots["ensemble"]), ProjectPaths(roots["alone"])
    ensemble = keras.models.load_model(paths.model_file())
    member_0, member_1 = ensemble_members(ensemble)
    single = keras.models.load_model(alone.model_file())
    # then member 1 is the network seed 142 trains alone, and member 0 another one
    for trained, expected in zip(member_1.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_allclose(trained, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(member_0.get_weights()[0], member_1.get_weights()[0])
    # and the saved model predicts the mean of the members' probabilities
    data = load_training_data(paths, 32)
    mean = (
        member_0.predict(data.val_images, verbose=0) + single.predict(data.val_images, verbose=0)
    ) / 2
    np.testing.assert_allclose(ensemble.predict(data.val_images, verbose=0), mean, atol=1e-6)
    # and the history numbers the epochs on across members, each row naming its member
    history = pd.read_csv(paths.history)
    assert history["epoch"].tolist() == [0, 1, 2, 3] and history["member"].tolist() == [0, 0, 1, 1]
    alone_history = pd.read_csv(alone.history)
    np.testing.assert_allclose(history["val_loss"][2:], alone_history["val_loss"], rtol=1e-6)
    metrics = json.loads(paths.summary("train").read_text())
    assert metrics["epochs_run"] == 4
    expected_accuracy = np.mean(
        [history[history["member"] == k]["val_accuracy"].max() for k in (0, 1)]
    )
    assert metrics["best_val_accuracy"] == pytest.approx(expected_accuracy)
    predicted = ensemble.predict(data.val_images, verbose=0).argmax(axis=1)
    assert metrics["ensemble_val_accuracy"] == pytest.approx(np.mean(predicted == data.val_labels))
    assert metrics["parameters"] == 2 * single.count_params()
    assert metrics["depth"] == weight_layers(single)  # of one network, not of the two side by side
    # and one MLflow run holds the curves of both, at their epochs
    record = read_run_record(paths.models_dir)
    steps = mlflow.tracking.MlflowClient().get_metric_history(record.run_id, "val_loss")
    assert [m.step for m in steps] == [0, 1, 2, 3]
    assert mlflow.get_run(record.run_id).data.params["train.members"] == "2"
