"""bfloat16 training (`config.model.dtype="bfloat16"`): what stays float32.

The tiny model of test_train.py trains a few steps in bfloat16. The backbone
computes in bfloat16; parameters, BatchNorm statistics, the MCM, both
optimiser states, losses, metrics and features stay float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_train
import tiny_steps

from data_pipeline.constants import INFRARED, VISIBLE
from mclnet_jax import optim
from mclnet_jax.evaluators import features

F32 = jnp.dtype(jnp.float32)
NUM_STEPS = 3


@pytest.fixture(scope="module")
def trained(fast_compile):
    del fast_compile
    config = test_train.tiny_config()
    config.model.dtype = "bfloat16"
    model, _, _, state, step = test_train.setup(config)
    batches = test_train.tiny_batches(NUM_STEPS)
    jaxpr = str(jax.make_jaxpr(step)(state, batches[0]))
    jit_step = jax.jit(step)
    states, metrics = [state], []
    for batch in batches:
        new_state, m = jit_step(states[-1], batch)
        states.append(jax.device_get(new_state))
        metrics.append(jax.device_get(m))
    return model, states, metrics, jaxpr


def _float_leaves(tree):
    """{path: dtype} of every floating-point leaf of `tree`."""
    return {
        optim.path_str(path): jnp.dtype(leaf.dtype)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    }


def test_the_step_computes_in_bfloat16(trained):
    model, _, _, jaxpr = trained
    assert model.dtype == jnp.bfloat16
    # Not a silent float32 run: the backbone's arithmetic is bfloat16.
    assert "bf16" in jaxpr


@pytest.mark.parametrize(
    "part",
    [
        "params",
        "batch_stats",
        "opt_state",
        "mcm_params",
        "mcm_batch_stats",
        "mcm_opt_state",
        "frozen_centers",
    ],
)
def test_every_state_leaf_stays_float32(trained, part):
    _, states, _, _ = trained
    for i, state in enumerate(states):
        leaves = _float_leaves(getattr(state, part))
        bad = {k: v for k, v in leaves.items() if v != F32}
        assert not bad, (part, i, bad)
        if part != "frozen_centers":  # Empty: the centers are trained here.
            assert leaves, part
    # No other leaf is a float in disguise: only integer step counters.
    others = [
        leaf
        for leaf in jax.tree.leaves(getattr(states[-1], part))
        if not jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    assert all(jnp.issubdtype(x.dtype, jnp.integer) for x in others), part


def test_optimiser_states_hold_float32_momentum(trained):
    _, states, _, _ = trained
    for part, params in (
        ("opt_state", "params"),
        ("mcm_opt_state", "mcm_params"),
    ):
        opt = _float_leaves(getattr(states[-1], part))
        # A momentum buffer per parameter, all float32.
        assert len(opt) >= len(jax.tree.leaves(getattr(states[-1], params)))
        assert set(opt.values()) == {F32}, part


def test_losses_and_metrics_are_float32_and_finite(trained):
    _, _, metrics, _ = trained
    for i, m in enumerate(metrics):
        for name in ("loss", "loss_id", "loss_triplet", "loss_mcm"):
            assert name in m, name
        for name, value in m.items():
            value = np.asarray(value)
            assert value.dtype == F32, (i, name, value.dtype)
            assert np.all(np.isfinite(value)), (i, name, value)


def test_parameters_train_and_stay_finite(trained):
    _, states, _, _ = trained
    for part in ("params", "mcm_params"):
        before = jax.tree.leaves(getattr(states[0], part))
        after = jax.tree.leaves(getattr(states[-1], part))
        assert all(np.all(np.isfinite(x)) for x in after), part
        # Every parameter moved (gradient or weight decay).
        for a, b in zip(before, after, strict=True):
            assert not np.array_equal(a, b), part
    # The extractor's update reaches the backbone's first convolutions.
    old = tiny_steps.flat_tree(states[0].params)
    new = tiny_steps.flat_tree(states[-1].params)
    stems = [k for k in old if k.endswith("conv1/kernel")]
    assert stems
    for k in stems:
        assert not np.array_equal(old[k], new[k]), k


@pytest.mark.parametrize("part", ["batch_stats", "mcm_batch_stats"])
def test_batchnorm_statistics_are_float32_and_update(trained, part):
    _, states, _, _ = trained
    before = _float_leaves(getattr(states[0], part))
    assert before and set(before.values()) == {F32}
    assert {k for k in before if k.endswith(("mean", "var"))} == set(before)
    pairs = zip(
        before,
        jax.tree.leaves(getattr(states[0], part)),
        jax.tree.leaves(getattr(states[-1], part)),
        strict=True,
    )
    for path, old, new in pairs:
        assert new.dtype == F32, path
        assert np.all(np.isfinite(new)), path
        # Every running statistic moved towards the batches' statistics.
        assert not np.array_equal(old, new), path


def test_model_returns_float32_features(trained):
    model, states, _, _ = trained
    variables = states[-1].model_variables()
    x = np.asarray(test_train.tiny_batches(1, seed=1)[0]["visible"])
    # Training mode: shapes and dtypes only (no compilation).
    out, updates = jax.eval_shape(
        lambda v: model.apply(v, x, x, train=True, mutable=["batch_stats"]),
        variables,
    )
    for name in ("pool", "bn", "logits"):
        assert jnp.dtype(out[name].dtype) == F32, name
    assert set(_float_leaves(updates).values()) == {F32}
    # Evaluation: the evaluators' forward gives finite float32 features.
    predict = features.make_predict_fn(model)
    for modality in (VISIBLE, INFRARED):
        got = predict(variables, x, modality)
        assert set(got) == set(features.FEATURE_NAMES)
        for name, value in got.items():
            assert value.dtype == F32, (modality, name)
            assert value.shape == (x.shape[0], model.feature_dim), name
            assert np.all(np.isfinite(value)), (modality, name)
