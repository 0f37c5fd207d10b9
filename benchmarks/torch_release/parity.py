"""Our jitted training step against the PyTorch release step, side by side.

Both sides start from the same weights (moved with
`mclnet_jax.models.release`) and see the same batches; after the steps the
torch state (parameters, BatchNorm statistics, SGD momentum buffers) is
moved back into our variable tree with `release.load_embed_net` /
`release.load_modality_classifier` and compared leaf by leaf. Used by
`tests/test_release_step_parity.py` (a tiny setting, asserted) and
`benchmarks/step_parity.py` (any size, printed).

Deviations:
- loss: |ours - torch| / |torch|, per loss term and step.
- per tensor: max|ours - torch| / max|torch_final - initial|, the deviation
  as a fraction of that tensor's total update over the steps (for momentum
  buffers, initial = 0).
- global: ||ours - torch||_2 / ||torch_final - initial||_2 over all trained
  tensors (extractor and MCM parameters) together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from benchmarks.torch_release import network, step
from mclnet_jax import optim, train_step
from mclnet_jax.configs import sysu
from mclnet_jax.models import release

LOSS_NAMES = (
    "loss",
    "loss_id",
    "loss_triplet",
    "loss_confusion",
    "loss_mcm",
    "loss_ica",
    "loss_cca",
)
GROUPS = (
    "params",
    "batch_stats",
    "momentum",
    "mcm_params",
    "mcm_batch_stats",
    "mcm_momentum",
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """The network and batch of a comparison.

    `feature_scale` multiplies the output BatchNorms of layer4's blocks (a
    weight choice, the same on both sides; ReLU-exact) so that pool
    distances reach those of trained 2048-d features. sigma and rho are
    the release's scaled by D / 2048. The release's warm-up schedule runs
    with one step per epoch, so the lr changes every step.
    """

    depth: int = 18
    width_multiplier: float = 1 / 4
    non_local_counts: tuple[int, ...] = (0, 1, 1, 0)
    pooling: str = "gem"
    height: int = 32
    width: int = 16
    num_identities: int = 2
    num_instances: int = 4
    num_classes: int = 6
    num_cameras: int = 6
    base_lr: float = 0.1
    mcm_lr: float = 0.1
    feature_scale: float = 2.0
    kernels: str = "auto"

    @property
    def feature_dim(self) -> int:
        return network.jax_resnet.feature_dim(self.depth, self.width_multiplier)


def make_config(setting: Setting, *, dtype: str, wrt_variant: str):
    """Our config for `setting`: the release's step in `dtype`."""
    config = sysu.get_config()  # The release's training, changed below.
    config.model.depth = setting.depth
    config.model.width_multiplier = setting.width_multiplier
    config.model.non_local_counts = setting.non_local_counts
    config.model.non_local_inter = 1
    config.model.pooling = setting.pooling
    config.model.last_stride = 1
    config.model.dtype = dtype
    config.model.kernels = setting.kernels
    config.init.pretrained = "random"
    config.data.image_size = (setting.height, setting.width)
    config.data.num_identities = setting.num_identities
    config.data.num_instances = setting.num_instances
    config.loss.wrt_variant = wrt_variant
    config.loss.center_variant = "release"
    config.loss.train_centers = False
    scale = setting.feature_dim / 2048
    config.loss.sigma = 8.0 * scale
    config.loss.rho = 4500.0 * scale
    config.optimizer.lr = setting.base_lr
    config.optimizer.schedule.kind = "epochs"
    config.optimizer.schedule.warmup_epochs = 10
    config.mcm_optimizer.lr = setting.mcm_lr
    return config


def _flat(tree, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}/{optim.path_str(p)}": np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _trace(opt_state):
    """The momentum buffers (optax.trace's state) of our SGD."""
    found = [
        s
        for s in jax.tree.leaves(
            opt_state, is_leaf=lambda s: isinstance(s, optax.TraceState)
        )
        if isinstance(s, optax.TraceState)
    ]
    assert len(found) == 1, opt_state
    return found[0].trace


