"""Tests of the alternating step (train_step.py), sharding and finiteness.

Tiny model (ResNet-18 layout, width 1/16, 32x16 images, P=4, K=2); XLA
optimisations are disabled while this module's fixtures compile, as the Flax
ImageNet example's tests do, to keep compile times short on 2 cores.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from tiny_steps import (
    K,
    P,
    load_default_config,
    setup,
    tiny_batches,
    tiny_config,
)
from tiny_steps import flat_state as flat_state  # tests/test_cpu_kernels.py

from mclnet_jax import (
    config_checks,
    losses,
    optim,
    sharding,
    train_step,
)
from mclnet_jax.evaluators import common as eval_common
from mclnet_jax.models import mclnet as mclnet_model

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(fast_compile):
    del fast_compile
    config = tiny_config()
    model, tx, mcm_tx, state, step = setup(config)
    return config, model, tx, mcm_tx, state, step


def _count_primitive(jaxpr, name):
    """Occurrences of primitive `name` in a jaxpr and all its sub-jaxprs."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _count_primitive(sub.jaxpr, name)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _count_primitive(sub, name)
    return count


def test_backbone_runs_forward_once_and_backward_once(tiny):
    config, model, _, _, state, step = tiny
    batch = tiny_batches(1)[0]
    variables = state.model_variables()
    assert variables["params"] is state.params["model"]
    assert variables["batch_stats"] is state.batch_stats
    forward = jax.make_jaxpr(
        lambda v: model.apply(
            v,
            batch["visible"],
            batch["infrared"],
            train=True,
            mutable=["batch_stats"],
        )
    )(variables)
    n_forward = _count_primitive(forward.jaxpr, "conv_general_dilated")
    n_step = _count_primitive(
        jax.make_jaxpr(step)(state, batch).jaxpr, "conv_general_dilated"
    )
    # One forward (n) + one backward: a weight-gradient conv per conv (n) and
    # an input-gradient conv per conv (n) except the two stems' first convs,
    # whose inputs are the images. The release's extra backward of L_m through
    # the backbone would add another 2n - 2, a second forward another n. (The
    # model computes 1x1 convolutions as matrix products; the 7x7 and 3x3
    # convolutions counted here run in every stage, so any extra pass over
    # the backbone shows up in this count.)
    assert n_forward >= 10
    assert n_step == 3 * n_forward - 2, (n_forward, n_step)
    assert config.loss.mcm  # The MCM is on in this count.


