"""Our jitted training step against an independent PyTorch release step.

`tests/torch_release_step.py` is a PyTorch version of the authors' release's
step (MCM step on L_m with detached features, L_e through the updated MCM,
ID + WRT + lambda (ICA + CCA) in the release's form with frozen centers,
torch.optim.SGD with Nesterov, weight decay and the two lr groups, BatchNorm
in train mode), written from the paper and the release's documented
behaviour. `tests/torch_release.py` builds the release's `embed_net` and
modality classifier. Both sides start from the same weights, moved with
`mclnet_jax.models.release`, and see the same batches; after the steps the
torch state (parameters, BatchNorm statistics, SGD momentum buffers) is
moved back into our variable tree with `release.load_embed_net` /
`release.load_modality_classifier` and compared leaf by leaf.

Setting: ResNet-18 layout at width 1/16 (D = 32), 32x16 images, one
non-local block in layer2 and layer3, GeM, MCM + ICA + CCA, P = 2
identities x K = 4 images per modality (8 per identity: the release's
hard-coded 8 in ICA equals the count weighting), 6 identities, 6 cameras.
The release's warm-up schedule with one step per epoch, so the lr changes
every step (0.01, 0.02, 0.03 for the heads, 0.1x for the backbone; MCM 0.1).
sigma and rho are scaled by D / 2048 as in configs/synthetic.py, so that
the pull hinges are active (asserted). Layer4's output BatchNorms are scaled
by 2 (a weight choice, the same on both sides) so that pool distances reach
~20 for some anchors, as unnormalised 2048-d features do: there the
release's WRT row-maximum quirk changes the negative weights, and the test
asserts that "release" and "stable" WRT differ by far more than the
tolerance, so agreement means our step implements the variant it claims.

Deviations (definitions used below):
- loss: |ours - torch| / |torch|, per loss term and step.
- per tensor (float64): max|ours - torch| / max|torch_final - initial|, the
  deviation as a fraction of that tensor's total update over the steps
  (for momentum buffers, initial = 0). Every leaf of the extractor's and the
  MCM's parameters, BatchNorm statistics and momentum buffers.
- global (float32): ||ours - torch||_2 / ||torch_final - initial||_2 over
  all trained tensors (extractor and MCM parameters) together.

float64 runs under `jax.enable_x64` (config.model.dtype = "float64"). In
float32, rounding differences flip ReLUs whose inputs are near zero and grow
quickly from step to step (for a random-init ResNet-50, ~1% after one step),
hence only one step and a loose bound there. All runs start from one
`train_step.init_state` in float64 (cast for the float32 runs): one
initialisation to compile. Run with `pytest -s` to see the first-step
losses side by side and the worst deviations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_steps

from mclnet_jax import optim, train_step
from mclnet_jax.models import release

torch = pytest.importorskip(
    "torch", reason="the PyTorch parity tests need torch (extra 'parity')"
)

# After the skip: these modules import torch.
import test_train  # noqa: E402

from benchmarks.torch_release import network as torch_release  # noqa: E402
from benchmarks.torch_release import step as torch_release_step  # noqa: E402

NUM_CLASSES = 6
NUM_CAMERAS = 6
P, K = 2, 4
HEIGHT, WIDTH = 32, 16
BASE_LR = 0.1
MCM_LR = 0.1
# Layer4's output BatchNorms x2: pool distances of ~6-25 instead of ~3-12.
FEATURE_SCALE = 2.0
LOSS_NAMES = (
    "loss",
    "loss_id",
    "loss_triplet",
    "loss_confusion",
    "loss_mcm",
    "loss_ica",
    "loss_cca",
)
WRT_VARIANTS = ("release", "stable")

F64_STEPS = 3
F64_LOSS_RTOL = 1e-9
F64_TENSOR_TOL = 1e-6
F32_LOSS_RTOL = 1e-5
F32_GLOBAL_TOL = 5e-2
# "release" and "stable" WRT must differ by more than this (relative) on
# the first step, else the check could not tell them apart.
MIN_VARIANT_GAP = 1e-3


def _config(*, dtype: str, wrt_variant: str):
    config = test_train.load_default_config()
    config.model.depth = 18
    config.model.width_multiplier = 1 / 16
    config.model.non_local_counts = (0, 1, 1, 0)
    config.model.non_local_inter = 1
    config.model.pooling = "gem"
    config.model.last_stride = 1
    config.model.dtype = dtype
    config.model.pretrained = "random"
    config.data.image_size = (HEIGHT, WIDTH)
    config.data.num_identities = P
    config.data.num_instances = K
    config.loss.wrt_variant = wrt_variant
    config.loss.center_variant = "release"
    config.loss.train_centers = False
    d = 512 // 16
    config.loss.sigma = 8.0 * d / 2048
    config.loss.rho = 4500.0 * d / 2048
    # The release's optimiser and warm-up schedule (mclnet_jax.configs.common).
    config.optimizer.lr = BASE_LR
    config.optimizer.schedule.kind = "epochs"
    config.optimizer.schedule.warmup_epochs = 10
    config.mcm_optimizer.lr = MCM_LR
    return config


def _batches(num_steps: int, dtype, seed: int = 0):
    """P identities x K images per modality; cameras 1-based as in SYSU."""
    return test_train.tiny_batches(
        num_steps,
        seed,
        num_ids=P,
        num_instances=K,
        num_classes=NUM_CLASSES,
        size=(HEIGHT, WIDTH),
        dtype=dtype,
    )


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
    """Scales layer4's last BatchNorms (block outputs x factor, ReLU-exact)."""
    params = jax.tree.map(lambda x: x, params)  # A copy of the dict tree.
    layer4 = params["layer4"]
    for block, bn in (
        ("block0", "bn2"),
        ("block0", "downsample_bn"),
        ("block1", "bn2"),
    ):
        layer4[block][bn] = {
            k: v * factor for k, v in layer4[block][bn].items()
        }
    return params


