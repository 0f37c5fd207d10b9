"""TensorFlow for the input pipeline, with every accelerator hidden from it.

tf.data and TFDS run on the host CPU; the GPUs and TPUs belong to JAX. A
TensorFlow that sees a GPU reserves most of its memory when its runtime
starts, so our code imports TensorFlow only through this module:

  from data_pipeline.tf_setup import tf

which hides all GPUs and TPUs from TensorFlow (`hide_accelerators`) before
any TensorFlow op can run. See the docs/datasets.md "The input pipeline".
"""

import tensorflow as tf
from absl import logging

ACCELERATOR_TYPES = ("GPU", "TPU")


def hide_accelerators() -> list[str]:
    """Makes TensorFlow see no GPU and no TPU (the host CPU stays visible).

    Safe to call more than once. If TensorFlow's runtime already started
    with an accelerator visible (some TensorFlow op ran before this call),
    it cannot be hidden any more: a warning says so and the call goes on.

    Returns:
      The device types now hidden from TensorFlow, e.g. ["GPU", "TPU"]
      (a type that could not be hidden is left out).
    """
    hidden = []
    for device_type in ACCELERATOR_TYPES:
        try:
            tf.config.set_visible_devices([], device_type)
        except RuntimeError as e:
            logging.warning(
                "TensorFlow's runtime was initialised before the input "
                "pipeline could hide the %s devices from it (%s), so "
                "TensorFlow may hold memory of the %s that JAX needs. Import "
                "data_pipeline.tf_setup before any TensorFlow op runs (our "
                "modules import TensorFlow through it).",
                device_type,
                e,
                device_type,
            )
            continue
        hidden.append(device_type)
    return hidden


hide_accelerators()
