"""MCLNet training: state, the alternating jitted step, the training loop.

One step (`make_train_step`) does, inside a single `jax.jit`:

1. the extractor's forward pass ONCE on concat([visible, infrared]), kept as
   a `jax.vjp` closure -> pool [N, D], bn [N, D], logits [N, C];
2. one optimiser step of the modality confusion module (MCM) on L_m (Eq. 1)
   of `stop_gradient(pool)`: its gradient reaches the MCM only (the release
   also back-propagated it through the whole backbone, then discarded it);
3. the extractor's loss (Eq. 8) as a function of (pool, bn, logits, centers):
   L_id(logits) + L_triplet(pool) + L_e(pool through the freshly UPDATED,
   fixed MCM, Eq. 3) + lambda (L_ica(bn, identities) + L_cca(bn, cameras));
   its gradient w.r.t. those outputs is pulled back through the backbone
   ONCE with the vjp closure, then one optimiser step of the extractor.

The ablation rows of the paper's Tables 1-3 are config switches
(`config.loss.*`, `config.model.*`, `config.data.random_erasing`), see
`configs/default.py`.

The loop (`train_and_evaluate`) shards the global batch over a ("data",)
mesh, logs a progress line and TensorBoard scalars, saves orbax checkpoints
(periodic, final, on SIGTERM; never a non-finite state), resumes from the
latest one with the data stream continuing exactly, keeps the best
checkpoint by the validation split (never the test split) in its own
directory, and finally evaluates on the test protocol, writing a results
table and JSON into the workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mclnet_jax import checkpointing, losses, optim, sharding
from mclnet_jax.models import layers
from mclnet_jax.models import mclnet as mclnet_model

PyTree = Any
Batch = Mapping[str, jax.Array]


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
      rng: uint32[2] PRNG key from `config.seed`. The step itself draws no
        random numbers (the model has no dropout; augmentation happens in the
        input pipeline, seeded by (seed, step)), so `train_step` takes
        `(state, batch)`; the key is kept so that stochastic layers can use
        `fold_in(rng, step)` without changing the checkpoint format.
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


# ---------------------------------------------------------------------------
# Models, optimisers and the initial state.
# ---------------------------------------------------------------------------


_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float64": jnp.float64,
}
# The release's learning rate diverges from random initialisation for these.
_PRETRAINED_REQUIRED_DEPTH = 50
RANDOM_INIT = "random"


def _dtype(config):
    dtype = _DTYPES.get(config.model.dtype)
    if dtype is None:
        raise ConfigurationError(
            f"config.model.dtype must be one of {sorted(_DTYPES)}, got "
            f"{config.model.dtype!r}."
        )
    return dtype


def configure_precision(config) -> None:
    """Turns on 64-bit JAX for `config.model.dtype == "float64"`.

    The float64 mode exists for exact comparisons with a PyTorch reference;
    it is never a training setting. `jax_enable_x64` is process-wide.
    """
    if _dtype(config) == jnp.float64 and not jax.config.jax_enable_x64:
        logging.warning(
            "config.model.dtype=float64: enabling jax_enable_x64 "
            "(parity checks only; slow)."
        )
        jax.config.update("jax_enable_x64", True)


def check_initialisation(config) -> None:
    """Refuses a deep network without ImageNet weights unless asked for.

    Raises:
      ConfigurationError: depth >= 50 and `config.model.pretrained` unset.
    """
    m = config.model
    if m.depth < _PRETRAINED_REQUIRED_DEPTH or m.get("pretrained"):
        return
    raise ConfigurationError(
        f"config.model.pretrained is not set for a ResNet-{m.depth}. The "
        "release trains from ImageNet weights, and its learning rate "
        "diverges from random initialisation within a few steps. Save "
        "torchvision's ResNet-50 as safetensors once (needs torch and "
        "torchvision):\n"
        '  python -c "import torchvision, safetensors.torch as st; '
        "st.save_file(torchvision.models.resnet50(weights='IMAGENET1K_V1')"
        ".state_dict(), 'resnet50.safetensors')\"\n"
        "then pass --config.model.pretrained=/path/to/resnet50.safetensors. "
        f"To train from scratch anyway, pass "
        f"--config.model.pretrained={RANDOM_INIT}."
    )


def make_model(config, *, num_classes: int) -> mclnet_model.MCLNet:
    """The extractor described by `config.model`."""
    m = config.model
    dtype = _dtype(config)
    return mclnet_model.MCLNet(
        num_classes=num_classes,
        depth=m.depth,
        width_multiplier=m.width_multiplier,
        last_stride=m.last_stride,
        non_local_counts=tuple(m.non_local_counts),
        non_local_inter=m.non_local_inter,
        pooling=m.pooling,
        dtype=dtype,
    )


def make_modality_classifier(config) -> mclnet_model.ModalityClassifier:
    """The MCM's classifier; float32 (float64 in the float64 mode)."""
    return mclnet_model.ModalityClassifier(dtype=_dtype(config))