def test_step_matches_straightforward_two_pass_reference(tiny):
    config, model, tx, mcm_tx, state, step = tiny
    batch = tiny_batches(1)[0]
    new_state, metrics = jax.jit(step)(state, batch)
    lc = config.loss
    mcm = mclnet_model.ModalityClassifier()
    labels = np.concatenate([batch["visible_labels"], batch["infrared_labels"]])
    cameras = (
        np.concatenate([batch["visible_cameras"], batch["infrared_cameras"]])
        - 1
    )
    modality = np.repeat([0, 1], P * K)

    def apply_model(params):
        return model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["visible"],
            batch["infrared"],
            train=True,
            mutable=["batch_stats"],
        )[0]

    @jax.jit
    def reference():
        # Pass 1: MCM step on features of a separate, gradient-free forward.
        pool = jax.lax.stop_gradient(apply_model(state.params["model"])["pool"])

        def l_m(mp):
            logits, _ = mcm.apply(
                {"params": mp, "batch_stats": state.mcm_batch_stats},
                pool,
                train=True,
                mutable=["batch_stats"],
            )
            return losses.modality_classifier_loss(
                logits=logits, modality=modality
            )

        g = jax.grad(l_m)(state.mcm_params)
        upd, _ = mcm_tx.update(g, state.mcm_opt_state, state.mcm_params)
        mcm_params = optax.apply_updates(state.mcm_params, upd)
        _, mutated = mcm.apply(
            {"params": state.mcm_params, "batch_stats": state.mcm_batch_stats},
            pool,
            train=True,
            mutable=["batch_stats"],
        )

        # Pass 2: plain gradient of Eq. 8 through a second forward.
        def total(params):
            out = apply_model(params["model"])
            m_logits, _ = mcm.apply(
                {"params": mcm_params, "batch_stats": mutated["batch_stats"]},
                out["pool"],
                train=True,
                mutable=["batch_stats"],
            )
            loss = (
                losses.identity_loss(logits=out["logits"], labels=labels)
                + losses.wrt_triplet_loss(
                    features=out["pool"], labels=labels, variant=lc.wrt_variant
                )
                + losses.modality_confusion_loss(logits=m_logits)
            )
            for name, target in (("ica", labels), ("cca", cameras)):
                loss += lc.center_weight * losses.center_aggregation_loss(
                    features=out["bn"],
                    labels=target,
                    centers=params["centers"][name],
                    sigma=lc.sigma,
                    rho=lc.rho,
                    variant=lc.center_variant,
                )
            return loss

        loss, grads = jax.value_and_grad(total)(state.params)
        upd, _ = tx.update(grads, state.opt_state, state.params)
        return loss, optax.apply_updates(state.params, upd), mcm_params

    want_loss, want_params, want_mcm = reference()
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    for got, want in (
        (new_state.params, want_params),
        (new_state.mcm_params, want_mcm),
    ):
        # zip would silently drop leaves if the trees differed.
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for (path, g), w in zip(
            jax.tree_util.tree_flatten_with_path(got)[0],
            jax.tree.leaves(want),
            strict=True,
        ):
            np.testing.assert_allclose(
                g, w, rtol=1e-4, atol=1e-6, err_msg=optim.path_str(path)
            )
    assert int(new_state.step) == 1
    assert set(metrics) >= {
        "loss",
        "loss_id",
        "loss_triplet",
        "loss_mcm",
        "loss_confusion",
        "loss_ica",
        "loss_cca",
        "triplet_accuracy",
        "mcm_accuracy",
        "lr",
    }
    # Centers are trained here: they moved; frozen centers would not.
    assert not np.allclose(
        new_state.params["centers"]["ica"], state.params["centers"]["ica"]
    )


def test_step_without_mcm_with_hard_triplet_and_frozen_centers():
    # The switches of the ablation rows that the tests above leave on their
    # other side: no MCM, the hard-mining triplet, centers at their init.
    config = tiny_config()
    config.loss.mcm = False
    config.loss.triplet = "hard"
    config.loss.train_centers = False
    model, _, _, state, step = setup(config)
    assert "centers" not in state.params and state.frozen_centers
    batch = tiny_batches(1)[0]
    new_state, metrics = jax.jit(step)(state, batch)
    lc = config.loss
    assert set(metrics) == {
        "loss",
        "loss_id",
        "loss_triplet",
        "loss_ica",
        "loss_cca",
        "lr",
    }
    out = model.apply(
        state.model_variables(),
        batch["visible"],
        batch["infrared"],
        train=True,
        mutable=["batch_stats"],
    )[0]
    labels = np.concatenate([batch["visible_labels"], batch["infrared_labels"]])
    cameras = (
        np.concatenate([batch["visible_cameras"], batch["infrared_cameras"]])
        - 1
    )
    want = losses.identity_loss(
        logits=out["logits"], labels=labels, label_smoothing=lc.label_smoothing
    ) + losses.hard_triplet_loss(
        features=out["pool"], labels=labels, margin=lc.triplet_margin
    )
    for name, target in (("ica", labels), ("cca", cameras)):
        want += lc.center_weight * losses.center_aggregation_loss(
            features=out["bn"],
            labels=target,
            centers=state.frozen_centers[name],
            sigma=lc.sigma,
            rho=lc.rho,
            variant=lc.center_variant,
        )
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    # Neither the MCM nor the frozen centers move; the backbone does.
    for got, was in (
        (new_state.mcm_params, state.mcm_params),
        (new_state.frozen_centers, state.frozen_centers),
    ):
        for g, w in zip(
            jax.tree.leaves(got), jax.tree.leaves(was), strict=True
        ):
            np.testing.assert_array_equal(g, w)
    assert not np.allclose(
        new_state.params["model"]["classifier"]["kernel"],
        state.params["model"]["classifier"]["kernel"],
    )


