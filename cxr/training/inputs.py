"""What a model trains on: train and val pixels from the pixel cache, labels, and batches.

The resized train and val pixels are held in memory when they fit under CXR_MEMORY_CACHE_MB;
above it they are streamed: each batch is read from the pixel cache and resized as training
goes, so memory does not grow with the number of images. Both give the same batches in the
same order (tests/stages/test_train.py), only the speed differs.

The batches are tf.data datasets under TensorFlow (the tf.data half of this module is all the
pipeline's TensorFlow input code) and ArrayBatches, a keras.utils.PyDataset of numpy arrays,
under JAX, so that a JAX process imports no TensorFlow. Each backend shuffles its own way
(tf.data by its seed and pass count, ArrayBatches epoch e by numpy's default_rng([seed, e])):
the same batches, in another order. Under keras.distribution an ArrayBatches yields only this
process's share of every global batch (Shards), padded to a whole number of rows per device.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from cxr.core.paths import ProjectPaths
from cxr.core.tables import class_names, data_fingerprint, label_indices, read_splits
from cxr.models.backend import TENSORFLOW, keras_backend
from cxr.models.classifier import auxiliary_targets
from cxr.models.pixels import load_split_pixels, open_pixel_cache, read_cache_rows

MEGABYTE = 1 << 20
# Streamed batches read and resized ahead of the one the model is training on.
STREAM_READ_AHEAD = 2


@dataclass(frozen=True)
class StreamedPixels:
    """A split's pixels left in the pixel cache: rows `cache_index`, resized as they are read."""

    cache: Path
    pixels: np.memmap  # the cache, opened once (open_pixel_cache): its row layout
    cache_index: np.ndarray
    image_size: int
    readers: int = 1  # threads reading batches ahead (ArrayBatches; tf.data sets its own)

    def __len__(self) -> int:
        """Number of images."""
        return len(self.cache_index)

    def batch(self, positions: np.ndarray) -> np.ndarray:
        """The images at `positions` (0 .. len-1) as uint8 (n, size, size, 1)."""
        rows = self.cache_index[positions]
        return read_cache_rows(self.cache, self.pixels, rows, self.image_size)


Pixels = np.ndarray | StreamedPixels


@dataclass(frozen=True)
class TrainingData:
    """The split tables, class names and data fingerprint, with train and val pixels."""

    splits: dict[str, pd.DataFrame]
    class_names: list[str]
    fingerprint: str
    cache_size: int
    train_images: Pixels
    train_labels: np.ndarray
    val_images: Pixels
    val_labels: np.ndarray


def load_training_data(
    paths: ProjectPaths, image_size: int, memory_cache_mb: float | None = None, readers: int = 1
) -> TrainingData:
    """Train and val pixels at `image_size` from the build's cache, with class indices.

    In memory, or streamed when they would take more than `memory_cache_mb` (None: always in
    memory, as the scikit-learn baselines need) by `readers` threads under JAX.
    """
    splits = read_splits(paths)
    names = class_names(splits)
    rows = len(splits["train"]) + len(splits["val"])
    stream = memory_cache_mb is not None and rows * image_size**2 > memory_cache_mb * MEGABYTE

    cache = open_pixel_cache(paths.pixel_cache)  # fails now, with its reason, not mid-epoch

    def pixels(split: str) -> Pixels:
        index = splits[split]["cache_index"].to_numpy(dtype=np.int64)
        if stream:
            return StreamedPixels(paths.pixel_cache, cache, index, image_size, readers)
        return load_split_pixels(paths.pixel_cache, index, image_size)

    def labels(split: str) -> np.ndarray:
        return label_indices(splits[split]["label"], names)

    return TrainingData(
        splits=splits,
        class_names=names,
        fingerprint=data_fingerprint(splits),
        cache_size=int(cache.shape[1]),
        train_images=pixels("train"),
        train_labels=labels("train"),
        val_images=pixels("val"),
        val_labels=labels("val"),
    )