def make_optimizers(config, *, steps_per_epoch: int):
    """(extractor tx, extractor schedule, MCM tx)."""
    tx, schedule = optim.make(config.optimizer, steps_per_epoch=steps_per_epoch)
    mcm_tx, _ = optim.make(
        config.mcm_optimizer, steps_per_epoch=steps_per_epoch
    )
    return tx, schedule, mcm_tx


def _load_pretrained(config, variables: PyTree) -> PyTree:
    path = config.model.get("pretrained")
    if not path or path == RANDOM_INIT:
        return variables
    # Imported lazily: only runs that start from ImageNet weights need it.
    from mclnet_jax.models import pretrained  # pylint: disable=g-import-not-at-top

    logging.info("Backbone from ImageNet weights %s.", path)
    return pretrained.load_mclnet_backbone(variables, os.path.expanduser(path))


def init_state(
    config,
    *,
    model: mclnet_model.MCLNet,
    num_classes: int,
    num_cameras: int,
    tx: optax.GradientTransformation,
    mcm_tx: optax.GradientTransformation,
    load_pretrained: bool = True,
) -> TrainState:
    """A fresh state, deterministic from `config.seed`.

    The backbone comes from `config.model.pretrained` (ImageNet weights) when
    set (not "random") and `load_pretrained`. Centers are N(0, 1) as in the
    release:
    [num_classes, D] for ICA and [num_cameras, D] for CCA, created only for
    the enabled losses.
    """
    rng = jax.random.PRNGKey(config.seed)
    model_rng, mcm_rng, ica_rng, cca_rng, step_rng = jax.random.split(rng, 5)
    h, w = config.data.image_size
    dummy = jnp.zeros((1, h, w, 3), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(
        model_rng, dummy, dummy
    )
    if load_pretrained:
        variables = _load_pretrained(config, variables)
    model_params = variables["params"]
    d = model.feature_dim
    mcm = make_modality_classifier(config)
    param_dtype = layers.param_dtype(model.dtype)
    mcm_vars = jax.jit(functools.partial(mcm.init, train=False))(
        mcm_rng, jnp.zeros((2, d), param_dtype)
    )

    centers = {}
    if config.loss.ica:
        centers["ica"] = jax.random.normal(
            ica_rng, (num_classes, d), param_dtype
        )
    if config.loss.cca:
        centers["cca"] = jax.random.normal(
            cca_rng, (num_cameras, d), param_dtype
        )
    params = {"model": model_params}
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


# ---------------------------------------------------------------------------
# The training step.
# ---------------------------------------------------------------------------


def _concat_labels(batch: Batch):
    labels = jnp.concatenate(
        [batch["visible_labels"], batch["infrared_labels"]]
    ).astype(jnp.int32)
    # Cameras are 1-based in the datasets (SYSU 1..6, RegDB 1..2).
    cameras = jnp.concatenate(
        [batch["visible_cameras"], batch["infrared_cameras"]]
    ).astype(jnp.int32)
    n_vis = batch["visible"].shape[0]
    n_ir = batch["infrared"].shape[0]
    modality = jnp.concatenate(
        [jnp.zeros((n_vis,), jnp.int32), jnp.ones((n_ir,), jnp.int32)]
    )
    return labels, cameras - 1, modality


def make_train_step(
    config,
    *,
    model: mclnet_model.MCLNet,
    tx: optax.GradientTransformation,
    schedule: optim.Schedule,
    mcm_tx: optax.GradientTransformation,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The (un-jitted) step `(state, batch) -> (state, metrics)`.

    Args:
      config: the run's config (uses `config.loss`).
      model: the extractor.
      tx, schedule: the extractor's optimiser and its base-lr schedule.
      mcm_tx: the modality classifier's optimiser.

    Returns:
      A pure function. `batch` holds "visible", "infrared" [P*K, H, W, 3]
      float32 and "visible_labels", "infrared_labels", "visible_cameras",
      "infrared_cameras" [P*K] int; `metrics` is a dict of float32 scalars.
    """
    lc = config.loss
    if lc.triplet not in ("wrt", "hard"):
        raise ValueError(
            f"config.loss.triplet must be 'wrt' or 'hard', got {lc.triplet!r}."
        )
    if lc.center_variant not in ("paper", "release"):
        raise ValueError(
            "config.loss.center_variant must be 'paper' or 'release', got "
            f"{lc.center_variant!r}."
        )
    wrt_variant = lc.get("wrt_variant", "stable")
    if wrt_variant not in losses.WRT_VARIANTS:
        raise ValueError(
            f"config.loss.wrt_variant must be one of {losses.WRT_VARIANTS}, "
            f"got {wrt_variant!r}."
        )
    mcm = make_modality_classifier(config)

    def train_step(state: TrainState, batch: Batch):
        labels, cameras, modality = _concat_labels(batch)

        # 1. The backbone's forward, once; `backbone_vjp` is its backward.
        def forward(model_params):
            out, mutated = model.apply(
                {"params": model_params, "batch_stats": state.batch_stats},
                batch["visible"],
                batch["infrared"],
                train=True,
                mutable=["batch_stats"],
            )
            return (out["pool"], out["bn"], out["logits"]), mutated[
                "batch_stats"
            ]

        outputs, backbone_vjp, batch_stats = jax.vjp(
            forward, state.params["model"], has_aux=True
        )
        pool = outputs[0]
        metrics = {}

        # 2. The MCM's step on L_m (Eq. 1); features carry no gradient.
        mcm_params = state.mcm_params
        mcm_batch_stats = state.mcm_batch_stats
        mcm_opt_state = state.mcm_opt_state
        if lc.mcm:
            features = jax.lax.stop_gradient(pool)

            def mcm_loss(params):
                logits, mutated = mcm.apply(
                    {"params": params, "batch_stats": mcm_batch_stats},
                    features,
                    train=True,
                    mutable=["batch_stats"],
                )
                loss = losses.modality_classifier_loss(
                    logits=logits, modality=modality
                )
                return loss, (logits, mutated["batch_stats"])

            (l_m, (m_logits, mcm_batch_stats)), m_grads = jax.value_and_grad(
                mcm_loss, has_aux=True
            )(mcm_params)
            updates, mcm_opt_state = mcm_tx.update(
                m_grads, mcm_opt_state, mcm_params
            )
            mcm_params = optax.apply_updates(mcm_params, updates)
            metrics["loss_mcm"] = l_m
            metrics["mcm_accuracy"] = jnp.mean(
                (jnp.argmax(m_logits, -1) == modality).astype(jnp.float32)
            )

        # 3. The extractor's loss (Eq. 8) on the forward's outputs.
        def extractor_loss(outs, centers):
            pool, bn, logits = outs
            terms = {}
            terms["loss_id"] = losses.identity_loss(
                logits=logits, labels=labels, label_smoothing=lc.label_smoothing
            )
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
                acc = None
            total = terms["loss_id"] + terms["loss_triplet"]
            if lc.mcm:
                # Through the updated MCM (Eq. 3), which stays fixed here:
                # only (outs, centers) are differentiated. Its BatchNorm
                # normalises with this batch's statistics, as in training.
                m_logits, _ = mcm.apply(
                    {"params": mcm_params, "batch_stats": mcm_batch_stats},
                    pool,
                    train=True,
                    mutable=["batch_stats"],
                )
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

        centers = state.centers
        trained_centers = "centers" in state.params
        (_, (terms, acc)), (g_outputs, g_centers) = jax.value_and_grad(
            extractor_loss, argnums=(0, 1), has_aux=True
        )(outputs, centers)
        (g_model,) = backbone_vjp(g_outputs)
        grads = {"model": g_model}
        if trained_centers:
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


def jit_train_step(train_step, *, mesh, state_sharding):
    """`jax.jit` with the state replicated, the batch sharded, state donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=0,
    )


@jax.jit
def _tree_all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class ConfigurationError(ValueError):
    """A config that cannot run as asked (the CLI exits with code 2)."""


class NonFiniteLossError(FloatingPointError):
    """Raised when training produced a NaN/inf loss or parameter."""


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
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
            "(config.model.pretrained): the release's lr diverges from random "
            "initialisation."
        )


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no handler (tests).
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del frame
        logging.warning("Signal %d: saving a checkpoint and exiting.", signum)
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _agreed(flag: bool) -> bool:
    """True if any process got the signal, so all save and stop together."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def progress_line(
    *,
    step: int,
    total_steps: int,
    images_per_sec: float,
    metrics: Mapping[str, float],
) -> str:
    """'step 120/2000 | 85.3 img/s | ETA 0:03:12 | loss 3.21 loss_id ...'."""
    eta = (
        _format_eta((total_steps - step) * metrics["_sec_per_step"])
        if metrics.get("_sec_per_step")
        else "?"
    )
    shown = " ".join(
        f"{k} {v:.4g}"
        for k, v in sorted(metrics.items())
        if not k.startswith("_")
    )
    return (
        f"step {step}/{total_steps} | {images_per_sec:.1f} img/s | "
        f"ETA {eta} | {shown}"
    )


@dataclasses.dataclass
class _Run:
    """What both `train_and_evaluate` and `evaluate_only` set up."""

    data: Any
    mesh: Any
    model: mclnet_model.MCLNet
    tx: optax.GradientTransformation
    schedule: optim.Schedule
    mcm_tx: optax.GradientTransformation
    steps_per_epoch: int
    state_sharding: Any
    checkpointer: checkpointing.Checkpointer

    def restore_or_init(
        self, config, *, which: str = "latest", init: bool = True
    ):
        """The checkpointed state (`which`), else a fresh one (or None)."""
        make = functools.partial(
            init_state,
            config,
            model=self.model,
            num_classes=self.data.num_classes,
            num_cameras=self.data.num_cameras,
            tx=self.tx,
            mcm_tx=self.mcm_tx,
        )
        # Shapes only: restoring needs no initialisation compute.
        abstract = jax.eval_shape(
            functools.partial(make, load_pretrained=False)
        )
        restore = (
            self.checkpointer.restore_best
            if which == "best"
            else self.checkpointer.restore_latest
        )
        state = restore(abstract, self.state_sharding)
        if state is None and init:
            state = jax.device_put(make(), self.state_sharding)
        return state


def _setup(config, workdir: str) -> _Run:
    # Imported here: the data stack (TensorFlow) is only needed for a run.
    from mclnet_jax import train_data  # pylint: disable=g-import-not-at-top

    configure_precision(config)
    sharding.maybe_initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    data = train_data.prepare(config, workdir)
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(
        per_modality_batch=config.data.num_identities
        * config.data.num_instances,
        mesh=mesh,
    )
    steps_per_epoch = config.data.steps_per_epoch or data.steps_per_epoch
    model = make_model(config, num_classes=data.num_classes)
    tx, schedule, mcm_tx = make_optimizers(
        config, steps_per_epoch=steps_per_epoch
    )
    replicated = sharding.replicated(mesh)
    make = functools.partial(
        init_state,
        config,
        model=model,
        num_classes=data.num_classes,
        num_cameras=data.num_cameras,
        tx=tx,
        mcm_tx=mcm_tx,
        load_pretrained=False,
    )
    state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(make))
    checkpointer = checkpointing.Checkpointer(
        workdir,
        keep=config.checkpoint.keep,
        best_metric=config.checkpoint.get("best_metric"),
    )
    return _Run(
        data=data,
        mesh=mesh,
        model=model,
        tx=tx,
        schedule=schedule,
        mcm_tx=mcm_tx,
        steps_per_epoch=steps_per_epoch,
        state_sharding=state_sharding,
        checkpointer=checkpointer,
    )


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains per `config`, checkpoints into `workdir`, evaluates at the end.

    Resumes from the latest checkpoint in `workdir/checkpoints` if present;
    the data stream continues at the restored step.

    Returns:
      The final results dict (also written to `workdir/results.json`), or
      {"stopped_at_step": n} after a SIGTERM.

    Raises:
      NonFiniteLossError: a loss or parameter became NaN/inf.
      train_data.DatasetUnavailableError: the dataset folder is missing.
      ConfigurationError: e.g. a ResNet-50 without `model.pretrained`
        (checked before any data is built).
    """
    check_initialisation(config)
    run = _setup(config, workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    total_steps = config.num_epochs * run.steps_per_epoch
    if config.get("max_steps"):
        total_steps = min(total_steps, config.max_steps)
    state = run.restore_or_init(config)
    start_step = int(state.step)
    logging.info(
        "%s at step %d of %d (%d steps per epoch).",
        "Resuming" if start_step else "Starting",
        start_step,
        total_steps,
        run.steps_per_epoch,
    )

    step_fn = jit_train_step(
        make_train_step(
            config,
            model=run.model,
            tx=run.tx,
            schedule=run.schedule,
            mcm_tx=run.mcm_tx,
        ),
        mesh=run.mesh,
        state_sharding=run.state_sharding,
    )
    train_iter = run.data.train_iterator(start_step=start_step)
    writer = _SummaryWriter(os.path.join(workdir, "tensorboard"))
    images_per_step = 2 * config.data.num_identities * config.data.num_instances
    ckpt = run.checkpointer
    val_every = config.get("val_every_steps") or 0

    metrics = None
    logged = {}  # The last logged training metrics, for results.json.
    # Closing the stream on any exit stops its prefetch threads, which could
    # otherwise keep a failed run from exiting.
    with _Preemption() as preemption, contextlib.closing(train_iter):
        t_last, step_last = time.perf_counter(), start_step
        for step in range(start_step, total_steps):
            batch = sharding.global_batch(next(train_iter), run.mesh)
            state, metrics = step_fn(state, batch)
            done = step + 1
            if done % config.log_every_steps == 0 or done == total_steps:
                metrics = {
                    k: float(v) for k, v in jax.device_get(metrics).items()
                }
                check_finite(metrics, done)
                logged = {"step": done, **metrics}
                sec_per_step = (time.perf_counter() - t_last) / max(
                    done - step_last, 1
                )
                t_last, step_last = time.perf_counter(), done
                rate = images_per_step / sec_per_step
                writer.scalars(done, {**metrics, "images_per_sec": rate})
                logging.info(
                    "%s",
                    progress_line(
                        step=done,
                        total_steps=total_steps,
                        images_per_sec=rate,
                        metrics={**metrics, "_sec_per_step": sec_per_step},
                    ),
                )
            if val_every and run.data.has_val and done % val_every == 0:
                # Model selection on the validation identities only.
                val = run.data.evaluate(
                    run.model, state, split=config.data.val_split
                ).summary()
                writer.scalars(
                    done, {f"val/{k}": v for k, v in _flat_scalars(val).items()}
                )
                ckpt.save_best(done, state, val)
            stop = _agreed(preemption.requested)
            if (
                done % config.checkpoint.every_steps == 0
                or done == total_steps
                or stop
            ):
                _save_checked(ckpt, done, state, metrics)
            if stop:
                ckpt.wait()
                writer.flush()
                logging.warning(
                    "Stopped at step %d on SIGTERM; rerun the "
                    "same command to resume.",
                    done,
                )
                return {"stopped_at_step": done}
        ckpt.wait()

    results = run.data.evaluate(run.model, state, split=config.data.test_split)
    writer.scalars(
        int(state.step),
        {f"test/{k}": v for k, v in _flat_scalars(results.summary()).items()},
    )
    writer.flush()
    out = write_results(
        workdir, results, step=int(state.step), train_metrics=logged
    )
    if config.eval.get("raw_pixel_baseline"):
        write_results(
            workdir,
            run.data.raw_pixel_baseline(config.data.test_split),
            step=0,
            name="results_raw_pixels",
        )
    if config.eval.get("figures"):
        _write_figures(config, workdir, run, state, results)
    return out


def _write_figures(
    config, workdir: str, run: _Run, state: TrainState, results
) -> None:
    """Figures into workdir/figures; a failure there never fails the run."""
    from mclnet_jax import analysis  # pylint: disable=g-import-not-at-top

    try:
        analysis.write_figures(
            config, workdir, model=run.model, state=state, results=results
        )
    except Exception:  # pylint: disable=broad-except
        logging.exception(
            "Drawing the figures failed (the results are "
            "saved); retry with --mode=analyze."
        )


def _release_state(config, run: _Run) -> TrainState:
    """A fresh state whose extractor is `config.model.release_checkpoint`.

    Raises:
      ConfigurationError: the file is missing, or the checkpoint's model
        (depth, non-local blocks, identities, ...) is not the configured one;
        the message names the overrides that fix it.
    """
    # Imported lazily: only this path reads release checkpoints.
    from mclnet_jax.models import release  # pylint: disable=g-import-not-at-top

    path = os.path.expanduser(config.model.release_checkpoint)
    try:
        state_dict = release.read(path)
        found = release.describe_embed_net(state_dict)
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"config.model.release_checkpoint: {e}") from e
    m = config.model
    configured = {
        "depth": m.depth,
        "non_local_counts": tuple(m.non_local_counts),
        "non_local_inter": (
            m.non_local_inter if any(m.non_local_counts) else None
        ),
        "feature_dim": run.model.feature_dim,
    }
    wrong = [
        f"{k}: checkpoint {found[k]!r}, config {v!r}"
        for k, v in configured.items()
        if v is not None and found[k] != v
    ]
    if wrong:
        raise ConfigurationError(
            f"The release checkpoint {path} is not the configured model ("
            + "; ".join(wrong)
            + "). Override the config to match, e.g. "
            f"--config.model.depth={found['depth']} "
            f"--config.model.width_multiplier={found['width_multiplier']:g} "
            f"--config.model.non_local_counts='{found['non_local_counts']}'"
            + (
                f" --config.model.non_local_inter={found['non_local_inter']}"
                if found["non_local_inter"]
                else ""
            )
            + "."
        )
    if found["num_classes"] != run.data.num_classes:
        raise ConfigurationError(
            f"The release checkpoint {path} classifies "
            f"{found['num_classes']} identities, but the training data of "
            f"this config has {run.data.num_classes}: evaluate it with the "
            f"config of the dataset it was trained on (configs/sysu.py: "
            f"SYSU-MM01, configs/regdb.py: RegDB, same trial)."
        )
    # Shapes only: evaluation reads nothing but the extractor, so the rest
    # of the state (MCM, optimiser, centers) is zeros and nothing is
    # initialised or compiled for it.
    abstract = jax.eval_shape(
        functools.partial(
            init_state,
            config,
            model=run.model,
            num_classes=run.data.num_classes,
            num_cameras=run.data.num_cameras,
            tx=run.tx,
            mcm_tx=run.mcm_tx,
            load_pretrained=False,
        )
    )
    try:
        variables = release.load_embed_net(
            {
                "params": abstract.params["model"],
                "batch_stats": abstract.batch_stats,
            },
            state_dict,
        )
    except ValueError as e:
        raise ConfigurationError(f"config.model.release_checkpoint: {e}") from e
    logging.info("Extractor from the release checkpoint %s.", path)
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    state = state.replace(
        params={**state.params, "model": variables["params"]},
        batch_stats=variables["batch_stats"],
    )
    return jax.device_put(state, run.state_sharding)