def _ours_flat(state) -> dict[str, np.ndarray]:
    out = {}
    out.update(_flat(state.params["model"], "params"))
    out.update(_flat(state.batch_stats, "batch_stats"))
    out.update(_flat(_trace(state.opt_state)["model"], "momentum"))
    out.update(_flat(state.mcm_params, "mcm_params"))
    out.update(_flat(state.mcm_batch_stats, "mcm_batch_stats"))
    out.update(_flat(_trace(state.mcm_opt_state), "mcm_momentum"))
    return out


def _numpy_state_dict(module) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().copy()
        for k, v in module.state_dict().items()
    }


def _momentum_state_dict(module, opt) -> dict[str, np.ndarray]:
    """The module's state dict with each parameter replaced by its buffer.

    Parameters without a buffer (never given a gradient: the release's
    unused copies, map2) become NaN, so a buffer missing where our tree
    expects one shows up as NaN; `bottleneck.bias` (frozen) stays 0.
    """
    out = _numpy_state_dict(module)
    for name, p in module.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().cpu().numpy().copy()
        elif name != release.BNNECK_BIAS:
            out[name] = np.full(out[name].shape, np.nan, out[name].dtype)
    return out


def _torch_flat(
    net, mcm, net_opt, mcm_opt, embed_template, mcm_template
) -> dict[str, np.ndarray]:
    """The torch state in our variable tree, named like `_ours_flat`."""
    variables = release.load_embed_net(embed_template, _numpy_state_dict(net))
    momentum = release.load_embed_net(
        embed_template, _momentum_state_dict(net, net_opt)
    )["params"]
    mcm_vars = release.load_modality_classifier(
        mcm_template, _numpy_state_dict(mcm)
    )
    mcm_momentum = release.load_modality_classifier(
        mcm_template, _momentum_state_dict(mcm, mcm_opt)
    )["params"]
    out = {}
    out.update(_flat(variables["params"], "params"))
    out.update(_flat(variables["batch_stats"], "batch_stats"))
    out.update(_flat(momentum, "momentum"))
    out.update(_flat(mcm_vars["params"], "mcm_params"))
    out.update(_flat(mcm_vars["batch_stats"], "mcm_batch_stats"))
    out.update(_flat(mcm_momentum, "mcm_momentum"))
    return out


def _scale_layer4_outputs(params, factor: float):
    """Scales the last BatchNorm of each layer4 block and its downsample
    (block outputs x factor, ReLU-exact)."""
    params = jax.tree.map(lambda x: x, params)  # A copy of the dict tree.
    for block in params["layer4"].values():
        last = max(k for k in block if k.startswith("bn"))  # bn2 or bn3.
        for bn in (last, "downsample_bn"):
            if bn in block:
                block[bn] = {k: v * factor for k, v in block[bn].items()}
    return params


def _to_torch(x: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).to(dtype)


def initial_state(setting: Setting):
    """Our initial state on the host, in float64 (a float32 run casts it),
    with layer4's outputs scaled by `setting.feature_scale`."""
    with jax.enable_x64(True):
        config = make_config(setting, dtype="float64", wrt_variant="release")
        model = train_step.make_model(config, num_classes=setting.num_classes)
        tx, _, mcm_tx = train_step.make_optimizers(config, steps_per_epoch=1)
        state = train_step.init_state(
            config,
            model=model,
            num_classes=setting.num_classes,
            num_cameras=setting.num_cameras,
            tx=tx,
            mcm_tx=mcm_tx,
            load_pretrained=False,
        )
        assert "centers" not in state.params  # Frozen, as released.
        params = {
            "model": _scale_layer4_outputs(
                state.params["model"], setting.feature_scale
            )
        }
        return jax.device_get(state.replace(params=params))


def _cast(tree, dtype):
    """Floating leaves to `dtype` (as JAX arrays), others unchanged."""
    return jax.tree.map(
        lambda x: jnp.asarray(
            x,
            dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else None,
        ),
        tree,
    )


