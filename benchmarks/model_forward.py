r"""Eval-mode forward throughput of the ResNet-50 MCLNet.

Prints images/s (median over repeats) and the achieved GFLOP/s, with the
FLOP count of the compiled forward from XLA's cost analysis, on the current
JAX backend. Importing `mclnet_jax` applies the package's XLA:CPU defaults
(see `mclnet_jax/platform.py`); set XLA_FLAGS yourself to compare others.

  python benchmarks/model_forward.py                       # 288x144, batch 64
  python benchmarks/model_forward.py --dtype=bfloat16 --batch=32
  XLA_FLAGS=--xla_cpu_use_xnnpack=false python benchmarks/model_forward.py
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from mclnet_jax import platform
from mclnet_jax.models import mclnet

_BATCH = flags.DEFINE_integer("batch", 64, "Images per forward call.")
_HEIGHT = flags.DEFINE_integer("height", 288, "Image height.")
_WIDTH = flags.DEFINE_integer("width", 144, "Image width.")
_DEPTH = flags.DEFINE_integer("depth", 50, "ResNet depth.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 395, "Identities.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16"], "Compute dtype."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median taken).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls after compiling.")


def _flops(compiled) -> float:
    """FLOPs of one call from XLA's cost analysis (0 if unavailable)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def main(argv):
    del argv
    model = mclnet.MCLNet(
        num_classes=_NUM_CLASSES.value,
        depth=_DEPTH.value,
        dtype=jnp.dtype(_DTYPE.value),
    )
    shape = (_BATCH.value, _HEIGHT.value, _WIDTH.value, 3)
    images = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    variables = jax.jit(lambda k: model.init(k, images[:1], train=False))(
        jax.random.key(0)
    )

    def forward(variables, images):
        return model.apply(variables, images, train=False)

    t0 = time.perf_counter()
    compiled = jax.jit(forward).lower(variables, images).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled)

    for _ in range(_WARMUP.value):
        jax.block_until_ready(compiled(variables, images))
    times, cpu_times = [], []
    for _ in range(_REPEATS.value):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(variables, images))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    median = statistics.median(times)
    # On a shared machine wall time includes waiting for other processes;
    # process CPU time spread over the cores estimates the unshared speed.
    cores = os.cpu_count() or 1
    cpu_bound = statistics.median(cpu_times) / cores

    print(
        f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}),"
        f" {os.cpu_count()} CPUs"
    )
    print(
        f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r} "
        f"(package defaults applied: {platform.applied_flags()})"
    )
    print(
        f"model: ResNet-{_DEPTH.value} MCLNet, {_NUM_CLASSES.value} ids, "
        f"{_DTYPE.value}, input {shape}"
    )
    print(f"compile: {compile_s:.1f} s")
    print(
        f"per batch: median {median * 1e3:.0f} ms over {len(times)} "
        f"(min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f})"
    )
    print(f"throughput: {_BATCH.value / median:.1f} images/s")
    print(
        f"CPU time per batch: median {statistics.median(cpu_times):.1f} s; "
        f"if all {cores} cores were ours: "
        f"{_BATCH.value / cpu_bound:.1f} images/s"
    )
    if flops:
        print(
            f"XLA cost analysis: {flops / 1e9 / _BATCH.value:.2f} GFLOP per "
            f"image; achieved {flops / median / 1e9:.1f} GFLOP/s"
        )
    else:
        print("XLA cost analysis: no FLOP count on this backend")


if __name__ == "__main__":
    app.run(main)
