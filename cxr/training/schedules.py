"""Learning-rate schedules and training callbacks: adaptive rate, best and resume checkpoints."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr.core.outputs import staged_dir, staged_file
from cxr.core.params import AdaptiveParams, CosineParams


def learning_rate_for(
    schedule: str, cosine: CosineParams, base_rate: float, epochs: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's rate for one phase: a constant, or keras' cosine decay per step.

    Only keras' own schedule classes are used, so the saved model loads without this project.
    """
    if schedule != "cosine":
        return base_rate
    total_steps = max(1, epochs * steps_per_epoch)
    if cosine.restart_epochs > 0:
        return keras.optimizers.schedules.CosineDecayRestarts(
            base_rate,
            first_decay_steps=cosine.restart_epochs * steps_per_epoch,
            t_mul=cosine.restart_multiplier,
            alpha=cosine.final_fraction,
        )
    warmup_steps = min(cosine.warmup_epochs * steps_per_epoch, total_steps - 1)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(
            base_rate, decay_steps=total_steps, alpha=cosine.final_fraction
        )
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=cosine.final_fraction,
        warmup_target=base_rate,
        warmup_steps=warmup_steps,
    )


class AdaptiveLearningRate(keras.callbacks.Callback):
    """The seed's adaptive rate: watch train accuracy until a threshold, then validation loss.

    After `patience` epochs without improvement of the watched metric the rate is multiplied by
    `factor`; after `stop_patience` reductions in a row without improvement training stops.
    The weights of the best epoch (by the metric watched then) are restored at the end.
    """

    def __init__(self, adaptive: AdaptiveParams, restore_best_weights: bool = True) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.restore_best_weights = restore_best_weights
        self.best_accuracy = -math.inf
        self.best_val_loss = math.inf
        self.wait = 0
        self.reductions = 0
        self.best_weights: list[np.ndarray] | None = None

    def watched(self, logs: Mapping[str, float]) -> str:
        """`accuracy` while train accuracy is below the threshold, then `val_loss`."""
        below = float(logs["accuracy"]) < self.adaptive.accuracy_threshold
        return "accuracy" if below or "val_loss" not in logs else "val_loss"

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Keep the best weights, or count a miss and reduce the rate / stop after enough."""
        logs = logs if logs is not None else {}
        if self.watched(logs) == "accuracy":
            improved = float(logs["accuracy"]) > self.best_accuracy
            if improved:
                self.best_accuracy = float(logs["accuracy"])
        else:
            improved = float(logs["val_loss"]) < self.best_val_loss
            if improved:
                self.best_val_loss = float(logs["val_loss"])
        if improved:
            self.wait = 0
            self.reductions = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.adaptive.patience:
                rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                self.model.optimizer.learning_rate = rate * self.adaptive.factor
                self.wait = 0
                self.reductions += 1
                if self.reductions >= self.adaptive.stop_patience:
                    self.model.stop_training = True
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )

    def on_train_end(self, logs: Any = None) -> None:
        """Restore the weights of the best epoch."""
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class LearningRateLog(keras.callbacks.Callback):
    """Put the current rate in the epoch logs when no other callback did (cosine, constant)."""

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Add `learning_rate` to the logs (a schedule's value at the current step)."""
        if logs is not None and "learning_rate" not in logs:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


