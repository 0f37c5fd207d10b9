"""The training state, its initialisation and the alternating jitted step.

docs/design.md "What a training step does". One step (`make_train_step`) runs
the backbone forward once, keeps its `jax.vjp`, takes one optimiser step of the
modality classifier (MCM) on L_m of the detached pooled features (Eq. 1), then
pulls the gradient of the extractor's loss (Eq. 8, L_e through the updated MCM)
back through the backbone once and takes one optimiser step of the extractor.
The ablation rows are config switches (`config.loss.*`, `config.model.*`). The
loop around the step is `train.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mclnet_jax import errors, losses, optim, sharding
from mclnet_jax.models import layers
from mclnet_jax.models import mclnet as mclnet_model

PyTree = Any
Batch = Mapping[str, jax.Array]
StepFn = Callable[[Any, Batch], tuple[Any, dict[str, jax.Array]]]


# The CLI's error types live in `errors` with their exit codes; these names
# stay for the modules and tests that know them from here.
ConfigurationError = errors.ConfigurationError
NonFiniteLossError = errors.NonFiniteLossError


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs, as one checkpointable pytree.

    Attributes:
      step: int32 scalar, optimiser steps taken.
      params: the extractor's trained parameters {"model": MCLNet params,
        "centers": {"ica": [C, D], "cca": [num_cameras, D]}} (centers only
        when `config.loss.train_centers`).
      batch_stats: MCLNet's BatchNorm statistics.
      opt_state: the extractor's optax state.
      mcm_params, mcm_batch_stats, mcm_opt_state: the modality classifier's.
      frozen_centers: {"ica": ..., "cca": ...} when the centers stay at their
        random N(0, 1) init (the release), else {}.
      rng: uint32[2] key from `config.seed`, unused by the step (the input
        pipeline seeds augmentation by (seed, step)), kept for checkpoints.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    mcm_params: PyTree
    mcm_batch_stats: PyTree
    mcm_opt_state: PyTree
    frozen_centers: PyTree
    rng: jax.Array

    @property
    def centers(self) -> dict[str, jax.Array]:
        return self.params.get("centers", self.frozen_centers)

    def model_variables(self) -> dict[str, PyTree]:
        """The extractor's variables, as `MCLNet.apply` takes them."""
        return {"params": self.params["model"], "batch_stats": self.batch_stats}


RANDOM_INIT = "random"  # config.init.pretrained: explicitly from scratch.


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    """The jnp dtype named by `config.model.dtype`."""
    if config.model.dtype not in mclnet_model.DTYPES:
        raise ConfigurationError(
            f"config.model.dtype must be one of {mclnet_model.DTYPES}, got "
            f"{config.model.dtype!r}."
        )
    return jnp.dtype(config.model.dtype)


def make_model(
    config: ml_collections.ConfigDict, *, num_classes: int
) -> mclnet_model.MCLNet:
    """`MCLNet(num_classes, **config.model)`, the dtype given by name.

    Raises:
      ConfigurationError: a key of `config.model` is not an MCLNet field.
    """
    fields = {f.name for f in dataclasses.fields(mclnet_model.MCLNet)}
    fields -= {"parent", "name", "num_classes"}
    kwargs = dict(config.model.items())
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ConfigurationError(
            f"config.model.{unknown[0]} is not a setting of the model; "
            f"config.model takes {sorted(fields)}."
        )
    kwargs = {
        k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()
    }
    kwargs["dtype"] = compute_dtype(config)
    return mclnet_model.MCLNet(num_classes=num_classes, **kwargs)


def make_modality_classifier(
    config: ml_collections.ConfigDict,
) -> mclnet_model.ModalityClassifier:
    """The MCM's classifier; float32 (float64 in the float64 mode)."""
    return mclnet_model.ModalityClassifier(dtype=compute_dtype(config))


