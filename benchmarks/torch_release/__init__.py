"""The authors' release in PyTorch: its forward and training step, timed.

`make_step` and `make_forward` build the release's network (`network`) and
step (`step`) at a given size on fixed synthetic batches and return a
zero-argument callable to time; `benchmarks/model_forward.py`,
`benchmarks/train_step.py` and `benchmarks/accelerator.py` call them with
`--torch` (benchmarks/README.md). torch is an optional dependency of the
benchmarks: this module imports without it, and `make_step` /
`make_forward` raise an ImportError that says how to install it.

The step is the release's as it runs: one forward pass, L_m
back-propagated through the whole backbone (those gradients discarded),
one MCM SGD step, then the extractor's loss back-propagated and one SGD
step in two learning-rate groups.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from mclnet_jax.models import resnet

DTYPES = ("float32", "autocast_bf16")
NUM_CAMERAS = 6
K = 4  # Images per identity and modality.
# The release's margins, loss weight and first warm-up learning rate.
SIGMA, RHO, CENTER_WEIGHT = 8.0, 4500.0, 5e-4
LR, MCM_LR = 0.01, 0.1
# 0-based SYSU-MM01 cameras: visible 1, 2, 4, 5 and infrared 3, 6.
VISIBLE_CAMERAS, INFRARED_CAMERAS = (0, 1, 3, 4), (2, 5)


# glibc's malloc for the torch side: never trim the heap or hand large
# blocks to mmap, so the same buffers are reused from step to step instead
# of being faulted in again (torch is about twice as fast on CPU with it;
# XLA:CPU is not affected). `child_env` applies it unless the caller's
# environment sets GLIBC_TUNABLES itself.
TORCH_GLIBC_TUNABLES = (
    "glibc.malloc.mmap_threshold=4294967296:"
    "glibc.malloc.trim_threshold=4294967296"
)


def child_env(side: str, repo: str, *, tuned_malloc: bool) -> dict:
    """The environment of a benchmark's child process for `side`.

    The repository root goes on PYTHONPATH; the torch side gets
    `TORCH_GLIBC_TUNABLES` when `tuned_malloc` and GLIBC_TUNABLES is unset.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (repo, env.get("PYTHONPATH")) if p
    )
    if side == "torch" and tuned_malloc and not env.get("GLIBC_TUNABLES"):
        env["GLIBC_TUNABLES"] = TORCH_GLIBC_TUNABLES
    return env


