"""Measurements of MCLNet on the local devices, for benchmarks/accelerator.py.

The devices' peak FLOP/s (`PEAK_TFLOPS`), synthetic batches and train
states, the check of a tiny train step against the CPU, and the timed train
step and eval forward over a ("data",) mesh of every local device, with
XLA's FLOP count and memory estimate. Needs no TensorFlow.
"""

import dataclasses
import re
import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from mclnet_jax import sharding, train_step
from mclnet_jax.configs import synthetic

DTYPES = ("float32", "bfloat16")
NUM_CAMERAS = 6
STEPS_PER_EPOCH = 696  # For the learning-rate schedule (SYSU-MM01).
CHECK_STEPS, CHECK_TOLERANCE = 3, 1e-4
# The correctness check's model: configs/synthetic.py:tiny=1.
TINY_NUM_CLASSES, TINY_BATCH = 8, 4

# Dense (no sparsity) peak TFLOP/s per JAX device: (regular expression on
# the lower-cased device_kind, name, {dtype: TFLOP/s}). "float32" is what
# XLA's default precision runs float32 convolutions at: TF32 tensor cores on
# NVIDIA GPUs, one bfloat16 pass on TPUs (JAX docs, "Matmul precision").
# NVIDIA datasheets give tensor-core rates with 2:4 sparsity; dense is half.
PEAK_TFLOPS = (
    # NVIDIA H100 datasheet, PCIe: BF16 1,513 / TF32 756 (sparse).
    (r"h100.*pcie", "H100 PCIe", {"bfloat16": 756.5, "float32": 378.0}),
    # NVIDIA H100 datasheet, NVL: BF16 1,671 / TF32 835 (sparse).
    (r"h100.*nvl", "H100 NVL", {"bfloat16": 835.5, "float32": 417.5}),
    # NVIDIA H100 datasheet, SXM5: BF16 1,979 / TF32 989 (sparse).
    (r"h100", "H100 SXM", {"bfloat16": 989.4, "float32": 494.7}),
    # NVIDIA H200 datasheet, H200 NVL: BF16 1,671 / TF32 835 (sparse).
    (r"h200.*nvl", "H200 NVL", {"bfloat16": 835.5, "float32": 417.5}),
    # NVIDIA H200 datasheet, H200 SXM: BF16 1,979 / TF32 989 (sparse).
    (r"h200", "H200 SXM", {"bfloat16": 989.4, "float32": 494.7}),
    # NVIDIA A100 datasheet (SXM and PCIe): BF16 312 / TF32 156 dense.
    (r"a100", "A100", {"bfloat16": 312.0, "float32": 156.0}),
    # NVIDIA L4 datasheet: BF16 242 / TF32 120 (sparse).
    (r"\bl4\b", "L4", {"bfloat16": 121.0, "float32": 60.0}),
    # Cloud TPU docs, TPU v4: 275 TFLOP/s bf16 per chip.
    (r"^tpu v4$", "TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    # Cloud TPU docs, TPU v5e ("TPU v5 lite"): 197 TFLOP/s bf16 per chip.
    (r"^tpu v5( lite|e)$", "TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    # Cloud TPU docs, TPU v5p ("TPU v5"): 459 TFLOP/s bf16 per chip.
    (r"^tpu v5p?$", "TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    # Cloud TPU docs, TPU v6e ("TPU v6 lite"): 918 TFLOP/s bf16 per chip.
    (r"^tpu v6( lite|e)$", "TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
)


def peak_tflops(device_kind: str, override=()) -> dict:
    """{"name", "source", "float32", "bfloat16"} for `device_kind`.

    Args:
      device_kind: a JAX device's `device_kind`.
      override: items "NUMBER" (every dtype) or "DTYPE=NUMBER" (TFLOP/s)
        used instead of the table.

    Raises:
      ValueError: a malformed `override` item.
    """
    if override:
        out = {"name": device_kind, "source": "--peak_tflops"}
        for item in override:
            dtype, _, value = item.rpartition("=")
            dtypes = [dtype] if dtype else list(DTYPES)
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if number <= 0 or any(d not in DTYPES for d in dtypes):
                raise ValueError(
                    f"peak TFLOP/s: {item!r} is neither a positive number "
                    f"nor DTYPE=NUMBER with DTYPE in {DTYPES}."
                )
            out.update(dict.fromkeys(dtypes, number))
        return {d: None for d in DTYPES} | out
    for pattern, name, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_kind.lower()):
            return {"name": name, "source": "PEAK_TFLOPS", **peaks}
    return {"name": device_kind, "source": None, **dict.fromkeys(DTYPES)}


def synthetic_batch(n: int, k: int, size, num_classes: int, seed: int = 0):
    """n visible + n infrared images of n // k identities, k images each."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(num_classes, n // k, replace=False), k)
    images = rng.normal(size=(2, n, *size, 3)).astype(np.float32)
    return {
        "visible": images[0],
        "infrared": images[1],
        "visible_labels": labels.astype(np.int32),
        "infrared_labels": labels.astype(np.int32),
        "visible_cameras": rng.choice([1, 2, 4, 5], n).astype(np.int32),
        "infrared_cameras": rng.choice([3, 6], n).astype(np.int32),
    }


def _model_and_step(config, num_classes):
    """(MCLNet, un-jitted train step, optimisers) for `config`."""
    model = train_step.make_model(config, num_classes=num_classes)
    tx, schedule, mcm_tx = train_step.make_optimizers(
        config, steps_per_epoch=STEPS_PER_EPOCH
    )
    step = train_step.make_train_step(
        config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
    )
    return model, step, (tx, mcm_tx)


def host_state(config, num_classes):
    """A fresh train state in host memory, initialised on the CPU.

    The same for every compute dtype: parameters, statistics and optimiser
    state stay float32.
    """
    model, _, (tx, mcm_tx) = _model_and_step(config, num_classes)
    # The values do not matter here; the non-partitionable threefry compiles
    # the initialisation several times faster on the CPU.
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu), jax.threefry_partitionable(False):
        state = train_step.init_state(
            config,
            model=model,
            num_classes=num_classes,
            num_cameras=NUM_CAMERAS,
            tx=tx,
            mcm_tx=mcm_tx,
            load_pretrained=False,
        )
    return jax.device_get(state)


def _relative_errors(tree, reference):
    """{leaf path: ||a - b|| / ||b||} over two pytrees' leaves (inf: NaN)."""
    out = {}
    leaves = jax.tree_util.tree_leaves_with_path(reference)
    for (path, b), a in zip(leaves, jax.tree.leaves(tree), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        norm = np.linalg.norm(b)
        diff = np.linalg.norm(a - b)
        err = float(diff / norm if norm else diff)
        out[jax.tree_util.keystr(path)] = err if np.isfinite(err) else np.inf
    return out


def correctness_check(device, state=None) -> dict:
    """A tiny MCLNet's train step on `device` against the same on the CPU.

    float32 at "highest" matmul precision, `CHECK_STEPS` steps from the same
    state on the same batches; every leaf of the states and metrics must
    agree within `CHECK_TOLERANCE` (relative, in the L2 norm).

    Args:
      device: the device checked.
      state: `host_state` of configs/synthetic.py:tiny=1, if made
        already.

    Returns:
      The check's JSON entry ("passed", "max_relative_error", ...).
    """
    config = synthetic.get_config("tiny=1")
    k = config.data.num_instances
    batches = [
        synthetic_batch(
            TINY_BATCH, k, config.data.image_size, TINY_NUM_CLASSES, seed=s
        )
        for s in range(CHECK_STEPS)
    ]
    _, step, _ = _model_and_step(config, TINY_NUM_CLASSES)
    if state is None:
        state = host_state(config, TINY_NUM_CLASSES)
    results = {}
    with jax.default_matmul_precision("highest"):
        jitted = jax.jit(step)
        for side, dev in (("device", device), ("cpu", jax.devices("cpu")[0])):
            out = jax.device_put(state, dev)
            for batch in batches:
                out, metrics = jitted(out, jax.device_put(batch, dev))
            results[side] = jax.device_get({"state": out, "metrics": metrics})
    errors = _relative_errors(results["device"], results["cpu"])
    worst = max(errors, key=errors.get)
    cpu_only = device.platform == "cpu"
    return {
        "device": device.device_kind,
        "reference": "cpu",
        "cpu_only": cpu_only,
        "note": (
            "CPU-only machine: both sides ran on the CPU"
            if cpu_only
            else f"{device.device_kind} against the CPU"
        ),
        "steps": CHECK_STEPS,
        "max_relative_error": errors[worst],
        "worst_leaf": worst,
        "tolerance": CHECK_TOLERANCE,
        "passed": errors[worst] <= CHECK_TOLERANCE,
    }


def _cost(compiled) -> tuple[float | None, int | None]:
    """(FLOPs per device, XLA's memory estimate in bytes) of an executable."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    mem = compiled.memory_analysis()
    size = None
    if mem is not None:
        size = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
    return (float(flops) if flops else None), size


def _peak_memory() -> int | None:
    stats = [d.memory_stats() for d in jax.local_devices()]
    if any(s is None or "peak_bytes_in_use" not in s for s in stats):
        return None
    return max(s["peak_bytes_in_use"] for s in stats)


def timed(run, state, repeats):
    """`state = run(state)` once, then `repeats` times timed.

    Returns:
      (the last state, [seconds of each timed call]).
    """
    state = jax.block_until_ready(run(state))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = jax.block_until_ready(run(state))
        times.append(time.perf_counter() - start)
    return state, times


def _rates(times, images, flops, peak_tflops, compile_s):
    med = statistics.median(times)
    mfu = flops / med / (peak_tflops * 1e12) if flops and peak_tflops else None
    return {
        "median_ms": med * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "images_per_s": images / med,
        "compile_s": compile_s,
        "flops_per_device": flops,
        "mfu": mfu,
    }


@dataclasses.dataclass(frozen=True)
class Bench:
    """What every timed measurement shares.

    Attributes:
      config: the run's config (its model, image size and K).
      num_classes: identities of the classifier.
      mesh: the ("data",) mesh of the devices measured.
      peaks: `peak_tflops(...)` of the devices.
      repeats: timed calls per measurement (after one warm-up call).
      state: `host_state(config, num_classes)`.
    """

    config: ml_collections.ConfigDict
    num_classes: int
    mesh: jax.sharding.Mesh
    peaks: dict
    repeats: int
    state: Any


def _with_dtype(config, dtype):
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    return config


def bench_train_step(bench: Bench, n: int, dtype: str) -> dict:
    """The full train step at n+n images in `dtype`, timed and costed."""
    wall = time.perf_counter()
    config = _with_dtype(bench.config, dtype)
    mesh, replicated = bench.mesh, sharding.replicated(bench.mesh)
    _, step, _ = _model_and_step(config, bench.num_classes)
    batch = synthetic_batch(
        n,
        config.data.num_instances,
        config.data.image_size,
        bench.num_classes,
    )
    batch = jax.device_put(batch, sharding.batch_sharded(mesh))
    state = jax.device_put(bench.state, replicated)
    jitted = train_step.jit_train_step(
        step, mesh=mesh, state_sharding=replicated
    )
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    (state, metrics), times = timed(
        lambda sm: compiled(sm[0], batch), (state, None), bench.repeats
    )
    loss = float(metrics["loss"])
    del state
    flops, executable = _cost(compiled)
    row = {"dtype": dtype, "batch": [n, n], "images_per_step": 2 * n}
    row |= _rates(times, 2 * n, flops, bench.peaks[dtype], compile_s)
    return row | {
        "executable_bytes": executable,
        "peak_device_bytes": _peak_memory(),
        "final_loss": loss,
        "loss_finite": bool(np.isfinite(loss)),
        "wall_s": time.perf_counter() - wall,
    }


def bench_eval(bench: Bench, batch: int, dtype: str) -> dict:
    """Eval-mode forward of one modality (features "bn"): images/s."""
    config = _with_dtype(bench.config, dtype)
    mesh = bench.mesh
    model, _, _ = _model_and_step(config, bench.num_classes)
    variables = jax.device_put(
        bench.state.model_variables(), sharding.replicated(mesh)
    )
    h, w = config.data.image_size
    images = np.random.default_rng(1).normal(size=(batch, h, w, 3))
    images = jax.device_put(
        images.astype(np.float32), sharding.batch_sharded(mesh)
    )
    forward = jax.jit(
        lambda v, x: model.apply(v, x, train=False)["bn"],
        out_shardings=sharding.batch_sharded(mesh),
    )
    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    _, times = timed(lambda _: compiled(variables, images), None, bench.repeats)
    flops, _ = _cost(compiled)
    row = {"dtype": dtype, "batch": batch}
    return row | _rates(times, batch, flops, bench.peaks[dtype], compile_s)
