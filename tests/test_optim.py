"""Tests for mclnet_jax.optim: schedule table, lr groups, torch SGD parity."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mclnet_jax import optim


def _release_lr(epoch, lr=0.1):
    """The release's adjust_learning_rate, written out by hand."""
    if epoch < 10:
        return lr * (epoch + 1) / 10
    if epoch < 20:
        return lr
    if epoch < 50:
        return lr * 0.1
    return lr * 0.01


def test_epoch_schedule_matches_hand_written_table():
    steps_per_epoch = 7
    schedule = optim.epoch_schedule(
        base_lr=0.1, steps_per_epoch=steps_per_epoch
    )
    # Hand-written points: (step, lr).
    table = [
        (0, 0.01),
        (6, 0.01),
        (7, 0.02),
        (9 * 7, 0.1),
        (10 * 7 - 1, 0.1),
        (10 * 7, 0.1),
        (20 * 7 - 1, 0.1),
        (20 * 7, 0.01),
        (50 * 7 - 1, 0.01),
        (50 * 7, 0.001),
        (199 * 7 + 6, 0.001),
    ]
    for step, want in table:
        np.testing.assert_allclose(
            float(schedule(step)), want, rtol=1e-6, err_msg=f"step {step}"
        )
    steps = np.arange(200 * steps_per_epoch)
    got = np.asarray(jax.jit(jax.vmap(schedule))(steps))
    want = np.array([_release_lr(s // steps_per_epoch) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.epoch_schedule(base_lr=0.1, steps_per_epoch=0)
    with pytest.raises(ValueError, match="same length"):
        optim.epoch_schedule(
            base_lr=0.1,
            steps_per_epoch=1,
            boundaries=(20,),
            factors=(0.1, 0.01),
        )
    config = ml_collections.ConfigDict({"lr": 0.1, "schedule": {"kind": "x"}})
    with pytest.raises(ValueError, match="Unknown schedule"):
        optim.make_schedule(config, steps_per_epoch=1)


def _params():
    rng = np.random.default_rng(0)
    return {
        "model": {
            "stem": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
            "bnneck": {"scale": rng.normal(size=(4,)).astype(np.float32)},
            "classifier": {
                "kernel": rng.normal(size=(4, 5)).astype(np.float32)
            },
        },
        "centers": {"ica": rng.normal(size=(5, 4)).astype(np.float32)},
    }


_LR_MULTS = (
    ("model/(bnneck|classifier)/.*", 1.0),
    ("model/.*", 0.1),
    ("centers/.*", 1.0),
)


def test_uncovered_parameter_is_an_error():
    tx = optim.sgd(
        schedule=lambda s: 0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        lr_mults=_LR_MULTS[:2],
    )
    with pytest.raises(ValueError, match="centers/ica"):
        tx.init(_params())


def test_sgd_matches_torch_nesterov_weight_decay_with_groups():
    torch = pytest.importorskip(
        "torch", reason="torch (extra 'parity') is the SGD reference"
    )
    steps_per_epoch = 1  # lr changes every step during warm-up.
    config = ml_collections.ConfigDict(
        {
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "schedule": {
                "kind": "epochs",
                "warmup_epochs": 3,
                "boundaries": (4,),
                "factors": (0.1,),
            },
            "lr_mults": _LR_MULTS,
            "wd_mults": (("centers/.*", 0.0), (".*", 1.0)),
        }
    )
    tx, schedule = optim.make(config, steps_per_epoch=steps_per_epoch)
    params = jax.tree.map(jnp.asarray, _params())
    opt_state = tx.init(params)

    flat, treedef = jax.tree_util.tree_flatten_with_path(_params())
    names = [optim.path_str(p) for p, _ in flat]
    tparams = {
        n: torch.tensor(np.asarray(v), requires_grad=True)
        for n, (_, v) in zip(names, flat, strict=True)
    }
    backbone = [tparams[n] for n in names if n.startswith("model/stem")]
    heads = [
        tparams[n]
        for n in names
        if n.startswith(("model/bnneck", "model/classifier"))
    ]
    centers = [tparams[n] for n in names if n.startswith("centers")]
    groups = [
        {"params": backbone, "mult": 0.1, "weight_decay": 5e-4},
        {"params": heads, "mult": 1.0, "weight_decay": 5e-4},
        {"params": centers, "mult": 1.0, "weight_decay": 0.0},
    ]
    topt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)

    rng = np.random.default_rng(1)
    update = jax.jit(tx.update)
    for step in range(6):
        grads_np = [
            rng.normal(size=np.shape(v)).astype(np.float32) for _, v in flat
        ]
        # Torch: the release sets each group's lr once per epoch.
        for group in topt.param_groups:
            group["lr"] = _torch_lr(step, group["mult"])
        for n, g in zip(names, grads_np, strict=True):
            tparams[n].grad = torch.tensor(g)
        topt.step()
        grads = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(g) for g in grads_np]
        )
        updates, opt_state = update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        np.testing.assert_allclose(
            float(schedule(step)), _torch_lr(step, 1.0), rtol=1e-6
        )
    got = {
        optim.path_str(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    for n in names:
        np.testing.assert_allclose(
            got[n], tparams[n].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=n
        )


def _torch_lr(step, mult):
    # warm-up 3 epochs: 0.1 * (e + 1) / 3; then 0.1; x0.1 from epoch 4.
    if step < 3:
        base = 0.1 * (step + 1) / 3
    elif step < 4:
        base = 0.1
    else:
        base = 0.01
    return base * mult


def test_constant_schedule_for_mcm():
    config = ml_collections.ConfigDict(
        {
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "schedule": {"kind": "constant"},
            "lr_mults": ((".*", 1.0),),
            "wd_mults": ((".*", 1.0),),
        }
    )
    _, schedule = optim.make(config, steps_per_epoch=3)
    assert [float(schedule(s)) for s in (0, 10, 10_000)] == pytest.approx(
        [0.1, 0.1, 0.1]
    )
