"""Fitting a Keras classifier: one phase from scratch, or frozen then fine-tuned when pretrained.

Every phase ends on its best validation-loss weights (or its last epoch's); with
train.ema_momentum those are the moving averages of the weights, which the validation also
measures. Each phase keeps its last finished epoch in the run's backup folder
(cxr.training.resume), and CXR_RESUME=1 continues from there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.keras import MlflowCallback
from sklearn.metrics import accuracy_score
from sklearn.utils.class_weight import compute_class_weight

from cxr.core.outputs import json_number, read_json, staged_file, write_json
from cxr.core.params import Params, TrainParams, member_seed
from cxr.core.paths import MODEL_FILES
from cxr.core.registry import DEFAULT_OPTIMIZER, training_optimizer, training_rate
from cxr.models import layer_names
from cxr.models.classifier import (
    GOOGLENET_AUX_LOSS_WEIGHT,
    average_members,
    build_classifier,
    googlenet_training_model,
    load_classifier,
    unfreeze_top_layers,
    weight_layers,
)
from cxr.models.layer_names import GOOGLENET_AUX_OUTPUTS
from cxr.models.pretrain_record import SELF_SUPERVISED
from cxr.training.devices import (
    AcceleratorPlan,
    Accelerators,
    build_info,
    outside_distribution,
)
from cxr.training.features import extract_features, split_at_features, use_cached_features
from cxr.training.inputs import (
    ONE_DEVICE,
    Shards,
    TrainingData,
    fit_batches,
    fit_class_weight,
    follow_epochs,
    predict_images,
)
from cxr.training.result import FitResult
from cxr.training.resume import completed_epochs
from cxr.training.schedules import (
    AdaptiveLearningRate,
    BestWeights,
    LearningRateLog,
    MainOutputLogs,
    ResumeState,
    TimeBudget,
    learning_rate_for,
)

HISTORY_FILE = "history.csv"
PHASE_WEIGHTS_FILE = "phase.weights.h5"
# train.optimizer: sgd's momentum (Nesterov), the usual value for training CNNs from scratch.
SGD_MOMENTUM = 0.9


class EpochMetricsCallback(MlflowCallback):
    """MLflow's Keras callback, for the per-epoch curves only (loss, val_loss, ... at step = epoch).

    Its `optimizer_*` params repeat params.yaml (train.learning_rate, ...; the rate per epoch is
    the `learning_rate` curve), and the `validation_*` metrics it logs after every validation,
    all at step 0, repeat val_loss / val_accuracy: both are left out of the run. The model
    summary is logged once, when the first phase begins.
    """

    def __init__(self) -> None:
        super().__init__(log_every_epoch=True)
        self.summary_logged = False

    def on_train_begin(self, logs: Any = None) -> None:
        """Log the model summary (first phase only), not the optimizer config."""
        if not self.summary_logged:
            lines: list[str] = []
            self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
            mlflow.log_text("\n".join(lines), artifact_file="model_summary.txt")
            self.summary_logged = True

    def on_test_end(self, logs: Any = None) -> None:
        """Log nothing: the epoch's val_* metrics come with on_epoch_end, at their epoch."""