def make_optimizers(config: ml_collections.ConfigDict, *, steps_per_epoch: int):
    """(extractor tx, extractor schedule, MCM tx)."""
    tx, schedule = optim.make(config.optimizer, steps_per_epoch=steps_per_epoch)
    mcm_tx, _ = optim.make(
        config.mcm_optimizer, steps_per_epoch=steps_per_epoch
    )
    return tx, schedule, mcm_tx


def _load_pretrained(config: ml_collections.ConfigDict, variables: PyTree):
    path = config.init.pretrained
    if not path or path == RANDOM_INIT:
        return variables
    # Imported lazily: only runs that start from ImageNet weights need it.
    from mclnet_jax.models import pretrained

    logging.info("Backbone from ImageNet weights %s.", path)
    return pretrained.load_mclnet_backbone(variables, os.path.expanduser(path))


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(
    module: flax.linen.Module, rng: jax.Array, *inputs
) -> PyTree:
    # One jitted function for every module (modules compare by their
    # fields): the trace of a `jax.eval_shape(init_state)` serves the real
    # initialisation that follows it.
    return module.init(rng, *inputs, train=False)


def init_state(
    config: ml_collections.ConfigDict,
    *,
    model: mclnet_model.MCLNet,
    num_classes: int,
    num_cameras: int,
    tx: optax.GradientTransformation,
    mcm_tx: optax.GradientTransformation,
    load_pretrained: bool = True,
) -> TrainState:
    """A fresh state, deterministic from `config.seed`.

    The backbone comes from `config.init.pretrained` when set (not
    "random") and `load_pretrained`. The centers are N(0, 1) as in the
    release, [num_classes, D] for ICA and [num_cameras, D] for CCA, created
    only for the enabled losses.
    """
    rng = jax.random.PRNGKey(config.seed)
    model_rng, mcm_rng, ica_rng, cca_rng, step_rng = jax.random.split(rng, 5)
    h, w = config.data.image_size
    dummy = jnp.zeros((1, h, w, 3), jnp.float32)
    variables = _init_variables(model, model_rng, dummy, dummy)
    if load_pretrained:
        variables = _load_pretrained(config, variables)
    d = model.feature_dim
    param_dtype = layers.param_dtype(model.dtype)
    mcm_vars = _init_variables(
        make_modality_classifier(config),
        mcm_rng,
        jnp.zeros((2, d), param_dtype),
    )

    sizes = {"ica": num_classes, "cca": num_cameras}
    centers = {
        name: jax.random.normal(key, (sizes[name], d), param_dtype)
        for name, key in (("ica", ica_rng), ("cca", cca_rng))
        if config.loss[name]
    }
    params = {"model": variables["params"]}
    frozen = {}
    if config.loss.train_centers and centers:
        params["centers"] = centers
    else:
        frozen = centers
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        mcm_params=mcm_vars["params"],
        mcm_batch_stats=mcm_vars["batch_stats"],
        mcm_opt_state=mcm_tx.init(mcm_vars["params"]),
        frozen_centers=frozen,
        rng=step_rng,
    )


# CAJ's third view (data_pipeline: `TrainAugment.channel_exchange`): the
# visible images again, with their channels exchanged; present only when on.
EXCHANGED = "visible_exchanged"


def _visible_input(batch: Batch) -> jax.Array:
    """The visible stream's input: [visible; exchanged] with CAJ's view.

    As CAJ feeds `cat(visible, exchanged)` to its visible stream: both views
    go through the visible stem, and count as visible for every loss.
    """
    if EXCHANGED not in batch:
        return batch["visible"]
    visible, exchanged = batch["visible"], batch[EXCHANGED]
    if exchanged.shape != visible.shape:
        raise ValueError(
            f"batch[{EXCHANGED!r}] must have the shape of batch['visible'] "
            f"(the same records), got {tuple(exchanged.shape)} and "
            f"{tuple(visible.shape)}."
        )
    return jnp.concatenate([visible, exchanged])


