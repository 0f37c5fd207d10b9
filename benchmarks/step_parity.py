r"""Our training step against the PyTorch release step, at any size.

Runs `--steps` steps of both from the same weights on the same synthetic
batches (`benchmarks/torch_release/parity.py`: the machinery of
tests/test_release_step_parity.py, which asserts it at a tiny size) and
prints the first-step losses side by side, the worst relative loss
deviation over the steps, the worst update-relative deviation of each group
of tensors (parameters, BatchNorm statistics, momentum buffers of the
extractor and the MCM) and the global L2 deviation of the trained tensors.
Tensors whose update is at rounding level (below `--noise`) are listed
apart with their absolute deviation. `--kernels=auto` (the default) uses
the XLA:CPU forms (Winograd, ...) on the CPU backend, as a run does. Needs
torch.

  python benchmarks/step_parity.py                        # ResNet-50, 64x32
  python benchmarks/step_parity.py --kernels=xla --dtype=float32 --steps=1
"""

import os
import sys

import numpy as np
from absl import app, flags

if not __package__:  # Run as `python benchmarks/<this file>.py`.
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
# The imports below need the repository on the path (hence E402).
from benchmarks import device_bench  # noqa: E402
from benchmarks.torch_release import parity  # noqa: E402

_DEPTH = flags.DEFINE_integer("depth", 50, "ResNet depth.")
_WIDTH_MULTIPLIER = flags.DEFINE_float("width_multiplier", 1.0, "Width.")
_SIZE = flags.DEFINE_list("size", ["64", "32"], "Image height, width.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps of each side.")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float64", "float32"], "")
_KERNELS = flags.DEFINE_enum("kernels", "auto", ["auto", "cpu", "xla"], "")
_WRT = flags.DEFINE_enum("wrt_variant", "release", ["release", "stable"], "")
_NOISE = flags.DEFINE_float(
    "noise",
    1e-12,
    "Tensors whose largest update is below this are listed apart with "
    "their absolute deviation (no update to divide by).",
)


def main(argv):
    del argv
    height, width = (int(v) for v in _SIZE.value)
    setting = parity.Setting(
        depth=_DEPTH.value,
        width_multiplier=_WIDTH_MULTIPLIER.value,
        non_local_counts=(0, 2, 3, 0) if _DEPTH.value >= 50 else (0, 1, 1, 0),
        height=height,
        width=width,
        kernels=_KERNELS.value,
    )
    n = setting.num_identities * setting.num_instances
    batches = [
        device_bench.synthetic_batch(
            n,
            setting.num_instances,
            (height, width),
            setting.num_classes,
            seed=i,
        )
        for i in range(_STEPS.value)
    ]
    result = parity.run_parity(
        parity.initial_state(setting),
        setting,
        dtype=_DTYPE.value,
        wrt_variant=_WRT.value,
        batches=batches,
    )
    title = (
        f"ResNet-{setting.depth} x{setting.width_multiplier:g} at "
        f"{height}x{width}, {_DTYPE.value}, kernels={_KERNELS.value}, "
        f"WRT {_WRT.value}, {_STEPS.value} step(s)"
    )
    devs = parity.tensor_deviations(result)
    # A tensor whose whole update is at float64 rounding level has no
    # update to measure against: the bias of a stage's last non-local
    # block's W_bn only feeds BatchNorms in train mode (which remove any
    # per-channel shift), so its gradient is exactly 0 in exact arithmetic.
    noise = {
        k: (np.max(np.abs(t - start(k, result))), np.max(np.abs(o - t)))
        for k, t in result["torch_final"].items()
        for o in [result["ours_final"][k]]
        if np.max(np.abs(t - start(k, result))) < _NOISE.value
    }
    measured = {k: v for k, v in devs.items() if k not in noise}
    print(parity.report(title, result, measured))
    params = {k: v for k, v in measured.items() if k.startswith("params/")}
    worst = max(params, key=params.get)
    print(
        f"  worst parameter deviation: {params[worst]:.3e} of the update "
        f"({worst}; {len(params)} parameter tensors)"
    )
    print(f"  global L2 deviation: {parity.global_deviation(result):.3e}")
    for k, (update, diff) in sorted(noise.items()):
        print(
            f"  not measured (update {update:.1e} < {_NOISE.value:g}): {k}, "
            f"|ours - torch| {diff:.1e}"
        )


def start(name: str, result) -> np.ndarray:
    """A tensor's value before the steps (0 for momentum buffers)."""
    return 0.0 if "momentum" in name else result["initial"][name]


if __name__ == "__main__":
    app.run(main)