def run_parity(
    start,
    setting: Setting,
    *,
    dtype: str,
    wrt_variant: str,
    batches: Sequence[dict[str, np.ndarray]],
) -> dict:
    """Runs both steps once per batch from `start` (see initial_state).

    Returns:
      {"ours": [metrics per step], "torch": [losses per step],
       "initial", "ours_final", "torch_final": flat trees (see _ours_flat)}.
    """
    np_dtype = np.float64 if dtype == "float64" else np.float32
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    with jax.enable_x64(dtype == "float64"):
        config = make_config(setting, dtype=dtype, wrt_variant=wrt_variant)
        model = train_step.make_model(config, num_classes=setting.num_classes)
        tx, schedule, mcm_tx = train_step.make_optimizers(
            config, steps_per_epoch=1
        )
        params = _cast(start.params, np_dtype)
        mcm_params = _cast(start.mcm_params, np_dtype)
        state = train_step.TrainState(
            step=jnp.asarray(start.step),
            params=params,
            batch_stats=_cast(start.batch_stats, np_dtype),
            opt_state=tx.init(params),
            mcm_params=mcm_params,
            mcm_batch_stats=_cast(start.mcm_batch_stats, np_dtype),
            mcm_opt_state=mcm_tx.init(mcm_params),
            frozen_centers=_cast(start.frozen_centers, np_dtype),
            rng=jnp.asarray(start.rng),
        )
        embed_vars = {
            "params": state.params["model"],
            "batch_stats": state.batch_stats,
        }
        mcm_vars = {
            "params": state.mcm_params,
            "batch_stats": state.mcm_batch_stats,
        }
        leaf_dtypes = {
            np.asarray(x).dtype
            for x in jax.tree.leaves(
                (
                    embed_vars,
                    mcm_vars,
                    state.frozen_centers,
                    state.opt_state,
                    state.mcm_opt_state,
                )
            )
            if np.asarray(x).ndim
        }
        assert leaf_dtypes == {np.dtype(np_dtype)}, leaf_dtypes
        initial = _ours_flat(state)

        # The torch side starts from the same weights, in the release format.
        net = network.make_embed_net(
            num_classes=setting.num_classes,
            depth=setting.depth,
            width_multiplier=setting.width_multiplier,
            non_local_counts=setting.non_local_counts,
            non_local_inter=1,
            pooling=setting.pooling,
            last_stride=1,
        ).to(torch_dtype)
        net.load_state_dict(
            {
                k: torch.from_numpy(np.array(v))
                for k, v in release.embed_net_state_dict(embed_vars).items()
            },
            strict=True,
        )
        mcm = network.make_modality_classifier(
            feature_dim=model.feature_dim
        ).to(torch_dtype)
        mcm.load_state_dict(
            {
                k: torch.from_numpy(np.array(v))
                for k, v in release.modality_classifier_state_dict(
                    mcm_vars
                ).items()
            },
            strict=True,
        )
        net_opt, mcm_opt = step.make_optimizers(
            net, mcm, lr=setting.base_lr, mcm_lr=setting.mcm_lr
        )
        centers = {
            k: _to_torch(np.asarray(v), torch_dtype)
            for k, v in state.frozen_centers.items()
        }

        jax_step = jax.jit(
            train_step.make_train_step(
                config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
            )
        )
        ours, theirs = [], []
        for epoch, batch in enumerate(batches):
            batch = {
                k: v.astype(np_dtype) if k in ("visible", "infrared") else v
                for k, v in batch.items()
            }
            state, metrics = jax_step(state, batch)
            ours.append(
                {k: float(v) for k, v in jax.device_get(metrics).items()}
            )
            labels = np.concatenate(
                [batch["visible_labels"], batch["infrared_labels"]]
            )
            cameras = (
                np.concatenate(
                    [batch["visible_cameras"], batch["infrared_cameras"]]
                )
                - 1
            )
            lr = step.release_lr(epoch, base_lr=setting.base_lr)
            theirs.append(
                step.train_step(
                    net,
                    mcm,
                    net_opt,
                    mcm_opt,
                    visible=_to_torch(
                        batch["visible"].transpose(0, 3, 1, 2), torch_dtype
                    ),
                    infrared=_to_torch(
                        batch["infrared"].transpose(0, 3, 1, 2), torch_dtype
                    ),
                    labels=torch.from_numpy(labels.astype(np.int64)),
                    cameras=torch.from_numpy(cameras.astype(np.int64)),
                    centers=centers,
                    sigma=config.loss.sigma,
                    rho=config.loss.rho,
                    center_weight=config.loss.center_weight,
                    wrt_variant=wrt_variant,
                    lr=lr,
                )
            )
            theirs[-1]["lr"] = lr
        ours_final = _ours_flat(jax.device_get(state))
        torch_final = _torch_flat(
            net, mcm, net_opt, mcm_opt, embed_vars, mcm_vars
        )
    return {
        "ours": ours,
        "torch": theirs,
        "initial": initial,
        "ours_final": ours_final,
        "torch_final": torch_final,
    }


