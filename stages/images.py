"""tf.data input pipeline: decode and resize each image once, then shuffle, batch and prefetch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf


def decode_and_resize(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode a PNG/JPEG/BMP/GIF file to one gray channel and resize it to image_size, as uint8."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=1, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    # uint8 keeps the cache four times smaller than float32; the model rescales itself.
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def image_dataset(
    files: Sequence[Path],
    labels: Sequence[int],
    image_size: int,
    batch_size: int,
    shuffle_seed: int | None,
) -> tf.data.Dataset:
    """Batches of (uint8 image, label), shuffled with `shuffle_seed` each epoch or kept in order."""
    dataset = tf.data.Dataset.from_tensor_slices(([str(file) for file in files], list(labels))).map(
        lambda path, label: (decode_and_resize(path, image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # Decoding is the slow part: do it once, then every epoch reads the in-memory cache.
    dataset = dataset.cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
