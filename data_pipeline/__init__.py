"""Datasets, identity-balanced sampling and tf.data pipelines for MCLNet.

Knows nothing of models: everything here produces numpy / tf.data batches.
"""
