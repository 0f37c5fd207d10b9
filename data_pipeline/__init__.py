"""Datasets, identity-balanced sampling and tf.data pipelines for MCLNet.

Knows nothing of models: everything here produces numpy / tf.data batches.
Importing the package itself loads no TensorFlow; the modules that need it
import it through `data_pipeline.tf_setup`, which hides every GPU and TPU
from TensorFlow so that they stay JAX's.
"""
