"""The Keras backend a process runs: TensorFlow (the default) or JAX, chosen by KERAS_BACKEND.

Keras reads KERAS_BACKEND once, when it is first imported; everything in cxr/ is written in
keras.ops, numpy or a branch per backend, so the pipeline runs the same params on either. A
process on JAX imports no TensorFlow (keep_tensorflow_out), so it runs on a machine without it.
"""

from __future__ import annotations

from typing import Any

from cxr.core.errors import PipelineError

TENSORFLOW = "tensorflow"
JAX = "jax"
SUPPORTED = (TENSORFLOW, JAX)
# The pip packages a backend needs beside keras (for a logged model's requirements).
BACKEND_PACKAGES = {TENSORFLOW: ("tensorflow",), JAX: ("jax", "jaxlib")}


def keras_backend() -> str:
    """The backend Keras runs in this process, after checking the pipeline supports it."""
    import keras

    name = str(keras.backend.backend())
    if name not in SUPPORTED:
        raise PipelineError(
            f"KERAS_BACKEND = {name!r}: cxr-pipeline runs on {' or '.join(SUPPORTED)}; "
            f"unset KERAS_BACKEND for {TENSORFLOW} or set it to {JAX}"
        )
    return name


def keep_tensorflow_out() -> str:
    """On any backend but TensorFlow, stop Keras from importing TensorFlow; return the backend.

    Keras imports TensorFlow whenever it is installed, whatever the backend, to check values
    against its types (model.save, keras.utils.set_random_seed): seconds of start-up and a GB
    of memory for nothing, and a process that could not run where TensorFlow is absent would
    go unnoticed here. Keras asks one lazy module whether TensorFlow is available; it is told no.
    """
    name = keras_backend()
    if name != TENSORFLOW:
        from keras.src.utils import module_utils

        lazy = getattr(module_utils, "tensorflow", None)
        if lazy is not None and getattr(lazy, "module", None) is None:
            lazy._available = False
    return name


# Keras marks these layers unfit for XLA for TensorFlow's sake (its image transform has no XLA
# kernel). JAX's compiles; and a JAX model with one unfit layer runs every step op by op,
# about 20 times slower (seen training vgg16 at 32 px with the test suite's augmentation).
XLA_CAPABLE_ON_JAX = ("RandomRotation", "RandomZoom", "RandomTranslation")


def let_xla_compile(model: Any) -> Any:
    """Under JAX, mark the layers of XLA_CAPABLE_ON_JAX in `model` fit for XLA; return it."""
    if keras_backend() != JAX:
        return model
    pending = [model]
    while pending:
        layer = pending.pop()
        if type(layer).__name__ in XLA_CAPABLE_ON_JAX:
            layer.supports_jit = True
        pending.extend(getattr(layer, "layers", []))
    return model
