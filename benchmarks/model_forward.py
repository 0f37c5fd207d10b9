r"""Eval-mode forward throughput of the ResNet-50 MCLNet, ours and torch.

Prints images/s (median over repeats) and the achieved GFLOP/s, with the
FLOP count of the compiled forward from XLA's cost analysis, on the current
JAX backend. With `--torch` it also times the authors' release's forward in
PyTorch (`benchmarks.torch_release`) at the same size in the same run, and
prints the ratio of images/s. Each side runs in a fresh subprocess (its
peak RSS is its own), with every core this process may use (XLA:CPU's
default thread pool; torch.set_num_threads). Importing `mclnet_jax` applies
the package's XLA:CPU defaults (see `mclnet_jax/platform.py`); set
XLA_FLAGS yourself to compare others. The torch side runs with glibc's
malloc tuned for it (`--torch_malloc`, `torch_release.TORCH_GLIBC_TUNABLES`).

  python benchmarks/model_forward.py --torch            # 288x144, batch 64
  python benchmarks/model_forward.py --dtype=bfloat16 --batch=32
  python benchmarks/model_forward.py --kernels=xla
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

if not __package__:  # Run as `python benchmarks/<this file>.py`.
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
# The imports below need the repository on the path (hence E402).
from benchmarks import sides, torch_release  # noqa: E402
from mclnet_jax import platform
from mclnet_jax.models import mclnet, resnet

# The CLI's XLA:CPU defaults, before JAX initialises its backends.
platform.apply_cpu_defaults()

_BATCH = flags.DEFINE_integer("batch", 64, "Images per forward call.")
_HEIGHT = flags.DEFINE_integer("height", 288, "Image height.")
_WIDTH = flags.DEFINE_integer("width", 144, "Image width.")
_DEPTH = flags.DEFINE_integer("depth", 50, "ResNet depth.")
_WIDTH_MULTIPLIER = flags.DEFINE_float(
    "width_multiplier", 1.0, "Channels relative to the ResNet's (tests)."
)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 395, "Identities.")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Ours: the compute dtype. torch: float32, or autocast to bfloat16.",
)
_KERNELS = flags.DEFINE_enum(
    "kernels", "auto", list(mclnet.KERNELS), "MCLNet.kernels."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median taken).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls after compiling.")
_SIDES = sides.define_flags("forward")

# The release's (AGW's) non-local blocks per stage, as configs use them.
_AGW_NON_LOCAL = (0, 2, 3, 0)


def _time(fn):
    walls, cpus = sides.time_calls(fn, _REPEATS.value, warmup=_WARMUP.value)
    return dict(walls=walls, cpus=cpus)


def _shape():
    return (_BATCH.value, _HEIGHT.value, _WIDTH.value, 3)


def non_local_counts(depth: int) -> tuple[int, ...]:
    """AGW's non-local blocks per stage (0, 2, 3, 0), each clipped to the
    blocks of its stage (ResNet-18 has 2 per stage: (0, 2, 2, 0))."""
    resnet.check_depth(depth)
    return tuple(
        min(count, blocks)
        for count, blocks in zip(
            _AGW_NON_LOCAL, resnet.BLOCKS_PER_STAGE[depth], strict=True
        )
    )


def _jax_side():
    model = mclnet.MCLNet(
        num_classes=_NUM_CLASSES.value,
        depth=_DEPTH.value,
        width_multiplier=_WIDTH_MULTIPLIER.value,
        non_local_counts=non_local_counts(_DEPTH.value),
        dtype=jnp.dtype(_DTYPE.value),
        kernels=_KERNELS.value,
    )
    images = jax.random.normal(jax.random.key(1), _shape(), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, images[:1], train=False))(
        jax.random.key(0)
    )

    def forward(variables, images):
        return model.apply(variables, images, train=False)

    t0 = time.perf_counter()
    compiled = jax.jit(forward).lower(variables, images).compile()
    compile_s = time.perf_counter() - t0
    result = _time(lambda: jax.block_until_ready(compiled(variables, images)))
    cores = len(os.sched_getaffinity(0))
    return dict(
        result,
        compile_s=compile_s,
        gflop=sides.flops(compiled) / 1e9,
        threads=f"XLA:CPU default pool ({cores} cores)",
    )


def _torch_side():
    import torch

    threads = torch_release.set_threads()
    forward = torch_release.make_forward(
        depth=_DEPTH.value,
        width_multiplier=_WIDTH_MULTIPLIER.value,
        num_classes=_NUM_CLASSES.value,
        image_size=(_HEIGHT.value, _WIDTH.value),
        batch=_BATCH.value,
        dtype="float32" if _DTYPE.value == "float32" else "autocast_bf16",
        non_local_counts=non_local_counts(_DEPTH.value),
    )
    return dict(
        _time(forward),
        threads=f"torch {torch.__version__}, {threads} intra-op threads",
    )


def _run_child(side):
    """Runs one side in a fresh process; returns its result."""
    args = [
        f"--{flag.name}={flag.value}"
        for flag in (
            _BATCH,
            _HEIGHT,
            _WIDTH,
            _DEPTH,
            _WIDTH_MULTIPLIER,
            _NUM_CLASSES,
            _DTYPE,
            _KERNELS,
            _REPEATS,
            _WARMUP,
        )
    ]
    return sides.run_child(
        __file__,
        side,
        args,
        torch_malloc=_SIDES.torch_malloc.value,
        label=f"{side} side",
    )


def _describe(name, r):
    batch = _BATCH.value
    med = statistics.median(r["walls"])
    cpu = statistics.median(r["cpus"])
    cores = len(os.sched_getaffinity(0))
    line = (
        f"{name}: {batch / med:.1f} images/s (median of {len(r['walls'])} "
        f"batches: {med * 1e3:.0f} ms; min {min(r['walls']) * 1e3:.0f}, max "
        f"{max(r['walls']) * 1e3:.0f}); CPU {cpu:.1f} s per batch "
        f"({batch * cores / cpu:.1f} images/s if all {cores} cores were its "
        f"own); peak RSS {r['peak_rss_gib']:.2f} GiB"
    )
    if "compile_s" in r:
        line += f"; compile {r['compile_s']:.1f} s"
        if r["gflop"]:
            line += (
                f"; XLA cost analysis {r['gflop'] / batch:.2f} GFLOP per "
                f"image, {r['gflop'] / med:.0f} GFLOP/s"
            )
    glibc = r["glibc_tunables"] or "unset"
    return line + f"; {r['threads']}; GLIBC_TUNABLES {glibc}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _SIDES.side.value is not None:
        side = _SIDES.side.value
        sides.print_result(_jax_side() if side == "jax" else _torch_side())
        return 0
    print(
        f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}),"
        f" {len(os.sched_getaffinity(0))} cores"
    )
    print(
        f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r} "
        f"(package defaults applied: {platform.applied_flags()}); "
        f"GLIBC_TUNABLES: {os.environ.get('GLIBC_TUNABLES', '')!r}"
    )
    width = _WIDTH_MULTIPLIER.value
    print(
        f"model: ResNet-{_DEPTH.value}"
        + (f" x{width:g}" if width != 1.0 else "")
        + f" MCLNet (non-local {non_local_counts(_DEPTH.value)}), "
        f"{_NUM_CLASSES.value} ids, "
        f"{_DTYPE.value}, kernels {_KERNELS.value}, input {_shape()}; each "
        "side in its own process, one after the other"
    )
    ours = _run_child("jax")
    print(_describe("ours", ours), flush=True)
    if _SIDES.torch.value:
        theirs = _run_child("torch")
        print(_describe("torch release", theirs), flush=True)
        wall, cpu = sides.speed_ratios(ours, theirs)
        print(f"ours / torch speed: {wall:.2f}x (wall), {cpu:.2f}x (CPU time)")
    return 0


if __name__ == "__main__":
    app.run(main)
