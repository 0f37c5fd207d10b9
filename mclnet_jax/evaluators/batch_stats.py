"""BatchNorm statistics recomputed for the weights being evaluated.

Training keeps each BatchNorm layer's running mean and variance as an
exponential moving average (momentum 0.1) of batch statistics, each computed
with the weights of its own step. While the weights change fast (the first
steps from random initialisation at a large learning rate) these averages
describe earlier weights: in evaluation mode the layers then stop
normalising, activations grow from layer to layer, the non-local blocks
(theta phi^T g, cubic in the scale) and GeM pooling (x^3) cube them, and
float32 overflows. Measured on the tiny demo after 4 steps: visible-image
activations reach 1e11 after layer2's non-local block and 3e32 after
layer3's, GeM's cube overflows; the same weights with statistics recomputed
here give features of at most 15. Debiasing the averages (dividing out their
(0, 1) start) does not help: the statistics of the earlier weights are what
is wrong.

`recompute` replaces every running mean and variance by the plain average,
over a few training batches, of the batch statistics computed with the
evaluated parameters (PyTorch's cumulative average, `momentum=None`; the
"precise BN" of Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).
`evaluation_variables` gives what every evaluation of a state uses (test
and validation protocols, figures): with `config.eval.precise_bn_batches` > 0
the statistics recomputed on that many training batches; with 0 the running
statistics, as the authors' release evaluates.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from mclnet_jax import sharding
from mclnet_jax.models import layers


@functools.lru_cache(maxsize=8)
def _compiled_batch_statistics(model):
    """One jitted train-mode forward per model returning its batch statistics.

    Every BatchNorm of the model updates `new = m * old + (1 - m) * batch`
    (`layers.BatchNorm`, m = `layers.BN_MOMENTUM`); started from all-zero
    statistics, `new / (1 - m)` is the batch's own mean and (unbiased)
    variance.
    """

    def statistics(variables, visible, infrared):
        zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
        _, mutated = model.apply(
            {"params": variables["params"], "batch_stats": zeros},
            visible,
            infrared,
            train=True,
            mutable=["batch_stats"],
        )
        scale = 1.0 / (1.0 - layers.BN_MOMENTUM)
        return jax.tree.map(lambda s: s * scale, mutated["batch_stats"])

    return jax.jit(statistics)


def recompute(
    model,
    variables: Mapping[str, Any],
    batches: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """`variables` with batch statistics recomputed for their parameters.

    Args:
        model: an MCLNet-style linen module, `model.apply(variables, visible,
            infrared, train=True, mutable=["batch_stats"])`.
        variables: {"params", "batch_stats"} (`TrainState.model_variables`).
        batches: training batches {"visible": [B, H, W, 3], "infrared": [B,
            H, W, 3], ...} (global arrays on the mesh, or numpy on one
            device); other keys are ignored.

    Returns:
        {"params": the same, "batch_stats": the average over `batches` of
        each batch's mean and unbiased variance, same tree and dtypes}.

    Raises:
        ValueError: `batches` is empty.
    """
    statistics = _compiled_batch_statistics(model)
    total, count = None, 0
    for batch in batches:
        stats = statistics(variables, batch["visible"], batch["infrared"])
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        count += 1
    if not count:
        raise ValueError(
            "recompute needs at least one training batch; set "
            "config.eval.precise_bn_batches >= 1 (or 0 to keep the running "
            "statistics)."
        )
    return {
        "params": variables["params"],
        "batch_stats": jax.tree.map(
            lambda s, old: (s / count).astype(old.dtype),
            total,
            variables["batch_stats"],
        ),
    }


def evaluation_variables(
    model,
    state,
    *,
    num_batches: int,
    train_batches: Callable[[int], Iterator[Mapping[str, Any]]],
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """The variables that evaluate `state`.

    Args:
        model: the MCLNet module.
        state: a `TrainState` (`model_variables()`, `step`).
        num_batches: `config.eval.precise_bn_batches`: 0 keeps the running
            statistics (as the release evaluates).
        train_batches: start_step -> this host's training batches from that
            step on (numpy).
        mesh: the data mesh the batches are laid out on.

    Returns:
        `state.model_variables()`, with the batch statistics recomputed on
        the `num_batches` training batches that follow the state's step (a
        pure function of (seed, step): a resumed run evaluates as an
        uninterrupted one) when that is > 0.
    """
    variables = state.model_variables()
    if num_batches <= 0:
        return variables
    step = int(jax.device_get(state.step))
    stream = train_batches(step)
    with contextlib.closing(stream):
        variables = recompute(
            model,
            variables,
            (
                sharding.global_batch(
                    {k: b[k] for k in ("visible", "infrared")}, mesh
                )
                for b in itertools.islice(stream, num_batches)
            ),
        )
    logging.info(
        "BatchNorm statistics of step %d recomputed on %d training batches "
        "(config.eval.precise_bn_batches).",
        step,
        num_batches,
    )
    return variables