class MainOutputLogs(keras.callbacks.Callback):
    """Name the main output's accuracy `accuracy` when a model has auxiliary outputs.

    keras logs a multi-output model's metrics per output (`predictions_accuracy`); the history,
    the schedules and compare read `accuracy` / `val_accuracy`.
    """

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Copy predictions_accuracy (and its val_) to accuracy (and val_accuracy)."""
        if logs is None:
            return
        for prefix in ("", "val_"):
            if f"{prefix}predictions_accuracy" in logs:
                logs[f"{prefix}accuracy"] = logs[f"{prefix}predictions_accuracy"]


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends past `minutes` (train.time_budget).

    One instance serves every phase of a run: the clock starts with the first phase, so the
    budget covers frozen and fine-tuning epochs together. The best checkpoint is restored after
    the stop as after any other. `agree` turns this process's decision into the one every
    process of a run acts on (cxr.training.devices.Accelerators.agree: process 0's clock).
    """

    def __init__(
        self,
        minutes: float,
        clock: Any = time.monotonic,
        agree: Callable[[bool], bool] = bool,
    ) -> None:
        super().__init__()
        self.seconds = minutes * 60
        self.clock = clock
        self.agree = agree
        self.started: float | None = None
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        """Start the clock with the first phase."""
        if self.started is None:
            self.started = self.clock()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Stop once the budget is spent."""
        spent = self.started is not None and self.clock() - self.started >= self.seconds
        if self.agree(spent):
            self.model.stop_training = True
            self.stopped_epoch = epoch


class BestWeights(keras.callbacks.Callback):
    """Save `full_model`'s weights atomically whenever `monitor` (lower is better) improves.

    With `monitor` None it saves after every epoch, so the file holds the last epoch's weights
    (with weight averaging, the averages that keras.callbacks.SwapEMAWeights put in the model
    at the epoch's end). With cached features the fitted model is the head alone; its layers are
    the full model's, so saving the full model keeps one checkpoint format for every phase. The
    file is replaced in one rename, so a killed run leaves the previous weights, never half of
    new ones.
    """

    def __init__(
        self, full_model: keras.Model, path: Path, monitor: str | None = "val_loss"
    ) -> None:
        super().__init__()
        self.full_model = full_model
        self.path = path
        self.monitor = monitor
        self.best = math.inf

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Save the weights when the monitored value beats the best so far (or always)."""
        if self.monitor is not None:
            current = (logs or {}).get(self.monitor)
            if current is None or not float(current) < self.best:
                return
            self.best = float(current)
        with staged_file(self.path) as temporary:
            self.full_model.save_weights(temporary)


def callback_state(callback: keras.callbacks.Callback, attributes: Sequence[str]) -> dict[str, Any]:
    """JSON-ready values of a callback's counters (floats may be inf)."""
    return {name: _plain(getattr(callback, name)) for name in attributes}


def _plain(value: Any) -> Any:
    """Numpy scalars as Python numbers, so json can write them."""
    return value.item() if isinstance(value, np.generic) else value


class ResumeState(keras.callbacks.BackupAndRestore):
    """Each epoch, one atomic backup of everything a resumed run needs, restored when it begins.

    keras' BackupAndRestore keeps weights, optimizer and epoch; this adds the early-stopping,
    plateau, checkpoint and adaptive-rate counters, the adaptive callback's best weights and the
    state of every seed generator (dropout, augmentation), so a resumed run repeats the
    interrupted one exactly. The epoch's files are written into a staged folder that replaces
    the backup in one rename: a run killed at any moment leaves one whole epoch's backup. It
    must come after the tracked callbacks: they reset their counters when training begins, and
    it restores them afterwards.
    """

    def __init__(
        self,
        directory: Path,
        tracked: Mapping[str, tuple[keras.callbacks.Callback, Sequence[str]]],
    ) -> None:
        super().__init__(str(directory), delete_checkpoint=False)
        self.directory = directory
        self.tracked = tracked

    def _seed_states(self) -> list[Any]:
        """The model's seed-generator state variables, in layer order.

        By position, not path: paths carry a per-process counter (seed_generator_7).
        """
        return [
            variable
            for variable in self.model.non_trainable_variables
            if variable.path.endswith("seed_generator_state")
        ]

    def on_train_begin(self, logs: Any = None) -> None:
        """Restore weights, optimizer, epoch, counters, seeds and best weights of the backup."""
        super().on_train_begin(logs)  # weights, optimizer and epoch (keras)
        state_file = self.directory / "state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text(encoding="utf-8"))
        for name, (callback, _) in self.tracked.items():
            for attribute, value in state["callbacks"].get(name, {}).items():
                setattr(callback, attribute, value)
        with np.load(self.directory / "arrays.npz") as arrays:
            for index, variable in enumerate(self._seed_states()):
                variable.assign(arrays[f"seed:{index}"])
            for name, (callback, _) in self.tracked.items():
                count = int(state["best_weights"].get(name, -1))
                if count >= 0:
                    callback.best_weights = [arrays[f"best:{name}:{i}"] for i in range(count)]

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Replace the backup by this epoch's: weights and optimizer, epoch, counters, arrays."""
        arrays = {
            f"seed:{index}": keras.ops.convert_to_numpy(variable)
            for index, variable in enumerate(self._seed_states())
        }
        best_weights: dict[str, int] = {}
        for name, (callback, _) in self.tracked.items():
            weights = getattr(callback, "best_weights", None)
            if weights is not None:
                best_weights[name] = len(weights)
                arrays.update({f"best:{name}:{i}": array for i, array in enumerate(weights)})
        state = {
            "callbacks": {
                name: callback_state(callback, attributes)
                for name, (callback, attributes) in self.tracked.items()
            },
            "best_weights": best_weights,
        }
        with staged_dir(self.directory) as staging:
            # The file names keras' BackupAndRestore reads back when training begins.
            self.model.save_weights(staging / Path(self._weights_path).name)
            metadata = {"epoch": epoch + 1, "batch": 0}
            (staging / Path(self._training_metadata_path).name).write_text(
                json.dumps(metadata), encoding="utf-8"
            )
            with (staging / "arrays.npz").open("wb") as out:
                np.savez(out, **arrays)
            (staging / "state.json").write_text(json.dumps(state), encoding="utf-8")