def test_float64_mode_keeps_every_state_leaf_in_float64():
    config = tiny_config()
    config.model.dtype = "float64"
    # The dtypes are those of the traced programs: the initialisation and
    # the step are traced (jax.eval_shape), not compiled.
    made = {}

    def init():
        _, _, _, state, made["step"] = setup(config)
        return state

    with jax.enable_x64(True):
        state = jax.eval_shape(init)
        new_state, metrics = jax.eval_shape(
            made["step"], state, tiny_batches(1)[0]
        )
        for tree in (state, new_state):
            floats = [
                x.dtype
                for x in jax.tree.leaves(tree)
                if jnp.issubdtype(x.dtype, jnp.floating)
            ]
            assert floats and set(floats) == {jnp.dtype(jnp.float64)}
        assert metrics["loss"].dtype == jnp.float64
    # The same config's float32 twin stays float32 even with x64 on (the
    # dtypes the initialisation gives, traced without compiling it).
    with jax.enable_x64(True):
        state32 = jax.eval_shape(lambda: setup(tiny_config())[3])
    assert {x.dtype for x in jax.tree.leaves(state32.params)} == {
        jnp.dtype(jnp.float32)
    }


def test_float64_without_x64_is_a_clear_error():
    config = tiny_config()
    config.model.dtype = "float64"
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="needs 64-bit JAX"):
            setup(config)


@pytest.mark.parametrize(
    "depth, pretrained, ok",
    [
        (50, None, False),
        (101, None, False),
        (50, "", False),
        (50, "random", True),
        (50, "w.safetensors", True),
        (18, None, True),
    ],
)
def test_deep_networks_need_explicit_initialisation(depth, pretrained, ok):
    config = load_default_config()
    config.model.depth = depth
    config.init.pretrained = pretrained
    problem = config_checks.initialisation_problem(config)
    if ok:
        assert problem is None
    else:
        assert "pretrained=random" in problem


def test_make_model_takes_config_model_as_keywords():
    config = ml_collections.ConfigDict(json.loads(tiny_config().to_json()))
    model = train_step.make_model(config, num_classes=5)
    assert (model.num_classes, model.depth, model.pooling) == (5, 18, "gem")
    assert model.width_multiplier == 1 / 16
    # JSON gave a list; the model gets a tuple, and the dtype by its name.
    assert config.model.non_local_counts == [0, 1, 1, 0]
    assert model.non_local_counts == (0, 1, 1, 0)
    assert model.dtype == jnp.float32
    config.model.dtype = "bfloat16"
    assert train_step.make_model(config, num_classes=5).dtype == jnp.bfloat16
    config.model.dtype = "float16"
    with pytest.raises(train_step.ConfigurationError, match="float16"):
        train_step.make_model(config, num_classes=5)
    config.model.dtype = "float32"
    config.model.depht = 50
    with pytest.raises(
        train_step.ConfigurationError, match=r"config\.model\.depht is not"
    ):
        train_step.make_model(config, num_classes=5)


def test_scalars_flattens_numbers_with_a_prefix():
    tree = {"sysu": {"bn": {"mAP": 0.5, "n": 3, "ok": True, "ranks": [1, 2]}}}
    assert eval_common.scalars("val", tree) == {
        "val/sysu/bn/mAP": 0.5,
        "val/sysu/bn/n": 3.0,
    }


def test_check_finite_names_the_bad_metric():
    with pytest.raises(train_step.NonFiniteLossError, match="loss_id"):
        train_step.check_finite({"loss_id": np.float32(np.nan), "lr": 0.1}, 7)
    train_step.check_finite({"loss": np.float32(1.0)}, 7)


def test_batch_divisibility_error():
    # Emulate a 3-device mesh: 8 rows per modality cannot split evenly.
    class FakeMesh:
        class devices:
            size = 3

    with pytest.raises(ValueError, match="divisible by the number of devices"):
        sharding.check_batch_divisible(per_modality_batch=8, mesh=FakeMesh)
    sharding.check_batch_divisible(per_modality_batch=9, mesh=FakeMesh)