def in_memory(images: Pixels) -> np.ndarray:
    """The pixels as an array; streamed ones are read whole (for the small baseline inputs)."""
    if isinstance(images, StreamedPixels):
        return images.batch(np.arange(len(images)))
    return images


def read_images(images: Pixels, positions: np.ndarray) -> np.ndarray:
    """The images (or cached features) at `positions`, in that order."""
    if isinstance(images, StreamedPixels):
        return images.batch(positions)
    return np.asarray(images[positions])


@dataclass(frozen=True)
class Shards:
    """How keras.distribution splits each batch: this process's share, over `devices` in all.

    Every global batch is padded to a multiple of `devices` with copies of its first rows,
    weighted 0, and process p yields rows p * share .. (p + 1) * share of it.
    """

    process: int = 0
    processes: int = 1
    devices: int = 1


ONE_DEVICE = Shards()


def on_tensorflow() -> bool:
    """Whether batches are tf.data datasets (the TensorFlow backend) rather than ArrayBatches."""
    return keras_backend() == TENSORFLOW


class ArrayBatches(keras.utils.PyDataset):
    """Batches of numpy arrays for any backend: (images, targets[, weights]), or (images,).

    Targets are class indices, one-hot rows (`depth` > 0), MixUp blends of those (`mixup` > 0,
    images then float32) and, with `auxiliary`, GoogLeNet's dict of them per output. Seeded,
    epoch e draws the order default_rng([seed, e]) (set_epoch; follow_epochs keeps it in step
    with fit) and a batch's MixUp default_rng([seed, e, batch]), so every batch is a function
    of its epoch and index, whichever thread reads it. Sample weights come only with padding
    (shards.devices > 1): 0 on padded rows, and on real rows the class weight times padded /
    real rows of the epoch, which keeps the epoch's mean loss and accuracy those of the real
    images (Keras averages each batch's loss over all its rows).
    """

    def __init__(
        self,
        images: Pixels,
        labels: Sequence[int] | np.ndarray | None,
        batch_size: int,
        shuffle_seed: int | None = None,
        *,
        depth: int = 0,
        mixup: float = 0.0,
        auxiliary: bool = False,
        class_weight: dict[int, float] | None = None,
        shards: Shards = ONE_DEVICE,
    ) -> None:
        readers = images.readers if isinstance(images, StreamedPixels) else 1
        # Threads: reading and resizing are numpy and file reads, which release the GIL, and a
        # process forked from a running JAX can deadlock. A small queue keeps memory flat.
        super().__init__(workers=readers, max_queue_size=STREAM_READ_AHEAD)
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle_seed = shuffle_seed
        self.depth = depth
        self.mixup = mixup
        self.auxiliary = auxiliary
        self.class_weight = class_weight or {}
        self.shards = shards
        self.epoch = 0
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self.images) / self.batch_size)

    @property
    def weighted(self) -> bool:
        """Whether batches carry sample weights (padded for several devices; labelled)."""
        return self.labels is not None and self.shards.devices > 1

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of epoch `epoch` (counted from 0 in this fit) from now on."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """Positions of the images in this epoch's order."""
        if self.shuffle_seed is None:
            return np.arange(len(self.images))
        with self._lock:
            if self.epoch not in self._orders:
                rng = np.random.default_rng([self.shuffle_seed, self.epoch])
                self._orders = {self.epoch: rng.permutation(len(self.images))}
            return self._orders[self.epoch]

    def _rows(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of global batch `batch` this process yields: positions in it, which are real."""
        size = min(self.batch_size, len(self.images) - batch * self.batch_size)
        padded = math.ceil(size / self.shards.devices) * self.shards.devices
        share = padded // self.shards.processes
        rows = np.arange(share) + self.shards.process * share
        return rows % size, rows < size

    def real_rows(self) -> np.ndarray:
        """Which of the rows this process yields over an epoch are images, not padding."""
        if not len(self):
            return np.zeros(0, dtype=bool)
        return np.concatenate([self._rows(batch)[1] for batch in range(len(self))])

    def _padding_factor(self) -> float:
        """Rows yielded by every process over an epoch, padding included, per real row."""
        devices, sizes = self.shards.devices, np.full(len(self), self.batch_size)
        if len(self):
            sizes[-1] = len(self.images) - (len(self) - 1) * self.batch_size
        return float(np.sum(np.ceil(sizes / devices) * devices) / max(len(self.images), 1))

    def __getitem__(self, batch: int) -> tuple[Any, ...]:
        """Global batch `batch` of this epoch: this process's share of it."""
        positions = self.order()[batch * self.batch_size : (batch + 1) * self.batch_size]
        rows, real = self._rows(batch)
        if self.labels is None:
            return (read_images(self.images, positions[rows]),)
        labels = self.labels[positions]
        targets: np.ndarray = labels
        if self.depth:
            targets = np.eye(self.depth, dtype=np.float32)[labels]
        if self.mixup > 0:
            # Blends mix the whole global batch, as on one device; then this process's rows.
            images, targets = self._blend(read_images(self.images, positions), targets, batch)
            images = images[rows]
        else:
            images = read_images(self.images, positions[rows])
        targets = targets[rows]
        outputs: Any = auxiliary_targets(images, targets)[1] if self.auxiliary else targets
        if not self.weighted:
            return images, outputs
        weights = np.array([self.class_weight.get(int(label), 1.0) for label in labels[rows]])
        weights = np.where(real, weights * self._padding_factor(), 0.0).astype(np.float32)
        return images, outputs, weights

    def _blend(
        self, images: np.ndarray, targets: np.ndarray, batch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """MixUp as keras.layers.MixUp does it: each row with a shuffled partner, Beta weights."""
        rng = np.random.default_rng([self.shuffle_seed or 0, self.epoch, batch])
        partner = rng.permutation(len(images))
        weight = rng.beta(self.mixup, self.mixup, len(images)).astype(np.float32)
        pixels = images.astype(np.float32)
        shape = (-1,) + (1,) * (pixels.ndim - 1)
        mixed = weight.reshape(shape) * pixels + (1 - weight.reshape(shape)) * pixels[partner]
        blended = weight[:, None] * targets + (1 - weight[:, None]) * targets[partner]
        return mixed, blended.astype(np.float32)


class FollowEpochs(keras.callbacks.Callback):
    """Hand an ArrayBatches the epoch fit is in, counted from the phase's first epoch."""

    def __init__(self, batches: ArrayBatches, first_epoch: int) -> None:
        super().__init__()
        self.batches = batches
        self.first_epoch = first_epoch

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        """Shuffle by this epoch (fit calls it before reading the epoch's first batch)."""
        self.batches.set_epoch(epoch - self.first_epoch)


def fit_batches(
    images: Pixels,
    labels: Sequence[int] | np.ndarray,
    batch_size: int,
    shuffle_seed: int | None,
    *,
    depth: int = 0,
    mixup: float = 0.0,
    auxiliary: bool = False,
    class_weight: dict[int, float] | None = None,
    shards: Shards = ONE_DEVICE,
) -> Any:
    """The batches fit reads: tf.data on TensorFlow, an ArrayBatches elsewhere (see the classes).

    `depth` > 0 makes the labels one-hot rows; `mixup` > 0 blends the batches (with `depth`,
    seeded by `shuffle_seed`); `auxiliary` gives GoogLeNet's targets per output. Class weights
    reach fit as fit_class_weight says.
    """
    if mixup > 0 and not depth:
        raise ValueError("MixUp blends one-hot targets: give fit_batches a depth")
    if not on_tensorflow():
        return ArrayBatches(
            images, labels, batch_size, shuffle_seed, depth=depth, mixup=mixup,
            auxiliary=auxiliary, class_weight=class_weight, shards=shards,
        )  # fmt: skip
    import tensorflow as tf

    dataset = array_dataset(images, list(labels), batch_size, shuffle_seed)
    if depth:

        def encode(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return images, tf.one_hot(labels, depth)

        dataset = dataset.map(encode)
    if mixup > 0:
        dataset = mixup_batches(dataset, mixup, shuffle_seed or 0)
    return dataset.map(auxiliary_targets) if auxiliary else dataset


def fit_class_weight(batches: Any, class_weight: dict[int, float] | None) -> Any:
    """What fit takes as class_weight: None where the batches already weigh their rows."""
    return None if isinstance(batches, ArrayBatches) and batches.weighted else class_weight


def follow_epochs(batches: Any, first_epoch: int, done: int) -> list[keras.callbacks.Callback]:
    """Keep the shuffles in step with the epochs when a phase starts (`done` already run).

    tf.data draws the next order on every pass, and keras opens two passes per epoch (it opens
    the next one when an epoch ends), so those a resumed phase's first `done` epochs drew are
    drawn again and dropped; an ArrayBatches shuffles by the epoch fit hands it. The resume
    test in tests/stages/test_train.py checks this against an uninterrupted run.
    """
    if isinstance(batches, ArrayBatches):
        return [FollowEpochs(batches, first_epoch)]
    for _ in range(2 * done):
        iter(batches)
    return []


def predict_images(
    model: keras.Model, images: Pixels, batch_size: int, shards: Shards = ONE_DEVICE
) -> np.ndarray:
    """The model's outputs for every image, in order (padding rows dropped)."""
    if not on_tensorflow():
        batches = ArrayBatches(images, None, batch_size, shards=shards)
        outputs = np.asarray(model.predict(batches, verbose=0))
        return outputs[batches.real_rows()]
    if isinstance(images, StreamedPixels):
        labels = np.zeros(len(images), dtype=np.int64)  # unused: predict reads the images only
        dataset = array_dataset(images, labels.tolist(), batch_size, None)
        return np.asarray(model.predict(dataset.map(lambda pixels, _: pixels), verbose=0))
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0))


def array_dataset(
    images: Pixels, labels: Sequence[int], batch_size: int, shuffle_seed: int | None
) -> Any:
    """tf.data batches of (uint8 image, label), reshuffled each epoch when seeded (TensorFlow).

    Streamed pixels are shuffled by position, which draws the same order as shuffling the
    images themselves (tf.data's order depends on the seed and the count, not the elements).
    """
    import tensorflow as tf

    if isinstance(images, StreamedPixels):
        return streamed_dataset(images, labels, batch_size, shuffle_seed)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, dtype=np.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def streamed_dataset(
    images: StreamedPixels, labels: Sequence[int], batch_size: int, shuffle_seed: int | None
) -> Any:
    """tf.data batches read from the pixel cache as they are needed (a few prefetched ahead)."""
    import tensorflow as tf

    positions = np.arange(len(images), dtype=np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((positions, np.asarray(labels, dtype=np.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    size = images.image_size

    def read(batch_positions: tf.Tensor, batch_labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(images.batch, [batch_positions], tf.uint8, stateful=False)
        return tf.ensure_shape(pixels, (None, size, size, 1)), batch_labels

    # Batches are read in parallel but handed out in order, so the fit sees the same sequence.
    # A fixed, small read-ahead: AUTOTUNE grows its buffers while the consumer keeps up, and
    # memory then grows with the epoch again.
    dataset = dataset.batch(batch_size).map(
        read, num_parallel_calls=STREAM_READ_AHEAD, deterministic=True
    )
    return dataset.prefetch(STREAM_READ_AHEAD)


def mixup_batches(batches: Any, alpha: float, seed: int) -> Any:
    """tf.data batches blended with a shuffled copy of themselves, images and one-hot targets.

    keras.layers.MixUp draws one Beta(alpha, alpha) weight per image; the images become float32
    (the model rescales whatever it is given, as it does uint8).
    """
    import tensorflow as tf

    mix = keras.layers.MixUp(alpha=alpha, seed=seed)

    def blend(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mixed = mix({"images": tf.cast(images, tf.float32), "labels": labels}, training=True)
        return mixed["images"], mixed["labels"]

    # One batch at a time: the layer's seed generator is a variable that each call advances, so
    # parallel calls would draw the weights in a varying order and break determinism.
    return batches.map(blend)