def require_torch():
    """Returns the torch module, or raises an ImportError that says why."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "The PyTorch side of the benchmarks needs torch, an optional "
            "dependency: install the project's `parity` extra "
            "(`pip install -e '.[parity]'`, or a CPU build of torch)."
        ) from err
    return torch


def set_threads(num_threads: int | None = None) -> int:
    """Sets torch's intra-op threads (default: every core this process may
    use, as XLA:CPU does) and returns the number set."""
    torch = require_torch()
    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(num_threads)
    return torch.get_num_threads()


def _autocast_dtype(dtype: Any):
    """None for float32, torch.bfloat16 for "autocast_bf16"."""
    torch = require_torch()
    if dtype in ("float32", torch.float32):
        return None
    if dtype == "autocast_bf16":
        return torch.bfloat16
    raise ValueError(
        f"dtype must be torch.float32, 'float32' or 'autocast_bf16', got "
        f"{dtype!r}."
    )


def _check_sizes(depth, num_classes, image_size, counts) -> None:
    resnet.check_depth(depth)
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise ValueError(
            f"num_classes must be a positive int, got {num_classes!r}."
        )
    for name, value in (("image_size", image_size), ("batch", counts)):
        if len(value) != 2 or not all(
            isinstance(v, int) and v > 0 for v in value
        ):
            raise ValueError(
                f"{name} must be two positive ints, got {tuple(value)!r}."
            )


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    depth: int = 50,
    width_multiplier: float = 1.0,
    num_classes: int = 395,
    image_size: Sequence[int] = (288, 144),
    batch: Sequence[int] = (32, 32),
    device: str = "cpu",
    dtype: Any = "float32",
    non_local_counts: Sequence[int] = (0, 2, 3, 0),
) -> Callable[[], dict[str, float]]:
    """The release's training step on fixed synthetic batches.

    Args:
      depth: ResNet depth (18, 34, 50, 101).
      width_multiplier: scales every channel count.
      num_classes: identities of the classifier.
      image_size: (height, width).
      batch: (visible, infrared) images per step; identities are K = 4
        consecutive images of each modality.
      device: a torch device ("cpu", "cuda", ...).
      dtype: torch.float32 (or "float32"), or "autocast_bf16" (forward and
        losses under torch.autocast with bfloat16, as mixed precision).
      non_local_counts: non-local blocks per stage (the release's default;
        a tiny network with fewer blocks needs fewer).

    Returns:
      A zero-argument callable that runs one step (parameters, BatchNorm
      statistics and SGD state carry over between calls) and returns its
      loss terms as floats; on a GPU it returns after the step has finished.
    """
    torch = require_torch()
    from benchmarks.torch_release import network, step

    counts = tuple(batch)
    _check_sizes(depth, num_classes, tuple(image_size), counts)
    autocast_dtype = _autocast_dtype(dtype)
    device = torch.device(device)
    torch.manual_seed(0)
    net = network.make_embed_net(
        num_classes=num_classes,
        depth=depth,
        width_multiplier=width_multiplier,
        non_local_counts=tuple(non_local_counts),
    ).to(device)
    mcm = network.make_modality_classifier(
        feature_dim=resnet.feature_dim(depth, width_multiplier)
    ).to(device)
    net_opt, mcm_opt = step.make_optimizers(net, mcm, lr=LR, mcm_lr=MCM_LR)
    gen = torch.Generator().manual_seed(1)
    h, w = image_size

    def images(n):
        return torch.randn((n, 3, h, w), generator=gen).to(device)

    labels = torch.cat([torch.arange(n) // K for n in counts]) % num_classes
    cameras = torch.cat(
        [
            torch.tensor(VISIBLE_CAMERAS).repeat(counts[0])[: counts[0]],
            torch.tensor(INFRARED_CAMERAS).repeat(counts[1])[: counts[1]],
        ]
    )
    d = resnet.feature_dim(depth, width_multiplier)
    centers = {
        "ica": torch.randn((num_classes, d), generator=gen).to(device),
        "cca": torch.randn((NUM_CAMERAS, d), generator=gen).to(device),
    }
    inputs = dict(
        visible=images(counts[0]),
        infrared=images(counts[1]),
        labels=labels.to(device),
        cameras=cameras.to(device),
        centers=centers,
    )

    def run_step():
        return step.train_step(
            net,
            mcm,
            net_opt,
            mcm_opt,
            **inputs,
            sigma=SIGMA,
            rho=RHO,
            center_weight=CENTER_WEIGHT,
            wrt_variant="release",
            lr=LR,
            mcm_through_backbone=True,
            autocast_dtype=autocast_dtype,
            diagnostics=False,
        )

    return run_step


def make_forward(
    depth: int = 50,
    width_multiplier: float = 1.0,
    num_classes: int = 395,
    image_size: Sequence[int] = (288, 144),
    batch: int = 64,
    device: str = "cpu",
    dtype: Any = "float32",
    non_local_counts: Sequence[int] = (0, 2, 3, 0),
) -> Callable[[], None]:
    """The release's eval-mode forward of `batch` visible images.

    Arguments as for `make_step`, except `batch`: images per call. The
    callable runs under `torch.inference_mode` and returns None once the
    forward has finished.
    """
    torch = require_torch()
    from benchmarks.torch_release import network

    _check_sizes(depth, num_classes, tuple(image_size), (batch, batch))
    autocast_dtype = _autocast_dtype(dtype)
    device = torch.device(device)
    torch.manual_seed(0)
    net = network.make_embed_net(
        num_classes=num_classes,
        depth=depth,
        width_multiplier=width_multiplier,
        non_local_counts=tuple(non_local_counts),
    ).to(device)
    net.eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn((batch, 3, *image_size), generator=gen).to(device)

    def forward():
        with torch.inference_mode():
            if autocast_dtype is None:
                net(visible=images)
            else:
                with torch.autocast(device.type, dtype=autocast_dtype):
                    net(visible=images)
        _sync(torch, device)

    return forward