@dataclass(frozen=True)
class Phase:
    """One fit: frozen/scratch or fine-tune, its optimizer, base rate and global epoch range."""

    name: str
    learning_rate: float
    first_epoch: int
    epochs: int
    optimizer: str = DEFAULT_OPTIMIZER


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Keras (op determinism is set up with the devices)."""
    keras.utils.set_random_seed(seed)


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    jit_compile: bool,
    auxiliary: bool = False,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
    one_hot: bool = False,
    ema_momentum: float = 0.0,
    weighted: bool = False,
) -> None:
    """Adam, AdamW or SGD, and cross-entropy on class indices or (smoothed, mixed) one-hot targets.

    SGD takes Nesterov momentum 0.9 and, like AdamW, decoupled weight decay (keras applies
    `weight_decay` to every optimizer as w -= rate * decay * w).

    With `ema_momentum` > 0 the optimizer keeps an exponential moving average of the weights
    (keras' use_ema); phase_callbacks then validates and saves the averages.

    With `one_hot` or label smoothing (one_hot_targets: also MixUp) the datasets must carry
    one-hot labels (phase_batches does it). With GoogLeNet's auxiliary classifiers each output
    gets the loss, the auxiliary ones weighted as in the paper, and accuracy is measured on the
    main output only.

    With `weighted` (batches padded for several devices, cxr.training.inputs.ArrayBatches)
    accuracy counts each row by its sample weight, so padded rows count for nothing; with
    train.class_weight the train accuracy is then class-weighted too (val accuracy never is).
    """
    loss: Any = "sparse_categorical_crossentropy"
    if one_hot or label_smoothing > 0:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    metrics = "weighted_metrics" if weighted else "metrics"
    options: dict[str, Any] = {"loss": loss, metrics: ["accuracy"]}
    if auxiliary:
        weights = {name: GOOGLENET_AUX_LOSS_WEIGHT for name in GOOGLENET_AUX_OUTPUTS}
        options = {
            "loss": {name: loss for name in model.output_names},
            "loss_weights": {**weights, layer_names.PREDICTIONS: 1.0},
            metrics: {layer_names.PREDICTIONS: ["accuracy"]},
        }
    average = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum > 0 else {}
    chosen: keras.optimizers.Optimizer
    if optimizer == "adamw":
        chosen = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **average)
    elif optimizer == "sgd":
        chosen = keras.optimizers.SGD(
            learning_rate,
            momentum=SGD_MOMENTUM,
            nesterov=True,
            weight_decay=weight_decay or None,
            **average,
        )
    else:
        chosen = keras.optimizers.Adam(learning_rate, **average)
    model.compile(optimizer=chosen, jit_compile=jit_compile, **options)


def one_hot_targets(train: TrainParams) -> bool:
    """Whether the loss needs one-hot targets: smoothed ones, or the blends MixUp makes."""
    return train.label_smoothing > 0 or train.mixup > 0


def class_weights(mode: str, labels: np.ndarray, class_count: int) -> dict[int, float] | None:
    """Loss weight per class index: `balanced` = n / (classes * count); None when off."""
    if mode == "none":
        return None
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    by_class = {int(label): float(weight) for label, weight in zip(present, weights, strict=True)}
    return {label: by_class.get(label, 1.0) for label in range(class_count)}


def schedule_callbacks(
    train: TrainParams,
) -> tuple[
    list[keras.callbacks.Callback], dict[str, tuple[keras.callbacks.Callback, Sequence[str]]]
]:
    """The rate schedule's callbacks, and which of their attributes a resume must restore."""
    if train.schedule == "constant":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train.reduce_lr_factor, patience=train.reduce_lr_patience
        )
        return [plateau], {"plateau": (plateau, ("wait", "best", "cooldown_counter"))}
    if train.schedule == "adaptive":
        # The best val-loss checkpoint is restored after every phase anyway.
        adaptive = AdaptiveLearningRate(train.adaptive, restore_best_weights=False)
        state = ("best_accuracy", "best_val_loss", "wait", "reductions")
        return [adaptive], {"adaptive": (adaptive, state)}
    return [], {}  # cosine: the optimizer's own schedule


def warmup_epochs(train: TrainParams) -> int:
    """The epochs of a phase that warm the learning rate up (cosine schedule only)."""
    return train.cosine.warmup_epochs if train.schedule == "cosine" else 0


def phase_callbacks(
    train: TrainParams,
    phase: Phase,
    full_model: keras.Model,
    work: Path,
    extra: Sequence[keras.callbacks.Callback],
) -> list[keras.callbacks.Callback]:
    """Weight averages, rate schedule, early stopping, checkpoint, history, `extra`, resume.

    The checkpoint keeps the best val_loss epoch's weights, or with train.restore_best_weights
    false the last epoch's (also when early stopping or the time budget ends the phase).
    """
    monitor = "val_loss" if train.restore_best_weights else None
    checkpoint = BestWeights(full_model, work / PHASE_WEIGHTS_FILE, monitor=monitor)
    schedule, tracked = schedule_callbacks(train)
    averages: list[keras.callbacks.Callback] = []
    if train.ema_momentum > 0:
        # First: validation runs on the averages, and from each epoch's end to the next one's
        # start the model holds them, so early stopping and the checkpoint see them too; the
        # flag says which set the model holds when a resumed run restores the backup.
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
        tracked["averages"] = (swap, ("_ema_weights_in_model",))
        averages.append(swap)
    stopping: list[keras.callbacks.Callback] = []
    if train.early_stopping_patience > 0:
        # Not judged on a warm-up: its first epochs run at a fraction of the rate, so the best
        # val_loss of those says nothing about where the schedule proper will go.
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=train.early_stopping_patience,
            start_from_epoch=phase.first_epoch + warmup_epochs(train),
        )
        tracked["early_stopping"] = (early_stopping, ("wait", "best", "best_epoch"))
        stopping.append(early_stopping)
    tracked["checkpoint"] = (checkpoint, ("best",))
    callbacks = [
        *averages,
        MainOutputLogs(),
        *schedule,
        LearningRateLog(),
        *stopping,
        checkpoint,
        keras.callbacks.CSVLogger(str(work / HISTORY_FILE), append=True),
        *extra,
        # Always, so that any interrupted run can be resumed (cxr.training.resume); last, so
        # that it saves and restores the other callbacks' counters.
        ResumeState(work / phase.name / "backup", tracked),
    ]
    return callbacks