def _concat_labels(batch: Batch):
    visible_labels = batch["visible_labels"]
    visible_cameras = batch["visible_cameras"]
    if EXCHANGED in batch:
        # CAJ repeats the visible labels for the exchanged view (its rows are
        # the visible rows' records); so are their cameras and modality.
        visible_labels = jnp.concatenate([visible_labels, visible_labels])
        visible_cameras = jnp.concatenate([visible_cameras, visible_cameras])
    labels = jnp.concatenate([visible_labels, batch["infrared_labels"]]).astype(
        jnp.int32
    )
    # Cameras are 1-based in the datasets (SYSU 1..6, RegDB 1..2).
    cameras = jnp.concatenate(
        [visible_cameras, batch["infrared_cameras"]]
    ).astype(jnp.int32)
    n_vis, n_ir = visible_labels.shape[0], batch["infrared"].shape[0]
    modality = jnp.concatenate(
        [jnp.zeros((n_vis,), jnp.int32), jnp.ones((n_ir,), jnp.int32)]
    )
    return labels, cameras - 1, modality


def _check_loss_config(lc: ml_collections.ConfigDict) -> str:
    """Validates `config.loss`'s named choices; returns the WRT variant."""
    wrt_variant = lc.wrt_variant
    for name, value, choices in (
        ("triplet", lc.triplet, ("wrt", "hard")),
        ("center_variant", lc.center_variant, ("paper", "release")),
        ("wrt_variant", wrt_variant, losses.WRT_VARIANTS),
    ):
        if value not in choices:
            raise ConfigurationError(
                f"config.loss.{name} must be one of {tuple(choices)}, got "
                f"{value!r}."
            )
    return wrt_variant


