"""The PyTorch release of the benchmarks (`benchmarks.torch_release`).

`make_step` / `make_forward` on a tiny network: they run, train, keep their
state between calls and check their arguments; the release's second
backward pass (L_m through the backbone, gradients discarded) leaves the
step's result unchanged; the package imports without torch and says how to
get it; `benchmarks/model_forward.py --torch` prints both sides and the
ratio.
"""

import copy
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip(
    "torch", reason="the PyTorch release needs torch (extra 'parity')"
)

from benchmarks import torch_release  # noqa: E402
from benchmarks.torch_release import network, step  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    depth=50, width_multiplier=1 / 16, num_classes=6, image_size=(32, 16)
)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_make_step_trains_and_keeps_its_state():
    run = torch_release.make_step(**TINY, batch=(8, 8))
    first, second = run(), run()
    for losses in (first, second):
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert set(first) >= {"loss", "loss_mcm", "loss_ica", "loss_cca"}
    assert first["loss"] != second["loss"]  # The weights moved.


def test_make_step_in_autocast_bfloat16_runs():
    losses = torch_release.make_step(
        **TINY, batch=(4, 4), dtype="autocast_bf16"
    )()
    assert torch.isfinite(torch.tensor(losses["loss"]))


def test_make_forward_runs():
    assert torch_release.make_forward(**TINY, batch=3)() is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype="float16"), "dtype must be"),
        (dict(batch=(8,)), "batch must be two positive ints"),
        (dict(image_size=(32, 0)), "image_size must be two positive ints"),
        (dict(num_classes=0), "num_classes must be a positive int"),
        (dict(depth=20), "Unsupported ResNet depth"),
    ],
)
def test_make_step_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        torch_release.make_step(**{**TINY, **kwargs})


def test_second_backward_through_the_backbone_changes_nothing():
    torch.manual_seed(0)
    nets = [
        network.make_embed_net(
            num_classes=6,
            depth=18,
            width_multiplier=1 / 16,
            non_local_counts=(0, 1, 1, 0),
        )
    ]
    mcms = [network.make_modality_classifier(feature_dim=32)]
    nets.append(copy.deepcopy(nets[0]))
    mcms.append(copy.deepcopy(mcms[0]))
    gen = torch.Generator().manual_seed(1)
    visible = torch.randn((8, 3, 32, 16), generator=gen)
    infrared = torch.randn((8, 3, 32, 16), generator=gen)
    inputs = dict(
        visible=visible,
        infrared=infrared,
        labels=torch.arange(16) // 4 % 6,
        cameras=torch.tensor([0, 1, 3, 4] * 2 + [2, 5] * 4),
        centers={
            "ica": torch.randn((6, 32), generator=gen),
            "cca": torch.randn((6, 32), generator=gen),
        },
        sigma=0.125,
        rho=70.0,
        center_weight=5e-4,
        wrt_variant="release",
        lr=0.01,
    )
    results = []
    for net, mcm, through in zip(nets, mcms, (False, True), strict=True):
        net_opt, mcm_opt = step.make_optimizers(net, mcm, lr=0.01, mcm_lr=0.1)
        losses = step.train_step(
            net, mcm, net_opt, mcm_opt, mcm_through_backbone=through, **inputs
        )
        results.append((losses, _params(net), _params(mcm)))
    (l0, n0, m0), (l1, n1, m1) = results
    assert l0 == pytest.approx(l1, rel=1e-6)
    for ours, theirs in ((n0, n1), (m0, m1)):
        for key, value in ours.items():
            torch.testing.assert_close(theirs[key], value, rtol=1e-6, atol=1e-7)


def _python(code):
    env = dict(os.environ, PYTHONPATH=_REPO)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=_REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_imports_without_torch_and_says_how_to_get_it():
    proc = _python(
        "import sys; sys.modules['torch'] = None\n"
        "from benchmarks import torch_release\n"
        "try:\n"
        "    torch_release.make_step()\n"
        "except ImportError as e:\n"
        "    print('ERROR', e)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" in proc.stdout and "parity" in proc.stdout


def test_model_forward_benchmark_prints_both_sides_and_the_ratio():
    from benchmarks import model_forward

    # AGW's non-local counts, clipped to the blocks of each stage.
    assert model_forward.non_local_counts(50) == (0, 2, 3, 0)
    assert model_forward.non_local_counts(18) == (0, 2, 2, 0)
    with pytest.raises(ValueError, match="depth"):
        model_forward.non_local_counts(42)
    # ResNet-18 (2 blocks per stage) runs on both sides.
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(_REPO, "benchmarks", "model_forward.py"),
            "--torch",
            "--depth=18",
            "--width_multiplier=0.0625",
            "--num_classes=4",
            "--height=32",
            "--width=16",
            "--batch=2",
            "--repeats=1",
            "--warmup=0",
        ],
        cwd=_REPO,
        # The caller's GLIBC_TUNABLES would reach both sides. XLA's
        # optimisations off: only the printed lines are checked here.
        env={
            **{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
            "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ResNet-18 x0.0625 MCLNet (non-local (0, 2, 2, 0))" in out, out
    assert "ours:" in out and "torch release:" in out
    assert "ours / torch speed:" in out and "peak RSS" in out
    # Only the torch side runs with the tuned malloc.
    ours_line, torch_line = (
        next(line for line in out.splitlines() if line.startswith(p))
        for p in ("ours:", "torch release:")
    )
    assert "GLIBC_TUNABLES unset" in ours_line
    assert torch_release.TORCH_GLIBC_TUNABLES in torch_line


def test_child_env_tunes_malloc_for_torch_only(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    tuned = torch_release.TORCH_GLIBC_TUNABLES
    env = torch_release.child_env("torch", "REPO", tuned_malloc=True)
    assert env["GLIBC_TUNABLES"] == tuned
    assert env["PYTHONPATH"] == os.pathsep.join(["REPO", "elsewhere"])
    assert "GLIBC_TUNABLES" not in torch_release.child_env(
        "jax", "REPO", tuned_malloc=True
    )
    assert "GLIBC_TUNABLES" not in torch_release.child_env(
        "torch", "REPO", tuned_malloc=False
    )
    # The caller's own setting wins.
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    env = torch_release.child_env("torch", "REPO", tuned_malloc=True)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=1"


def test_accelerator_torch_side_runs_the_real_release():
    from benchmarks import accelerator, accelerator_torch

    config = accelerator.synthetic.get_config("tiny=1")
    report = accelerator_torch.bench_torch(config, 8, 4, repeats=1)
    assert report["batch"] == [4, 4]
    assert [r["dtype"] for r in report["rows"]] == ["float32", "bfloat16"]
    assert all(r["median_ms"] > 0 for r in report["rows"])