def phase_batches(
    model: keras.Model,
    data: TrainingData,
    cached: bool,
    auxiliary: bool,
    batch_size: int,
    seed: int,
    one_hot: bool = False,
    mixup: float = 0.0,
    class_weight: dict[int, float] | None = None,
    shards: Shards = ONE_DEVICE,
) -> tuple[Any, Any]:
    """Train (shuffled) and val batches: images, or the frozen backbone's features when cached.

    Labels are class indices, or one-hot rows when `one_hot` (for label smoothing and MixUp).
    With `mixup` > 0 the train images (not cached features, not val) are MixUp blends.
    cxr.training.inputs makes them for the backend (tf.data, or ArrayBatches split by `shards`).
    """
    inputs = (data.train_images, data.val_images)
    if cached:
        extractor, _ = split_at_features(model)
        inputs = (
            extract_features(extractor, data.train_images, batch_size, shards),
            extract_features(extractor, data.val_images, batch_size, shards),
        )
    if mixup > 0 and not one_hot:
        raise ValueError("MixUp blends one-hot targets: call phase_batches with one_hot=True")
    depth = len(data.class_names) if one_hot else 0
    train_batches = fit_batches(
        inputs[0], data.train_labels, batch_size, seed, depth=depth,
        mixup=0.0 if cached else mixup, auxiliary=auxiliary, class_weight=class_weight,
        shards=shards,
    )  # fmt: skip
    val_batches = fit_batches(
        inputs[1], data.val_labels, batch_size, None, depth=depth, auxiliary=auxiliary,
        shards=shards,
    )  # fmt: skip
    return train_batches, val_batches


def fitted_model(
    model: keras.Model, model_name: str, cached: bool, auxiliary: bool, seed: int
) -> keras.Model:
    """What `fit` trains: the classifier, its head alone (cached features) or GoogLeNet + aux."""
    if cached:
        return split_at_features(model)[1]
    if auxiliary:
        return googlenet_training_model(model, model_name, seed)
    return model


def fit_phase(
    model: keras.Model,
    phase: Phase,
    data: TrainingData,
    cached: bool,
    params: Params,
    plan: AcceleratorPlan,
    work: Path,
    extra: Sequence[keras.callbacks.Callback],
) -> int:
    """Fit one phase, resuming it when asked; return epochs run.

    The phase ends on its best val_loss epoch's weights (`train.restore_best_weights`), else on
    its last epoch's: the checkpoint's, since keras ends a fit that stops before its last epoch
    on the raw weights, not on the averages (train.ema_momentum).
    """
    train = params.train
    # `work` holds an interrupted run's state only when resuming (fresh_backup_dir empties it).
    done = work / f"{phase.name}.done.json"
    if done.exists():
        model.load_weights(work / f"{phase.name}.weights.h5")
        return int(read_json(done)["epochs_run"])
    auxiliary = train.head.googlenet_aux and not cached
    fitted = fitted_model(model, params.model, cached, auxiliary, params.seed)
    steps_per_epoch = math.ceil(len(data.train_labels) / train.batch_size)
    rate = learning_rate_for(
        train.schedule, train.cosine, phase.learning_rate, phase.epochs, steps_per_epoch
    )
    one_hot = one_hot_targets(train)
    compile_model(
        fitted, rate, plan.jit_compile, auxiliary,
        phase.optimizer, train.weight_decay, train.label_smoothing, one_hot, train.ema_momentum,
        weighted=plan.replicas > 1,  # the batches' padding rows weigh 0 (ArrayBatches)
    )  # fmt: skip
    weights = class_weights(train.class_weight, data.train_labels, model.output_shape[-1])
    train_batches, val_batches = phase_batches(
        model, data, cached, auxiliary, train.batch_size, params.seed, one_hot, train.mixup,
        weights, batch_shards(plan),
    )  # fmt: skip
    already = completed_epochs(work, phase.name, phase.first_epoch)
    # A resumed phase must see the shuffles the interrupted one would have.
    in_step = follow_epochs(train_batches, phase.first_epoch, already)
    history = fitted.fit(
        train_batches,
        validation_data=val_batches,
        shuffle=False,  # the batches are shuffled already
        initial_epoch=phase.first_epoch,
        epochs=phase.first_epoch + phase.epochs,
        class_weight=fit_class_weight(train_batches, weights),
        verbose=2,
        callbacks=[*in_step, *phase_callbacks(train, phase, model, work, extra)],
    )
    if (work / PHASE_WEIGHTS_FILE).exists():
        model.load_weights(work / PHASE_WEIGHTS_FILE)
    # No epoch in the history: the interrupted run had finished every epoch of this phase.
    epochs_run = int(history.epoch[-1]) + 1 - phase.first_epoch if history.epoch else already
    with staged_file(work / f"{phase.name}.weights.h5") as temporary:
        model.save_weights(temporary)
    write_json(done, {"epochs_run": epochs_run})  # last: the phase counts as done only now
    return epochs_run