def make_train_step(
    config: ml_collections.ConfigDict,
    *,
    model: mclnet_model.MCLNet,
    tx: optax.GradientTransformation,
    schedule: optim.Schedule,
    mcm_tx: optax.GradientTransformation,
) -> StepFn:
    """The (un-jitted) step `(state, batch) -> (state, metrics)`.

    Args:
      config: the run's config (uses `config.loss`).
      model: the extractor.
      tx: the extractor's optimiser.
      schedule: its base learning-rate schedule (logged as "lr").
      mcm_tx: the modality classifier's optimiser.

    Returns:
      A pure function. `batch` holds "visible", "infrared" [P*K, H, W, 3]
      float32 and "visible_labels", "infrared_labels", "visible_cameras",
      "infrared_cameras" [P*K] int, and with CAJ's channel exchange
      "visible_exchanged" [P*K, H, W, 3]: it goes through the visible stem
      with "visible" and takes the visible rows' labels, cameras and
      modality in every loss (docs/training.md "Channel augmentation
      (CAJ)"); `metrics` is a dict of float scalars.
    """
    lc = config.loss
    wrt_variant = _check_loss_config(lc)
    mcm = make_modality_classifier(config)

    def apply_mcm(params, batch_stats, features):
        logits, mutated = mcm.apply(
            {"params": params, "batch_stats": batch_stats},
            features,
            train=True,
            mutable=["batch_stats"],
        )
        return logits, mutated["batch_stats"]

    def train_step(state: TrainState, batch: Batch):
        labels, cameras, modality = _concat_labels(batch)

        # 1. The backbone's forward, once; `backbone_vjp` is its backward.
        def forward(model_params):
            out, mutated = model.apply(
                {"params": model_params, "batch_stats": state.batch_stats},
                _visible_input(batch),
                batch["infrared"],
                train=True,
                mutable=["batch_stats"],
            )
            outs = (out["pool"], out["bn"], out["logits"])
            return outs, mutated["batch_stats"]

        outputs, backbone_vjp, batch_stats = jax.vjp(
            forward, state.params["model"], has_aux=True
        )
        metrics = {}

        # 2. The MCM's step on L_m (Eq. 1); features carry no gradient.
        mcm_params = state.mcm_params
        mcm_batch_stats = state.mcm_batch_stats
        mcm_opt_state = state.mcm_opt_state
        if lc.mcm:
            features = jax.lax.stop_gradient(outputs[0])

            def mcm_loss(params):
                logits, stats = apply_mcm(params, mcm_batch_stats, features)
                loss = losses.modality_classifier_loss(
                    logits=logits, modality=modality
                )
                return loss, (logits, stats)

            (l_m, (m_logits, mcm_batch_stats)), m_grads = jax.value_and_grad(
                mcm_loss, has_aux=True
            )(mcm_params)
            updates, mcm_opt_state = mcm_tx.update(
                m_grads, mcm_opt_state, mcm_params
            )
            mcm_params = optax.apply_updates(mcm_params, updates)
            metrics["loss_mcm"] = l_m
            metrics["mcm_accuracy"] = jnp.mean(
                (jnp.argmax(m_logits, -1) == modality).astype(m_logits.dtype)
            )

        # 3. The extractor's loss (Eq. 8) on the forward's outputs.
        def extractor_loss(outs, centers):
            pool, bn, logits = outs
            terms = {}
            terms["loss_id"] = losses.identity_loss(
                logits=logits, labels=labels, label_smoothing=lc.label_smoothing
            )
            acc = None
            if lc.triplet == "wrt":
                terms["loss_triplet"], acc = (
                    losses.wrt_triplet_loss_and_accuracy(
                        features=pool, labels=labels, variant=wrt_variant
                    )
                )
            else:
                terms["loss_triplet"] = losses.hard_triplet_loss(
                    features=pool, labels=labels, margin=lc.triplet_margin
                )
            total = terms["loss_id"] + terms["loss_triplet"]
            if lc.mcm:
                # Through the updated MCM (Eq. 3), which stays fixed here:
                # only (outs, centers) are differentiated. Its BatchNorm
                # normalises with this batch's statistics, as in training.
                m_logits, _ = apply_mcm(mcm_params, mcm_batch_stats, pool)
                terms["loss_confusion"] = losses.modality_confusion_loss(
                    logits=m_logits
                )
                total += lc.confusion_weight * terms["loss_confusion"]
            for name, target in (("ica", labels), ("cca", cameras)):
                if lc[name]:
                    terms[f"loss_{name}"] = losses.center_aggregation_loss(
                        features=bn,
                        labels=target,
                        centers=centers[name],
                        sigma=lc.sigma,
                        rho=lc.rho,
                        variant=lc.center_variant,
                    )
                    total += lc.center_weight * terms[f"loss_{name}"]
            terms["loss"] = total
            return total, (terms, acc)

        (_, (terms, acc)), (g_outputs, g_centers) = jax.value_and_grad(
            extractor_loss, argnums=(0, 1), has_aux=True
        )(outputs, state.centers)
        (g_model,) = backbone_vjp(g_outputs)
        grads = {"model": g_model}
        if "centers" in state.params:
            grads["centers"] = g_centers
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        metrics.update(terms)
        if acc is not None:
            metrics["triplet_accuracy"] = acc
        metrics["lr"] = schedule(state.step)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            mcm_params=mcm_params,
            mcm_batch_stats=mcm_batch_stats,
            mcm_opt_state=mcm_opt_state,
        )
        return new_state, metrics

    return train_step


def jit_train_step(train_step: StepFn, *, mesh, state_sharding) -> StepFn:
    """`jax.jit` with the state replicated, the batch sharded, state donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Raises `NonFiniteLossError` naming each NaN/inf metric."""
    bad = {
        k: float(v)
        for k, v in metrics.items()
        if not np.isfinite(np.asarray(v)).all()
    }
    if bad:
        raise NonFiniteLossError(
            f"Non-finite values at step {step}: {bad}. Training stopped; "
            "this state is not checkpointed (the last checkpoint is the last "
            "finite one). Lower the learning rate (config.optimizer.lr), "
            "check the data, or start from ImageNet weights "
            "(config.init.pretrained): the release's lr diverges from random "
            "initialisation."
        )