def loss_deviations(result) -> dict[str, float]:
    """Worst relative loss deviation per loss name over the steps."""
    worst = {}
    for ours, theirs in zip(result["ours"], result["torch"], strict=True):
        for name in LOSS_NAMES:
            dev = abs(ours[name] - theirs[name]) / abs(theirs[name])
            worst[name] = max(worst.get(name, 0.0), dev)
    return worst


def tensor_deviations(result) -> dict[str, float]:
    """max|ours - torch| / max|torch - initial| per leaf."""
    out = {}
    for name, initial in result["initial"].items():
        ours = result["ours_final"][name]
        ref = result["torch_final"][name]
        assert ours.shape == ref.shape == initial.shape, name
        assert np.all(np.isfinite(ref)), (
            f"{name}: torch value not finite "
            "(a parameter without a momentum buffer?)"
        )
        start = 0.0 if "momentum" in name else initial
        update = np.max(np.abs(ref - start))
        diff = np.max(np.abs(ours - ref))
        out[name] = (
            diff / update if update > 0 else (0.0 if diff == 0 else np.inf)
        )
    return out


def global_deviation(result) -> float:
    """||ours - torch|| / ||torch - initial|| over all trained parameters."""
    diff = update = 0.0
    for name, initial in result["initial"].items():
        if not name.startswith(("params/", "mcm_params/")):
            continue
        ref = result["torch_final"][name]
        diff += float(np.sum((result["ours_final"][name] - ref) ** 2))
        update += float(np.sum((ref - initial) ** 2))
    return float(np.sqrt(diff / update))


def report(title: str, result, tensor_devs=None) -> str:
    """First-step losses side by side and the worst deviations."""
    first_ours, first_torch = result["ours"][0], result["torch"][0]
    lines = [f"== {title}: first-step losses (ours | torch | rel. dev.)"]
    for name in LOSS_NAMES:
        a, b = first_ours[name], first_torch[name]
        lines.append(
            f"  {name:15s} {a:.15g} | {b:.15g} | {abs(a - b) / abs(b):.2e}"
        )
    worst = loss_deviations(result)
    name = max(worst, key=worst.get)
    lines.append(
        f"  worst loss deviation over {len(result['ours'])} "
        f"step(s): {worst[name]:.3e} ({name})"
    )
    t = result["torch"][0]
    lines.append(
        f"  WRT first step: release {t['loss_triplet_release']:.6g}"
        f", stable {t['loss_triplet_stable']:.6g}; min negative "
        f"weight sum (release) {t['wrt_negative_weight_sum_min']:.3g}"
    )
    if tensor_devs is not None:
        for group in GROUPS:
            devs = {
                k: v for k, v in tensor_devs.items() if k.split("/")[0] == group
            }
            k = max(devs, key=devs.get)
            lines.append(f"  worst {group:15s} {devs[k]:.3e} ({k})")
    return "\n".join(lines)