def batch_shards(plan: AcceleratorPlan) -> Shards:
    """How each batch is split between this plan's processes and devices (JAX)."""
    return Shards(plan.process_id, plan.processes, plan.replicas)


def fit_phases(
    model: keras.Model,
    backbone: keras.Model,
    pretrained: bool,
    params: Params,
    data: TrainingData,
    accelerators: Accelerators,
    work: Path,
    extra: Sequence[keras.callbacks.Callback],
    member: int = 0,
    first_epoch: int = 0,
) -> tuple[int, bool]:
    """Fit frozen then fine-tuned when pretrained, else end to end; return epochs, cached.

    Member k > 0 of a seed ensemble names its phases member<k>_<phase> (their own resume state)
    and numbers its epochs on from `first_epoch`, where the members before it ended.
    """
    train = params.train
    prefix = f"member{member}_" if member else ""
    # Freezing random weights would only train the head on noise features, so a backbone
    # without pretrained weights trains end to end in a single phase.
    backbone.trainable = not pretrained
    plan = accelerators.plan
    cached = use_cached_features(train.cache_features, pretrained, model, plan.processes)
    if train.time_budget_minutes > 0:
        # Every process stops when process 0's clock says so: they run one fit together.
        extra = [*extra, TimeBudget(train.time_budget_minutes, agree=accelerators.agree)]
    optimizer = training_optimizer(train.optimizer, params.model, pretrained)
    first = Phase(
        f"{prefix}{'frozen' if pretrained else 'scratch'}",
        training_rate(train.learning_rate, optimizer),
        first_epoch,
        train.epochs,
        optimizer,
    )
    epochs_run = fit_phase(model, first, data, cached, params, plan, work, extra)
    if pretrained and train.fine_tune_epochs > 0 and train.fine_tune_layers > 0:
        unfreeze_top_layers(backbone, train.fine_tune_layers)
        second = Phase(
            f"{prefix}fine_tune",
            train.fine_tune_learning_rate,
            first_epoch + epochs_run,
            train.fine_tune_epochs,
            optimizer,
        )
        epochs_run += fit_phase(model, second, data, False, params, plan, work, extra)
    return epochs_run, cached


def read_history(csv: Path) -> pd.DataFrame:
    """The epoch log; an epoch repeated after a resume keeps its last row."""
    history = pd.read_csv(csv)
    return history.drop_duplicates("epoch", keep="last").reset_index(drop=True)


