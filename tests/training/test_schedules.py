import keras
import numpy as np
import pytest

from cxr.core.params import AdaptiveParams, CosineParams
from cxr.training.schedules import (
    AdaptiveLearningRate,
    BestWeights,
    ResumeState,
    TimeBudget,
    learning_rate_for,
)

COSINE = CosineParams(warmup_epochs=0, restart_epochs=0, restart_multiplier=2.0, final_fraction=0.0)
ADAPTIVE = AdaptiveParams(accuracy_threshold=0.9, patience=2, factor=0.5, stop_patience=2)


def tiny_model(learning_rate=0.1):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


def rate(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def replay(callback, model, logs_per_epoch):
    """Feed scripted epoch logs to the callback; return the rate after each epoch."""
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for epoch, logs in enumerate(logs_per_epoch):
        callback.on_epoch_end(epoch, dict(logs))
        rates.append(rate(model))
        if model.stop_training:
            break
    callback.on_train_end()
    return rates


def test_constant_and_adaptive_keep_a_plain_rate():
    assert learning_rate_for("constant", COSINE, 0.01, 5, 10) == 0.01
    assert learning_rate_for("adaptive", COSINE, 0.01, 5, 10) == 0.01


def test_cosine_warms_up_then_decays_to_its_floor():
    cosine = COSINE.model_copy(update={"warmup_epochs": 1, "final_fraction": 0.1})
    schedule = learning_rate_for("cosine", cosine, 0.01, epochs=3, steps_per_epoch=10)
    values = [float(schedule(step)) for step in (0, 5, 10, 20, 30)]
    assert values[0] == pytest.approx(0.0)
    assert values[1] == pytest.approx(0.005)  # halfway through the warmup epoch
    assert values[2] == pytest.approx(0.01)  # peak when warmup ends
    assert values[3] == pytest.approx(0.001 + 0.009 * 0.5)  # halfway through the decay
    assert values[4] == pytest.approx(0.001)


def test_cosine_with_restarts_returns_to_the_full_rate():
    cosine = COSINE.model_copy(update={"restart_epochs": 1, "restart_multiplier": 2.0})
    schedule = learning_rate_for("cosine", cosine, 0.01, epochs=6, steps_per_epoch=10)
    assert float(schedule(9)) < 0.001
    assert float(schedule(10)) == pytest.approx(0.01)  # first restart after one epoch
    assert float(schedule(30)) == pytest.approx(0.01)  # the next period is twice as long


def test_adaptive_watches_accuracy_then_val_loss_and_stops_after_reductions():
    model = tiny_model(learning_rate=0.1)
    callback = AdaptiveLearningRate(ADAPTIVE, restore_best_weights=False)
    logs = [
        {"accuracy": 0.5, "val_loss": 1.0},  # accuracy improves
        {"accuracy": 0.4, "val_loss": 0.1},  # below threshold: val loss ignored, miss 1
        {"accuracy": 0.45, "val_loss": 0.1},  # miss 2 -> rate halves
        {"accuracy": 0.95, "val_loss": 0.8},  # above threshold: val loss improves (first)
        {"accuracy": 0.95, "val_loss": 0.9},  # miss 1
        {"accuracy": 0.96, "val_loss": 0.85},  # miss 2 -> halves (first in a row)
        {"accuracy": 0.97, "val_loss": 0.81},  # miss 1
        {"accuracy": 0.97, "val_loss": 0.81},  # miss 2 -> halves, second in a row: stop
        {"accuracy": 0.99, "val_loss": 0.1},  # never reached
    ]
    rates = replay(callback, model, logs)
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.0125])
    assert model.stop_training is True and callback.reductions == 2


def test_adaptive_improvement_resets_the_reductions_and_best_weights_return():
    model = tiny_model(learning_rate=0.1)
    callback = AdaptiveLearningRate(ADAPTIVE.model_copy(update={"patience": 1}))
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0, {"accuracy": 0.5})  # best so far: these weights
    best = [weights.copy() for weights in model.get_weights()]
    model.set_weights([weights + 1 for weights in best])
    callback.on_epoch_end(1, {"accuracy": 0.4})  # reduction 1
    assert callback.reductions == 1
    callback.on_epoch_end(2, {"accuracy": 0.3})  # reduction 2: stop
    assert model.stop_training and rate(model) == pytest.approx(0.025)
    callback.on_train_end()
    for restored, expected in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(restored, expected)
    callback.on_epoch_end(3, {"accuracy": 0.7})  # an improvement clears the count
    assert callback.reductions == 0 and callback.wait == 0


