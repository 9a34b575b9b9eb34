"""Self-supervised pre-training of a backbone on unlabelled images: the pretrain stage's work.

SimCLR (Chen et al. 2020) as keras-io's semisupervised_simclr example does it: two random views
of each image pass through one encoder (the backbone train builds, with the same input
preprocessing) and a projection head, and the NT-Xent loss pulls the two views of an image
together while pushing the other images of the batch away. With pretrain.positives: group the
second view is drawn from another image of the same group (patient, study, paper), as MICLe
(Azizi et al. 2021) pairs two radiographs of one patient. Only the backbone's weights are kept;
train starts from them (cxr.models.pretrain_record).

Keras layers and keras.ops only, no GradientTape or custom train_step: it runs on TensorFlow and
on JAX alike.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from cxr.core.errors import PipelineError
from cxr.core.outputs import json_number, staged_dir
from cxr.core.params import (
    BuildParams,
    ContrastiveAugmentParams,
    Params,
    RunSettings,
    flatten_params,
)
from cxr.core.paths import ENCODER_WEIGHTS_FILE, ProjectPaths, workspace_root
from cxr.core.processes import available_cores
from cxr.core.tables import data_fingerprint, read_fold_design, read_splits, read_table
from cxr.images.pixel_cache import decode_into_cache
from cxr.models import layer_names
from cxr.models.backbones import load_backbone
from cxr.models.backend import let_xla_compile
from cxr.models.classifier import BackboneInput, adapt_batchnorm_for_scratch
from cxr.models.pixels import load_split_pixels, open_pixel_cache
from cxr.models.pretrain_record import PretrainRecord, write_pretrain_record
from cxr.tracking.runs import end_abandoned_runs, open_run, run_tags
from cxr.tracking.store import use_experiment
from cxr.training.devices import Cluster, build_info, setup_accelerators
from cxr.training.inputs import MEGABYTE, Pixels, StreamedPixels, read_images
from cxr.training.keras_fit import EpochMetricsCallback

# The MLflow experiment of the pre-training runs: `<mlflow_experiment>-pretrain`, apart from the
# training runs compare ranks.
EXPERIMENT_SUFFIX = "-pretrain"
# Source name of an extra folder's images in the record: extra:<the folder as params name it>.
EXTRA_PREFIX = "extra:"
# Batches read ahead of the one being trained on.
READ_AHEAD = 2


def contrastive_loss(projections: Any, temperature: float) -> Any:
    """Symmetric NT-Xent of (batch, 2, units) projections: one loss per pair of views.

    Row i of the cosine similarities between the first and the second views (divided by the
    temperature) is a softmax whose target is column i, its own pair; the loss is the mean of
    that cross-entropy and the one of the transposed matrix (keras-io's contrastive_loss).
    """
    projections = keras.ops.cast(projections, "float32")
    first = keras.ops.normalize(projections[:, 0], axis=-1)
    second = keras.ops.normalize(projections[:, 1], axis=-1)
    similarities = keras.ops.matmul(first, keras.ops.transpose(second)) / temperature
    pairs = keras.ops.arange(keras.ops.shape(similarities)[0])
    forward = keras.losses.sparse_categorical_crossentropy(pairs, similarities, from_logits=True)
    backward = keras.losses.sparse_categorical_crossentropy(
        pairs, keras.ops.transpose(similarities), from_logits=True
    )
    return (forward + backward) / 2.0


class NTXent(keras.losses.Loss):
    """contrastive_loss as a Keras loss; the targets fit passes are placeholders, ignored."""

    def __init__(self, temperature: float, name: str = "nt_xent", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """The loss of each pair of views."""
        return contrastive_loss(y_pred, self.temperature)

    def get_config(self) -> dict[str, Any]:
        """The temperature, beside the base config."""
        return {**super().get_config(), "temperature": self.temperature}


def build_view_augmentation(augment: ContrastiveAugmentParams, seed: int) -> keras.Model:
    """The random layers that draw one view: flip, rotation, shift, crop, contrast, brightness.

    A crop keeping at least crop_area of the image is a zoom in by up to 1 - sqrt(crop_area)
    of the side, the same on both axes (keras-io: zoom_factor = 1 - sqrt(min_area)).
    """
    zoom = 1.0 - math.sqrt(augment.crop_area)
    wanted: list[tuple[bool, Any]] = [
        (augment.horizontal_flip, lambda s: keras.layers.RandomFlip("horizontal", seed=s)),
        (augment.rotation > 0, lambda s: keras.layers.RandomRotation(augment.rotation, seed=s)),
        (
            augment.translation > 0,
            lambda s: keras.layers.RandomTranslation(
                augment.translation, augment.translation, seed=s
            ),
        ),
        (zoom > 0, lambda s: keras.layers.RandomZoom((-zoom, 0.0), seed=s)),
        (
            augment.contrast > 0,
            lambda s: keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=s),
        ),
        (
            augment.brightness > 0,
            lambda s: keras.layers.RandomBrightness(
                augment.brightness, value_range=(0, 255), seed=s
            ),
        ),
    ]
    # One seed per layer: layers sharing a seed would draw the same random numbers.
    layers = [make(seed + index) for index, (on, make) in enumerate(wanted) if on]
    return let_xla_compile(keras.Sequential(layers or [keras.layers.Identity()], name="views"))


def build_contrastive_model(
    model_name: str,
    image_size: int,
    augment: ContrastiveAugmentParams,
    projection_units: int,
    seed: int,
) -> tuple[keras.Model, keras.Model]:
    """The two-view SimCLR model around backbone `model_name` as train builds it; and the backbone.

    Inputs: two batches of raw gray pixels (0-255), the images and their partners; each goes
    through its own random draw of the view layers, the backbone's preprocessing, the backbone
    (from scratch, BatchNorm adapted as for training from scratch), average pooling and the
    projection head (Dense ReLU at the feature width, then Dense projection_units). Output:
    (batch, 2, projection_units), the projections of both views, which NTXent compares.
    """
    backbone, _ = load_backbone(model_name, image_size, "none")
    backbone.name = layer_names.BACKBONE
    adapt_batchnorm_for_scratch(backbone)
    views = build_view_augmentation(augment, seed)
    preprocess = BackboneInput(model_name, name=layer_names.BACKBONE_INPUT)
    pool = keras.layers.GlobalAveragePooling2D(name="pretrain_pool")
    hidden = keras.layers.Dense(int(backbone.output_shape[-1]), "relu", name="projection_hidden")
    # float32 output keeps the similarities and their softmax stable under mixed precision.
    projection = keras.layers.Dense(projection_units, dtype="float32", name="projection")
    inputs = [keras.Input((image_size, image_size, 1), name=name) for name in ("image", "partner")]
    # The same layers for both views; each call draws its own random views.
    outputs = [projection(hidden(pool(backbone(preprocess(views(view)))))) for view in inputs]
    model = keras.Model(inputs, keras.ops.stack(outputs, axis=1), name=f"simclr_{model_name}")
    return model, backbone


@dataclass(frozen=True)
class GroupLayout:
    """Images sorted by group: where each group starts, its size, each image's place in it."""

    order: np.ndarray  # image positions, group by group
    group_of: np.ndarray  # each image's group number (0 .. groups - 1)
    start: np.ndarray  # per group: its first index in `order`
    size: np.ndarray  # per group: how many images
    rank: np.ndarray  # per image: its index within its group

    @classmethod
    def of(cls, groups: np.ndarray) -> GroupLayout:
        """The layout of `groups` (one int per image; -1: an image of no group, alone)."""
        codes = np.asarray(groups, dtype=np.int64).copy()
        alone = codes < 0
        codes[alone] = codes.max(initial=-1) + 1 + np.arange(int(alone.sum()))
        _, group_of, size = np.unique(codes, return_inverse=True, return_counts=True)
        order = np.argsort(group_of, kind="stable")
        start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
        rank = np.empty(len(codes), dtype=np.int64)
        rank[order] = np.arange(len(codes)) - start[group_of[order]]
        return cls(order, group_of.astype(np.int64), start, size.astype(np.int64), rank)

    def partners(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each anchor, another image of its group drawn at random; itself when alone."""
        group = self.group_of[anchors]
        others = self.size[group] - 1
        draw = np.floor(rng.random(len(anchors)) * np.maximum(others, 1)).astype(np.int64)
        draw += draw >= self.rank[anchors]  # skip the anchor itself
        partner = self.order[self.start[group] + np.minimum(draw, self.size[group] - 1)]
        return np.where(others > 0, partner, anchors)

    @property
    def images_with_partner(self) -> int:
        """Images whose group holds another image."""
        return int(np.sum(self.size[self.group_of] > 1))


@dataclass(frozen=True)
class PretrainImages:
    """The pre-training images, in parts (the source's rows, then each extra folder's)."""

    parts: tuple[Pixels, ...]
    groups: np.ndarray  # one int per image: equal values are one group; -1 = none
    counts: dict[str, int]  # images per source: train, val, test, unsplit, extra:<folder>

    def __len__(self) -> int:
        """Number of images."""
        return len(self.groups)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The images at `positions` (0 .. len-1) as uint8 (n, size, size, 1), in that order."""
        result: np.ndarray | None = None
        start = 0
        for part in self.parts:
            inside = np.flatnonzero((positions >= start) & (positions < start + len(part)))
            if len(inside):
                pixels = read_images(part, positions[inside] - start)
                if result is None:
                    result = np.empty((len(positions), *pixels.shape[1:]), dtype=pixels.dtype)
                result[inside] = pixels
            start += len(part)
        if result is None:
            raise IndexError(f"no image at positions {positions[:3]} ... of {len(self)}")
        return result


class PairBatches(keras.utils.PyDataset):
    """((images, partners), placeholder targets): epoch e shuffled by default_rng([seed, e]).

    A partner is another image of the same group (`by_group`) drawn by default_rng([seed, e,
    batch]), or the image itself; so every batch is a function of its epoch and index, whichever
    thread reads it; ShuffleByEpoch hands it fit's epoch. The last partial batch is dropped: a
    batch of one has no negatives.
    """

    def __init__(
        self, images: PretrainImages, batch_size: int, seed: int, by_group: bool, readers: int = 1
    ) -> None:
        super().__init__(workers=readers, max_queue_size=READ_AHEAD)
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.layout = GroupLayout.of(images.groups if by_group else np.full(len(images), -1))
        self.epoch = 0
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Whole batches per epoch."""
        return len(self.images) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Shuffle by epoch `epoch` from now on."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """Positions of the images in this epoch's order."""
        with self._lock:
            if self.epoch not in self._orders:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._orders = {self.epoch: rng.permutation(len(self.images))}
            return self._orders[self.epoch]

    def __getitem__(self, batch: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Batch `batch` of this epoch."""
        anchors = self.order()[batch * self.batch_size : (batch + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, batch])
        partners = self.layout.partners(anchors, rng)
        placeholder = np.zeros(len(anchors), dtype=np.float32)
        return (self.images.read(anchors), self.images.read(partners)), placeholder


class ShuffleByEpoch(keras.callbacks.Callback):
    """Hand a PairBatches the epoch fit is in, before it reads the epoch's first batch.

    A callback, not the dataset's own on_epoch_end: TensorFlow's fit calls that once more
    before the first epoch, JAX's does not.
    """

    def __init__(self, batches: PairBatches) -> None:
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        """Shuffle by this epoch."""
        self.batches.set_epoch(epoch)


def image_files(folder: Path) -> list[str]:
    """Every visible file under `folder` (no dot-files or dot-folders), posix, sorted."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def decode_extra_folder(
    folder: str, workspace: Path, build: BuildParams, cache: Path, workers: int
) -> tuple[int, str]:
    """Decode pretrain.extra_folders entry `folder` into the pixel cache `cache` as build does.

    Returns how many images it holds and a digest of their paths and contents. A folder that
    does not exist, or holds no image build can decode, is a one-line PipelineError.
    """
    path = Path(folder).expanduser()
    path = path if path.is_absolute() else workspace / path
    key = f"pretrain.extra_folders: {folder!r}"
    if not path.is_dir():
        raise PipelineError(f"{key} is not a folder ({path}); give a folder of images or remove it")
    files = image_files(path)
    manifest = pd.DataFrame(
        {"path": files, "label": "", "given_split": "", "group": "", "source": folder}
    )
    images, rejected = decode_into_cache(manifest, path, build, cache, workers)
    if images.empty:
        example = (
            f"; e.g. {rejected['path'].iloc[0]}: {rejected['reason'].iloc[0]}" if files else ""
        )
        raise PipelineError(
            f"{key} holds no image build can decode ({len(files)} file(s) in {path}{example}); "
            "give a folder of images or remove it"
        )
    digest = hashlib.sha256()
    for relative, content in images[["path", "sha256"]].itertuples(index=False):
        digest.update(f"{relative}\t{content}\n".encode())
    return len(images), digest.hexdigest()[:16]


def source_rows(
    paths: ProjectPaths, images: str, splits: Mapping[str, pd.DataFrame]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The source's images pretrain.images names (cache_index, group), and counts per split."""
    if images == "train_val":
        rows = pd.concat([splits["train"], splits["val"]], ignore_index=True)
        return rows, {"train": len(splits["train"]), "val": len(splits["val"])}
    rows = read_table(paths.images_table)
    counts = {}
    placed = np.zeros(len(rows), dtype=bool)
    for split, table in splits.items():
        member = rows["cache_index"].isin(table["cache_index"]).to_numpy()
        counts[split] = int(member.sum())
        placed |= member
    counts["unsplit"] = int((~placed).sum())  # dropped by the split (duplicates, undersampling)
    return rows, counts


def group_numbers(groups: pd.Series) -> np.ndarray:
    """One int per image: images of one non-blank group share it; a blank group is -1."""
    text = groups.fillna("").astype(str)
    codes, _ = pd.factorize(text.where(text != "", None), use_na_sentinel=True)
    return codes.astype(np.int64)


def cached_pixels(
    cache: Path, rows: np.ndarray, image_size: int, stream: bool, readers: int
) -> Pixels:
    """Rows of a pixel cache at `image_size`: in memory, or streamed batch by batch."""
    if stream:
        return StreamedPixels(cache, open_pixel_cache(cache), rows, image_size, readers)
    return load_split_pixels(cache, rows, image_size)


def pretraining_images(
    params: Params,
    paths: ProjectPaths,
    splits: Mapping[str, pd.DataFrame],
    scratch: Path,
    runtime: RunSettings,
) -> tuple[PretrainImages, str]:
    """The images params.pretrain names, and the digest of its extra folders ('' for none).

    Extra folders are decoded into pixel caches in `scratch`, which must outlive the fit.
    Everything is streamed when it would take more than CXR_MEMORY_CACHE_MB in memory.
    """
    pretrain, image_size = params.pretrain, params.train.image_size
    workers = runtime.workers or available_cores()
    rows, counts = source_rows(paths, pretrain.images, splits)
    caches = [(paths.pixel_cache, rows["cache_index"].to_numpy(dtype=np.int64))]
    groups = [group_numbers(rows["group"])]
    digest = hashlib.sha256()
    for index, folder in enumerate(pretrain.extra_folders):
        cache = scratch / f"extra{index}.npy"
        count, content = decode_extra_folder(
            folder, workspace_root(paths.root), params.build, cache, workers
        )
        caches.append((cache, np.arange(count)))
        groups.append(np.full(count, -1, dtype=np.int64))
        counts[f"{EXTRA_PREFIX}{folder}"] = count
        digest.update(f"{folder}\t{content}\n".encode())
    total = sum(len(rows_of) for _, rows_of in caches)
    stream = total * image_size**2 > runtime.memory_cache_mb * MEGABYTE
    parts = tuple(
        cached_pixels(cache, rows_of, image_size, stream, workers) for cache, rows_of in caches
    )
    images = PretrainImages(parts, np.concatenate(groups), counts)
    return images, digest.hexdigest()[:16] if pretrain.extra_folders else ""


def pretrain_backbone(
    params: Params, runtime: RunSettings, paths: ProjectPaths, environ: Mapping[str, str]
) -> PretrainRecord:
    """Pre-train the backbone of params.model: pretrained/ (weights, record) and an MLflow run."""
    pretrain, train = params.pretrain, params.train
    splits = read_splits(paths)
    fingerprint = data_fingerprint(splits)
    with tempfile.TemporaryDirectory(prefix="cxr-pretrain-") as scratch:
        images, extra_digest = pretraining_images(params, paths, splits, Path(scratch), runtime)
        if len(images) < pretrain.batch_size:
            raise PipelineError(
                f"pretrain.batch_size = {pretrain.batch_size}: more than the {len(images)} "
                f"pre-training images ({images.counts}); lower it to at most {len(images)}"
            )
        # Devices before any model: their set-up must come before the backend runs anything.
        accelerators = setup_accelerators(
            train.mixed_precision, train.jit_compile, environ, Cluster(), train.deterministic
        )
        experiment_id = use_experiment(
            params.mlflow_experiment + EXPERIMENT_SUFFIX, paths.root, environ
        )
        end_abandoned_runs(experiment_id, paths.root)
        tags = run_tags(params.model, fingerprint, paths.root, environ, read_fold_design(paths))
        tags |= {"kind": "pretrain", "positives": pretrain.positives, "images": pretrain.images}
        readers = runtime.workers or available_cores()
        batches = PairBatches(
            images, pretrain.batch_size, params.seed, pretrain.positives == "group", readers
        )
        with (
            staged_dir(paths.pretrained_dir) as staging,
            open_run(experiment_id, tags, None, paths.root) as run,
        ):
            wanted = ("seed", "model", "train.image_size", "train.mixed_precision")
            mlflow.log_params(
                {
                    key: value
                    for key, value in flatten_params(params).items()
                    if key.startswith("pretrain.") or key in wanted
                }
            )
            keras.utils.set_random_seed(params.seed)
            started = time.perf_counter()
            with accelerators.scope():
                model, backbone = build_contrastive_model(
                    params.model, train.image_size, pretrain.augment, pretrain.projection_units,
                    params.seed,
                )  # fmt: skip
                decay = keras.optimizers.schedules.CosineDecay(
                    pretrain.learning_rate, decay_steps=max(len(batches) * pretrain.epochs, 1)
                )
                model.compile(
                    optimizer=keras.optimizers.AdamW(decay, weight_decay=pretrain.weight_decay),
                    loss=NTXent(pretrain.temperature),
                    jit_compile=accelerators.plan.jit_compile,
                )
                history = model.fit(
                    batches,
                    epochs=pretrain.epochs,
                    shuffle=False,  # the batches shuffle themselves, by epoch
                    verbose=2,
                    callbacks=[ShuffleByEpoch(batches), EpochMetricsCallback()],
                )
            seconds = time.perf_counter() - started
            backbone.save_weights(staging / ENCODER_WEIGHTS_FILE)
            losses = tuple(json_number(value) for value in history.history.get("loss", []))
            record = PretrainRecord(
                enabled=True,
                model=params.model,
                image_size=train.image_size,
                positives=pretrain.positives,
                images=images.counts,
                group_pairs=batches.layout.images_with_partner,
                epochs_run=len(losses),
                final_loss=losses[-1] if losses else None,
                loss_per_epoch=losses,
                data_fingerprint=fingerprint,
                extra_fingerprint=extra_digest,
                seconds=round(seconds, 2),
                mlflow_run_id=run.info.run_id,
            )
            record_file = write_pretrain_record(staging, record)
            plan = accelerators.plan
            mlflow.set_tags(build_info(not plan.device.startswith("CPU"), plan.backend))
            mlflow.set_tags({"device": plan.device, "mixed_precision": plan.precision})
            numbers = {
                "pretrain_images": float(len(images)),
                "group_pairs": float(record.group_pairs),
                "pretrain_seconds": record.seconds,
            }
            if record.final_loss is not None:
                numbers["final_loss"] = record.final_loss
            mlflow.log_metrics(numbers)
            mlflow.log_artifact(str(record_file))
    return record