def fit_keras(
    params: Params,
    data: TrainingData,
    accelerators: Accelerators,
    work: Path,
    out_dir: Path,
    extra: Sequence[keras.callbacks.Callback] = (),
    init_weights: Path | None = None,
) -> FitResult:
    """Build and fit the Keras classifier `params.model`; save it as <out_dir>/model.keras.

    `accelerators` must have been set up before the data was loaded (setup_accelerators).
    `init_weights` (the pretrain stage's encoder) starts every member's backbone, which then
    trains as from scratch.
    """
    train = params.train
    plan = accelerators.plan
    if accelerators.writes_outputs:  # the per-epoch curves, in the active MLflow run
        extra = [EpochMetricsCallback(), *extra]
    members: list[keras.Model] = []
    member_epochs: list[int] = []
    train_seconds = 0.0
    for member in range(train.members):
        # Member k is the run params `seed` = member_seed(seed, k) would give alone, on this split.
        member_params = params.model_copy(update={"seed": member_seed(params.seed, member)})
        seed_everything(member_params.seed)
        with accelerators.scope():
            model, backbone, pretrained = build_classifier(
                params.model, train.image_size, data.class_names, train.weights, train.head,
                train.augment, member_params.seed, init_weights,
            )  # fmt: skip
            started = time.perf_counter()
            ran, cached = fit_phases(
                model, backbone, pretrained, member_params, data, accelerators, work, extra,
                member, sum(member_epochs),
            )  # fmt: skip
            train_seconds += time.perf_counter() - started
        members.append(model)
        member_epochs.append(ran)
    if len(members) > 1:
        with accelerators.scope():
            model = average_members(members, params.model)
    model_file = out_dir / MODEL_FILES["keras"]
    model.save(model_file)
    history = read_history(work / HISTORY_FILE)
    # Epochs are numbered on across members: member k's follow those of the members before it.
    member_of_epoch = np.searchsorted(np.cumsum(member_epochs), history["epoch"], side="right")
    bests = history.groupby(member_of_epoch)
    metrics = {
        "pretrained": pretrained,
        "parameters": int(model.count_params()),
        "depth": weight_layers(members[0]),  # of one network: a seed ensemble's are alike
        "epochs_run": sum(member_epochs),
        "train_seconds": round(train_seconds, 2),
        # A seed ensemble's: the mean over its members of each one's best epoch; None (null in
        # JSON) when training diverged and every val_loss is NaN.
        "best_val_loss": json_number(bests["val_loss"].min().mean()),
        "best_val_accuracy": float(bests["val_accuracy"].max().mean()),
        "train_images": len(data.train_labels),
    }
    # The saved model's answers on the validation split: the collapse check, and a seed
    # ensemble's own validation accuracy.
    val_predicted = np.zeros(0, dtype=np.int64)
    if len(data.val_labels):
        answers = saved_model_answers(model, model_file, data, accelerators, train.batch_size)
        val_predicted = np.argmax(answers, axis=1)
    if len(members) > 1:
        history = history.assign(member=member_of_epoch)
        metrics["ensemble_val_accuracy"] = float(accuracy_score(data.val_labels, val_predicted))
    optimizer = training_optimizer(train.optimizer, params.model, pretrained)
    tags = {
        "pretrained": str(pretrained).lower(),
        # what train.optimizer / train.learning_rate = auto came to (the first phase's rate)
        "optimizer": optimizer,
        "learning_rate": f"{training_rate(train.learning_rate, optimizer):g}",
        # where the backbone's weights came from: the pretrain stage, ImageNet or a file, none
        "backbone_init": (
            SELF_SUPERVISED if init_weights else "pretrained" if pretrained else "random"
        ),
        "cached_features": str(cached).lower(),
        "device": plan.device,
        "strategy": plan.strategy,
        "mixed_precision": plan.precision,
        "jit_compile": str(plan.jit_compile).lower(),
        **build_info(gpu_used=not plan.device.startswith("CPU"), backend=plan.backend),
    }
    return FitResult("keras", train.image_size, model_file, metrics, history, tags, val_predicted)


def saved_model_answers(
    model: keras.Model,
    model_file: Path,
    data: TrainingData,
    accelerators: Accelerators,
    batch_size: int,
) -> np.ndarray:
    """The fitted model's class probabilities on the validation images.

    A model trained by several processes holds arrays that span them, which no one process can
    read back; each reads the model it saved instead, on its own devices.
    """
    plan = accelerators.plan
    if plan.processes > 1:
        with outside_distribution():
            local = load_classifier(model_file)
            return predict_images(local, data.val_images, batch_size)
    if plan.replicas == 1:  # one device, or TensorFlow (the model keeps its strategy)
        return predict_images(model, data.val_images, batch_size)
    with accelerators.scope():  # keras.distribution splits each batch between the devices
        return predict_images(model, data.val_images, batch_size, batch_shards(plan))
