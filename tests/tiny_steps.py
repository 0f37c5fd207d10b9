"""The tiny training set-up of tests/test_train.py, without TensorFlow.

Kept apart from the tests so that the child processes of the multi-device
and multi-process tests import only JAX and the step (importing
`mclnet_jax.train` would import TensorFlow, TFDS and orbax as well).
"""

import jax
import numpy as np

from mclnet_jax import optim, sharding, train_step
from mclnet_jax.configs import sysu

NUM_CLASSES = 6
P, K = 4, 2


def load_default_config():
    return sysu.get_config()


def tiny_config():
    config = load_default_config()
    config.model.depth = 18
    config.model.width_multiplier = 1 / 16
    config.model.non_local_counts = (0, 1, 1, 0)
    config.init.pretrained = "random"  # Explicitly from scratch.
    config.data.image_size = (32, 16)
    config.data.num_identities = P
    config.data.num_instances = K
    # Small lr: several steps from random init stay well conditioned, so
    # runs that differ only in reduction order stay within 1e-5.
    config.optimizer.lr = 0.01
    config.mcm_optimizer.lr = 0.01
    config.loss.train_centers = True
    return config


def tiny_batches(
    num_steps,
    seed=0,
    *,
    num_ids=P,
    num_instances=K,
    num_classes=NUM_CLASSES,
    size=(32, 16),
    dtype=np.float32,
):
    """Deterministic fake batches: num_ids identities x num_instances images
    per modality; cameras 1-based as in SYSU."""
    rng = np.random.default_rng(seed)
    n = num_ids * num_instances
    out = []
    for _ in range(num_steps):
        ids = rng.choice(num_classes, size=num_ids, replace=False)
        labels = np.repeat(ids, num_instances).astype(np.int32)
        out.append(
            {
                "visible": rng.normal(size=(n, *size, 3)).astype(dtype),
                "infrared": rng.normal(size=(n, *size, 3)).astype(dtype),
                "visible_labels": labels,
                "infrared_labels": labels.copy(),
                "visible_cameras": rng.choice([1, 2, 4, 5], size=n).astype(
                    np.int32
                ),
                "infrared_cameras": rng.choice([3, 6], size=n).astype(np.int32),
            }
        )
    return out


def initial_state(
    config,
    *,
    num_classes=NUM_CLASSES,
    num_cameras=6,
    steps_per_epoch=3,
    load_pretrained=True,
):
    """(model, tx, schedule, mcm_tx, state) as a training run makes them."""
    model = train_step.make_model(config, num_classes=num_classes)
    tx, schedule, mcm_tx = train_step.make_optimizers(
        config, steps_per_epoch=steps_per_epoch
    )
    state = train_step.init_state(
        config,
        model=model,
        num_classes=num_classes,
        num_cameras=num_cameras,
        tx=tx,
        mcm_tx=mcm_tx,
        load_pretrained=load_pretrained,
    )
    return model, tx, schedule, mcm_tx, state


def setup(config):
    model, tx, schedule, mcm_tx, state = initial_state(config)
    step = train_step.make_train_step(
        config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
    )
    return model, tx, mcm_tx, state, step


def run_steps(num_steps, *, devices=None, process_slice=None):
    """Runs the jitted step on a mesh; returns the final state on the host.

    process_slice: (index, count) to feed only this process's rows (multi-
      process runs); None feeds the whole batch.
    """
    config = tiny_config()
    _, _, _, state, step = setup(config)
    mesh = sharding.make_mesh(devices)
    state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    state = jax.device_put(state, state_sharding)
    step_fn = train_step.jit_train_step(
        step, mesh=mesh, state_sharding=state_sharding
    )
    for batch in tiny_batches(num_steps):
        if process_slice is not None:
            index, count = process_slice
            n = P * K // count
            batch = {
                k: v[index * n : (index + 1) * n] for k, v in batch.items()
            }
        state, metrics = step_fn(state, sharding.global_batch(batch, mesh))
    return jax.device_get(state), jax.device_get(metrics)


def flat_tree(tree):
    """{"a/b/c": numpy leaf} of a pytree."""
    return {
        optim.path_str(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def flat_state(state):
    """`flat_tree` of the state's parameters and BatchNorm statistics."""
    return flat_tree(
        {
            "params": state.params,
            "batch_stats": state.batch_stats,
            "mcm_params": state.mcm_params,
            "mcm_batch_stats": state.mcm_batch_stats,
        }
    )