def test_resume_state_restores_weights_epoch_counters_and_seed_states(tmp_path):
    def model_with_dropout():
        inputs = keras.Input((2,))
        outputs = keras.layers.Dropout(0.5, seed=3)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(2)(outputs))
        model.compile(optimizer="adam", loss="mse")  # as fit sees it
        model.optimizer.build(model.trainable_variables)
        return model

    # given an epoch's end saved with a used seed generator and an early-stopping count
    backup = tmp_path / "scratch" / "backup"
    stopping = keras.callbacks.EarlyStopping(patience=5)
    saving = model_with_dropout()
    saving.layers[1].call(np.ones((1, 2)), training=True)  # advances the seed state
    saver = ResumeState(backup, {"stop": (stopping, ("wait", "best"))})
    saver.set_model(saving)
    stopping.wait, stopping.best = 2, 0.25
    saver.on_epoch_end(0)
    # then the backup is one folder with every file of that epoch, and nothing beside it
    assert sorted(path.name for path in backup.iterdir()) == [
        "arrays.npz",
        "latest.weights.h5",
        "state.json",
        "training_metadata.json",
    ]
    assert sorted(path.name for path in backup.parent.iterdir()) == ["backup"]
    # when a fresh process's callbacks begin training
    restored_stopping = keras.callbacks.EarlyStopping(patience=5)
    restored_stopping.on_train_begin()
    restoring = model_with_dropout()
    loader = ResumeState(backup, {"stop": (restored_stopping, ("wait", "best"))})
    loader.set_model(restoring)
    loader.on_train_begin()
    # then the weights, counters and seed states are those of the interrupted run
    for restored, saved in zip(restoring.get_weights(), saving.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert (restored_stopping.wait, restored_stopping.best) == (2, 0.25)
    seeds = [
        [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
        for model in (saving, restoring)
    ]
    np.testing.assert_array_equal(seeds[0][0], seeds[1][0])


def test_best_weights_are_saved_only_when_the_monitored_loss_improves(tmp_path):
    # given a model and a best-weights callback
    model = tiny_model()
    path = tmp_path / "best.weights.h5"
    best = BestWeights(model, path)
    best.set_model(model)
    # when the first epoch sets a best, a worse one follows, then a better one
    best.on_epoch_end(0, {"val_loss": 0.5})
    first = [weights.copy() for weights in model.get_weights()]
    model.set_weights([weights + 1 for weights in first])
    best.on_epoch_end(1, {"val_loss": 0.7})
    # then the file holds the best epoch's weights, and its loss is the count a resume restores
    reloaded = tiny_model()
    reloaded.load_weights(path)
    for saved, expected in zip(reloaded.get_weights(), first, strict=True):
        np.testing.assert_array_equal(saved, expected)
    assert best.best == 0.5
    best.on_epoch_end(2, {"val_loss": 0.25})
    reloaded.load_weights(path)
    np.testing.assert_array_equal(reloaded.get_weights()[0], first[0] + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5"]


def test_time_budget_stops_after_the_epoch_that_passes_it_across_phases():
    # given a budget of one minute and a clock the test moves
    now = [0.0]
    budget = TimeBudget(1.0, clock=lambda: now[0])
    model = tiny_model()
    budget.set_model(model)
    # when a first phase runs two 25 s epochs, then a second phase starts and runs on
    budget.on_train_begin()
    for epoch in range(2):
        now[0] += 25
        budget.on_epoch_end(epoch)
    assert not model.stop_training and budget.stopped_epoch is None
    budget.on_train_begin()  # the second phase keeps the first phase's clock
    now[0] += 25
    budget.on_epoch_end(2)
    # then training stops at the end of the epoch that passed 60 s, the third
    assert model.stop_training and budget.stopped_epoch == 2