def _to_torch(x: np.ndarray, dtype) -> "torch.Tensor":
    return torch.from_numpy(np.array(x)).to(dtype)


def initial_state():
    """Our initial state on the host: `train_step.init_state` in float64.

    Shared by all runs (a float32 run casts it): one initialisation to
    compile instead of one per run. Layer4's output BatchNorms are scaled
    by `FEATURE_SCALE`.
    """
    with jax.enable_x64(True):
        config = _config(dtype="float64", wrt_variant="release")
        *_, state = tiny_steps.initial_state(
            config,
            num_classes=NUM_CLASSES,
            num_cameras=NUM_CAMERAS,
            steps_per_epoch=1,
            load_pretrained=False,
        )
        assert "centers" not in state.params  # Frozen, as released.
        params = {
            "model": _scale_layer4_outputs(state.params["model"], FEATURE_SCALE)
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


def run_parity(start, *, dtype: str, wrt_variant: str, num_steps: int) -> dict:
    """Runs both steps `num_steps` times from `start` (see initial_state).

    Returns:
      {"ours": [metrics per step], "torch": [losses per step],
       "initial", "ours_final", "torch_final": flat trees (see _ours_flat)}.
    """
    np_dtype = np.float64 if dtype == "float64" else np.float32
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    with jax.enable_x64(dtype == "float64"):
        config = _config(dtype=dtype, wrt_variant=wrt_variant)
        model = train_step.make_model(config, num_classes=NUM_CLASSES)
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
        net = torch_release.make_embed_net(
            num_classes=NUM_CLASSES,
            depth=18,
            width_multiplier=1 / 16,
            non_local_counts=(0, 1, 1, 0),
            non_local_inter=1,
            pooling="gem",
            last_stride=1,
        ).to(torch_dtype)
        net.load_state_dict(
            {
                k: torch.from_numpy(np.array(v))
                for k, v in release.embed_net_state_dict(embed_vars).items()
            },
            strict=True,
        )
        mcm = torch_release.make_modality_classifier(
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
        net_opt, mcm_opt = torch_release_step.make_optimizers(
            net, mcm, lr=BASE_LR, mcm_lr=MCM_LR
        )
        centers = {
            k: _to_torch(np.asarray(v), torch_dtype)
            for k, v in state.frozen_centers.items()
        }

        step = jax.jit(
            train_step.make_train_step(
                config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
            )
        )
        ours, theirs = [], []
        for epoch, batch in enumerate(_batches(num_steps, np_dtype)):
            state, metrics = step(state, batch)
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
            lr = torch_release_step.release_lr(epoch, base_lr=BASE_LR)
            theirs.append(
                torch_release_step.train_step(
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


def _loss_deviations(result) -> dict[str, float]:
    """Worst relative loss deviation per loss name over the steps."""
    worst = {}
    for ours, theirs in zip(result["ours"], result["torch"], strict=True):
        for name in LOSS_NAMES:
            dev = abs(ours[name] - theirs[name]) / abs(theirs[name])
            worst[name] = max(worst.get(name, 0.0), dev)
    return worst


def _tensor_deviations(result) -> dict[str, float]:
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


def _global_deviation(result) -> float:
    """||ours - torch|| / ||torch - initial|| over all trained parameters."""
    diff = update = 0.0
    for name, initial in result["initial"].items():
        if not name.startswith(("params/", "mcm_params/")):
            continue
        ref = result["torch_final"][name]
        diff += float(np.sum((result["ours_final"][name] - ref) ** 2))
        update += float(np.sum((ref - initial) ** 2))
    return float(np.sqrt(diff / update))


def _report(title: str, result, tensor_devs=None) -> None:
    first_ours, first_torch = result["ours"][0], result["torch"][0]
    lines = [f"\n== {title}: first-step losses (ours | torch | rel. dev.)"]
    for name in LOSS_NAMES:
        a, b = first_ours[name], first_torch[name]
        lines.append(
            f"  {name:15s} {a:.15g} | {b:.15g} | {abs(a - b) / abs(b):.2e}"
        )
    worst = _loss_deviations(result)
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
        for group in (
            "params",
            "batch_stats",
            "momentum",
            "mcm_params",
            "mcm_batch_stats",
            "mcm_momentum",
        ):
            devs = {
                k: v for k, v in tensor_devs.items() if k.split("/")[0] == group
            }
            k = max(devs, key=devs.get)
            lines.append(f"  worst {group:15s} {devs[k]:.3e} ({k})")
    print("\n".join(lines))


def _check_setting_exercises_the_losses(result) -> None:
    """The chosen inputs can tell the variants apart and hit the hinges."""
    for t in result["torch"]:
        assert t["ica_pull_argument"] > 0 and t["cca_pull_argument"] > 0, t
    t = result["torch"][0]
    gap = abs(t["loss_triplet_release"] - t["loss_triplet_stable"])
    assert gap > MIN_VARIANT_GAP * abs(t["loss_triplet_stable"]), t


def _check_lr(result, *, rtol: float) -> None:
    """Our schedule's lr (the logged base lr) is the release's, per step."""
    for ours, theirs in zip(result["ours"], result["torch"], strict=True):
        np.testing.assert_allclose(
            ours["lr"],
            theirs["lr"],
            rtol=rtol,
            err_msg="the learning rate differs (float64 needs the schedule "
            "computed in float64, not rounded to float32)",
        )


@pytest.fixture(scope="module")
def start(fast_compile):
    # XLA optimisations off while this module compiles: ~3x faster compiles
    # on 2 cores; the arithmetic is the same.
    del fast_compile
    return initial_state()


@pytest.mark.parametrize("wrt_variant", WRT_VARIANTS)
def test_float64_three_steps_match_torch(start, wrt_variant):
    result = run_parity(
        start, dtype="float64", wrt_variant=wrt_variant, num_steps=F64_STEPS
    )
    tensor_devs = _tensor_deviations(result)
    _report(
        f"float64, WRT {wrt_variant}, {F64_STEPS} steps", result, tensor_devs
    )
    _check_setting_exercises_the_losses(result)
    _check_lr(result, rtol=1e-14)
    loss_devs = _loss_deviations(result)
    assert max(loss_devs.values()) <= F64_LOSS_RTOL, loss_devs
    worst = {k: v for k, v in tensor_devs.items() if v > F64_TENSOR_TOL}
    assert not worst, worst
    # Every leaf of ours was compared.
    assert set(tensor_devs) == set(result["ours_final"])


@pytest.mark.parametrize("wrt_variant", WRT_VARIANTS)
def test_float32_one_step_matches_torch(start, wrt_variant):
    result = run_parity(
        start, dtype="float32", wrt_variant=wrt_variant, num_steps=1
    )
    _report(
        f"float32, WRT {wrt_variant}, 1 step",
        result,
        _tensor_deviations(result),
    )
    _check_setting_exercises_the_losses(result)
    _check_lr(result, rtol=1e-6)
    loss_devs = _loss_deviations(result)
    assert max(loss_devs.values()) <= F32_LOSS_RTOL, loss_devs
    global_dev = _global_deviation(result)
    print(f"  global L2 deviation of the trained tensors: {global_dev:.3e}")
    assert global_dev <= F32_GLOBAL_TOL