def evaluate_only(
    config, workdir: str, *, which: str = "latest"
) -> dict[str, Any]:
    """Restores the latest (or best) checkpoint and runs the test protocol.

    Writes `results_<which>.json` / `.txt` into the workdir. With
    `config.model.release_checkpoint` set, evaluates that checkpoint of the
    authors' release instead (`which` must stay "latest") and writes
    `results_release.{json,txt}` (step 0).
    """
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
    if config.model.get("release_checkpoint"):
        if which != "latest":
            raise ConfigurationError(
                "--checkpoint=best does not apply to "
                "config.model.release_checkpoint; drop one of them."
            )
        run = _setup(config, workdir)
        state = _release_state(config, run)
        results = run.data.evaluate(
            run.model, state, split=config.data.test_split
        )
        return write_results(workdir, results, step=0, name="results_release")
    run = _setup(config, workdir)
    state = run.restore_or_init(config, which=which, init=False)
    if state is None:
        raise FileNotFoundError(
            f"No {which} checkpoint under {run.checkpointer.directory(which)}"
            "; train first with --mode=train and the same --workdir"
            + (
                " and a validation split (config.data.val_split, "
                "config.checkpoint.best_metric)"
                if which == "best"
                else ""
            )
            + "."
        )
    results = run.data.evaluate(run.model, state, split=config.data.test_split)
    return write_results(
        workdir, results, step=int(state.step), name=f"results_{which}"
    )


