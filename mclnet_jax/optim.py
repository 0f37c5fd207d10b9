"""Optimisers and learning-rate schedules for MCLNet, built from config.

Two optimisers are trained alternately (see `train_step.py`):

* the feature extractor (backbone, BNNeck, classifier and, when trained, the
    ICA/CCA centers): SGD with Nesterov momentum, PyTorch-style weight decay,
    per-parameter-group learning-rate multipliers (backbone 0.1 x lr, heads
    1 x lr) and the release's epoch schedule;
* the modality confusion module (MCM): the same SGD with its own (constant)
    learning rate.

PyTorch semantics of `torch.optim.SGD(nesterov=True, weight_decay=wd)` are
reproduced exactly: the decay is added to the gradient *before* momentum,
`buf = m * buf + g`, `update = g + m * buf`, and the learning rate scales the
result (so a learning-rate change does not rescale the momentum buffer).

Parameter groups are chosen by regular expressions on the parameter path
(`"model/layer1/0/conv1/kernel"`, `"centers/ica"`), first match wins, as in
big_vision's `optax.make`; a parameter that no rule covers is an error rather
than a silent default.

Config fields (a `ConfigDict`; every recipe of configs/ sets them all):

    lr: float, the base ("heads") learning rate.
    momentum: float.
    nesterov: bool.
    weight_decay: float.
    schedule: ConfigDict with `kind` in {"constant", "epochs"}; for "epochs":
        warmup_epochs (int), boundaries (tuple of epochs), factors (tuple of
        multipliers of lr, one per boundary).
    lr_mults: tuple of (regex, multiplier) pairs.
    wd_mults: tuple of (regex, multiplier) pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jax.Array], jax.Array]
Rules = Sequence[tuple[str, float]]


def epoch_schedule(
    *,
    base_lr: float,
    steps_per_epoch: int,
    warmup_epochs: int = 10,
    boundaries: Sequence[int] = (20, 50),
    factors: Sequence[float] = (0.1, 0.01),
) -> Schedule:
    """The release's piecewise-constant per-epoch schedule, as a step function.

    With the defaults: `lr * (e + 1) / 10` for epochs e = 0..9, `lr` for
    10..19, `0.1 lr` for 20..49 and `0.01 lr` from epoch 50 on, where
    `e = step // steps_per_epoch` (the lr changes only at epoch boundaries, as
    the release's `adjust_learning_rate` did once per epoch).

    Args:
        base_lr: the peak learning rate.
        steps_per_epoch: optimiser steps per epoch (> 0).
        warmup_epochs: linear warm-up length in epochs; 0 disables it.
        boundaries: epochs at which lr becomes `factors[i] * base_lr`.
        factors: one multiplier per boundary.

    Returns:
        step (int array or int) -> learning rate (float32 scalar; float64
        under jax_enable_x64).
    """
    if steps_per_epoch <= 0:
        raise ValueError(
            f"steps_per_epoch must be positive, got {steps_per_epoch}; it "
            "is derived from the training split size and the batch "
            "composition."
        )
    if len(boundaries) != len(factors):
        raise ValueError(
            f"schedule.boundaries {tuple(boundaries)} and schedule.factors "
            f"{tuple(factors)} must have the same length."
        )
    if list(boundaries) != sorted(boundaries):
        raise ValueError(
            f"schedule.boundaries must be increasing, got {tuple(boundaries)}."
        )
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")

    def schedule(step):
        # float64 under jax_enable_x64 (the parity mode), so the lr is
        # exactly torch's there; float32 otherwise.
        dtype = jnp.result_type(float)
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        lr = jnp.asarray(base_lr, dtype)
        if warmup_epochs:
            warm = base_lr * (epoch + 1).astype(dtype) / warmup_epochs
            lr = jnp.where(epoch < warmup_epochs, warm, lr)
        for boundary, factor in zip(boundaries, factors, strict=True):
            lr = jnp.where(
                epoch >= boundary, jnp.asarray(base_lr * factor, dtype), lr
            )
        return lr

    return schedule


def make_schedule(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int
) -> Schedule:
    """Builds the learning-rate schedule named by `config.schedule.kind`."""
    kind = config.schedule.kind
    if kind == "constant":
        lr = float(config.lr)
        return lambda step: jnp.full((), lr, jnp.result_type(float))
    if kind == "epochs":
        return epoch_schedule(
            base_lr=float(config.lr),
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=int(config.schedule.warmup_epochs),
            boundaries=tuple(config.schedule.boundaries),
            factors=tuple(config.schedule.factors),
        )
    raise ValueError(
        f"Unknown schedule kind {kind!r}; use 'constant' or 'epochs'."
    )


def path_str(path) -> str:
    """'a/b/c' for a jax key path (dict keys, sequence indices, attributes)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(str(key.name))
        else:
            parts.append(str(key))
    return "/".join(parts)


def _match(rules: Rules, path: str, what: str) -> float:
    for pattern, value in rules:
        if re.fullmatch(pattern, path):
            return float(value)
    raise ValueError(
        f"Parameter {path!r} is not covered by any {what} rule "
        f"{[p for p, _ in rules]}; add a pattern for it (rules are "
        "full-match regular expressions on the '/'-joined parameter "
        "path, first match wins)."
    )


def tree_multipliers(rules: Rules, tree: Any, *, what: str = "lr_mults"):
    """A tree like `tree` holding each leaf's multiplier from `rules`.

    Raises:
        ValueError: naming the first leaf no rule matches.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _match(rules, path_str(path), what), tree
    )


def _scale_by_path(rules: Rules, what: str) -> optax.GradientTransformation:
    """Multiplies each update by its path's multiplier (trace-time constant)."""

    def init_fn(params):
        tree_multipliers(rules, params, what=what)  # Fail early on gaps.
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        mults = tree_multipliers(rules, updates, what=what)
        scaled = jax.tree.map(
            lambda u, m: u if m == 1.0 else u * m, updates, mults
        )
        return scaled, state

    return optax.GradientTransformation(init_fn, update_fn)


def _add_decayed_weights_by_path(
    weight_decay: float, rules: Rules
) -> optax.GradientTransformation:
    """`g + wd * mult(path) * p`: PyTorch's coupled weight decay, per group."""

    def init_fn(params):
        tree_multipliers(rules, params, what="wd_mults")
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "Weight decay needs params: call tx.update(g, s, params)."
            )
        mults = tree_multipliers(rules, params, what="wd_mults")
        updates = jax.tree.map(
            lambda g, p, m: g if m == 0.0 else g + (weight_decay * m) * p,
            updates,
            params,
            mults,
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def sgd(
    *,
    schedule: Schedule,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    lr_mults: Rules = ((".*", 1.0),),
    wd_mults: Rules = ((".*", 1.0),),
) -> optax.GradientTransformation:
    """`torch.optim.SGD(momentum, nesterov, weight_decay)` with lr groups.

    Args:
        schedule: step -> base learning rate.
        momentum: momentum factor (dampening 0, as torch requires for Nesterov).
        nesterov: Nesterov momentum (torch's formulation).
        weight_decay: coupled L2 decay added to the gradient before momentum.
        lr_mults: (regex, multiplier) rules for the learning rate.
        wd_mults: (regex, multiplier) rules for the weight decay.

    Returns:
        An optax transformation; `update(grads, state, params)` needs params.
    """
    parts = []
    if weight_decay:
        parts.append(_add_decayed_weights_by_path(weight_decay, wd_mults))
    if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    elif nesterov:
        raise ValueError("Nesterov momentum needs momentum > 0.")
    parts.append(optax.scale_by_learning_rate(schedule))
    parts.append(_scale_by_path(lr_mults, "lr_mults"))
    return optax.chain(*parts)


def make(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, Schedule]:
    """The optimiser described by `config` (see the module docstring).

    Returns:
        (transformation, schedule); schedule(step) is the base (1 x) lr, logged
        as "lr".
    """
    schedule = make_schedule(config, steps_per_epoch=steps_per_epoch)
    tx = sgd(
        schedule=schedule,
        momentum=float(config.momentum),
        nesterov=bool(config.nesterov),
        weight_decay=float(config.weight_decay),
        lr_mults=tuple(tuple(r) for r in config.lr_mults),
        wd_mults=tuple(tuple(r) for r in config.wd_mults),
    )
    return tx, schedule