_MULTI_DEVICE_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_disable_most_optimizations", True)
import numpy as np
import tiny_steps as t
assert jax.device_count() == 8, jax.devices()
one, _ = t.run_steps({steps}, devices=jax.devices()[:1])
eight, _ = t.run_steps({steps})
np.savez({out1!r}, **t.flat_state(one))
np.savez({out8!r}, **t.flat_state(eight))
"""


@pytest.fixture(scope="module")
def one_vs_eight(tmp_path_factory):
    """Runs 3 steps on 1 and on 8 host devices in a subprocess."""
    out = tmp_path_factory.mktemp("devices")
    out1, out8 = str(out / "one.npz"), str(out / "eight.npz")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    script = _MULTI_DEVICE_SCRIPT.format(
        tests=os.path.dirname(os.path.abspath(__file__)),
        steps=3,
        out1=out1,
        out8=out8,
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env=env,
        cwd=_REPO,
        timeout=600,
    )
    return dict(np.load(out1)), dict(np.load(out8))


def test_one_device_equals_eight_devices(one_vs_eight):
    one, eight = one_vs_eight
    assert one.keys() == eight.keys()
    for name in one:
        np.testing.assert_allclose(
            eight[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name
        )
    # The run changed the parameters (the comparison is not vacuous).
    assert len(one) > 50


_TWO_PROCESS_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_disable_most_optimizations", True)
jax.distributed.initialize(coordinator_address="127.0.0.1:{port}",
                           num_processes=2, process_id={index})
import numpy as np
import tiny_steps as t
assert jax.process_count() == 2 and jax.device_count() == 2
state, _ = t.run_steps({steps}, process_slice=({index}, 2))
if {index} == 0:
    np.savez({out!r}, **t.flat_state(state))
"""


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(one_vs_eight, tmp_path):
    one, _ = one_vs_eight
    out = str(tmp_path / "two.npz")
    port = _free_port()
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TWO_PROCESS_SCRIPT.format(
                    tests=os.path.dirname(os.path.abspath(__file__)),
                    port=port,
                    index=i,
                    steps=3,
                    out=out,
                ),
            ],
            env=env,
            cwd=_REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=600)
        finally:
            proc.kill()
        logs.append(stdout.decode(errors="replace")[-3000:])
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    two = dict(np.load(out))
    for name in one:
        np.testing.assert_allclose(
            two[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name
        )


def test_best_checkpoint_is_kept_apart_from_the_latest(tmp_path):
    from mclnet_jax import checkpointing

    ckpt = checkpointing.Checkpointer(
        str(tmp_path), keep=1, best_metric="sysu/bn/mAP"
    )
    target = {"w": jnp.zeros(3)}
    shardings = jax.tree.map(lambda x: x.sharding, target)
    for step, value in ((1, 0.5), (2, 0.3), (3, 0.4)):
        state = {"w": jnp.full(3, float(step))}
        ckpt.save(step, state)
        ckpt.save_best(step, state, {"sysu": {"bn": {"mAP": value}}})
    ckpt.wait()
    # keep=1 keeps only the newest; the best (step 1) lives elsewhere.
    assert ckpt.latest_step() == 3
    np.testing.assert_array_equal(
        ckpt.restore_latest(target, shardings)["w"], [3.0, 3.0, 3.0]
    )
    np.testing.assert_array_equal(
        ckpt.restore_best(target, shardings)["w"], [1.0, 1.0, 1.0]
    )
    # A restarted run remembers the best value and does not regress it.
    again = checkpointing.Checkpointer(
        str(tmp_path), keep=1, best_metric="sysu/bn/mAP"
    )
    assert not again.save_best(
        4, {"w": jnp.full(3, 4.0)}, {"sysu": {"bn": {"mAP": 0.45}}}
    )
    with pytest.raises(ValueError, match="best_metric"):
        again.save_best(5, target, {"sysu": {"pool": {"mAP": 0.9}}})


def test_non_finite_state_is_never_checkpointed(tmp_path):
    from mclnet_jax import checkpointing

    ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1)
    with pytest.raises(train_step.NonFiniteLossError, match="step 5"):
        ckpt.save(5, {"w": jnp.array([1.0, jnp.nan]), "step": jnp.int32(5)})
    with pytest.raises(train_step.NonFiniteLossError, match="loss"):
        train_step.check_finite({"loss": np.float32(np.inf)}, 6)
    with pytest.raises(train_step.NonFiniteLossError, match="step 6"):
        ckpt.save(6, {"w": jnp.array([jnp.inf]), "step": jnp.int32(6)})
    ckpt.wait()
    assert ckpt.latest_step() is None