def _save_checked(ckpt, step, state, metrics) -> None:
    """Saves only a finite state (a NaN state must never be resumed from)."""
    if metrics is not None:
        check_finite(jax.device_get(metrics), step)
    if not bool(_tree_all_finite(state.params)):
        raise NonFiniteLossError(
            f"Non-finite parameters at step {step}; not checkpointed."
        )
    ckpt.save(step, state)


def _flat_scalars(tree, prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1.0}} -> {"a/b": 1.0}; non-scalar leaves are skipped."""
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flat_scalars(v, f"{prefix}{k}/"))
    elif isinstance(tree, (int, float, np.number)) and not isinstance(
        tree, bool
    ):
        out[prefix.rstrip("/")] = float(tree)
    return out


def write_results(
    workdir: str,
    results,
    *,
    step: int,
    name: str = "results",
    train_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Writes `<name>.json` (per trial, mean, std) and `<name>.txt` (table).

    Args:
      workdir: output folder.
      results: an `evaluate.EvaluationResults`.
      step: the training step the model was taken at.
      name: file stem.
      train_metrics: the last logged training metrics of this process's run
        (empty when it resumed at the end).

    Returns:
      The JSON dict: {"step", "summary": {protocol: {feature: {"mean",
      "std"}}}, "results": per-trial details, "train_metrics"}.
    """
    out = {
        "step": step,
        "summary": results.summary(),
        "results": results.to_dict(),
        "train_metrics": dict(train_metrics or {}),
    }
    table = results.table()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"{name}.json"), "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        with open(os.path.join(workdir, f"{name}.txt"), "w") as f:
            f.write(f"step {step}\n{table}\n")
    # The evaluator has logged the table already.
    logging.info(
        "Results at step %d written to %s",
        step,
        os.path.join(workdir, name + ".{json,txt}"),
    )
    return out


class _SummaryWriter:
    """TensorBoard scalars from process 0 (tf.summary event files)."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            import tensorflow as tf  # pylint: disable=g-import-not-at-top

            self._tf = tf
            self._writer = tf.summary.create_file_writer(logdir)

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        with self._writer.as_default():
            for k, v in scalars.items():
                self._tf.summary.scalar(k, v, step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
