r"""Seconds per training step of MCLNet (ResNet-50, 288x144), ours and torch.

Times the full jitted step of mclnet_jax.train_step (one backbone forward,
the MCM update, one backbone backward, both optimiser updates) on the
current JAX backend, for 32+32 and 8+8 images (P x K per modality: 8 x 4
and 2 x 4), with the paper's model (non-local blocks, GeM, BNNeck, 395
classes) and all losses on. With `--torch` it also times the authors'
release's step in PyTorch (`benchmarks.torch_release`: two backward passes)
at the same sizes in the same run, and prints the ratio of images/s.

Each (side, batch) runs in a fresh subprocess, so that peak RSS is that
side's alone; both use every core this process may use (XLA:CPU's default
thread pool; torch.set_num_threads). Per side: one untimed step (JAX: after
compiling), then the median of `--repeats` timed steps, and the process CPU
time per step. Both children inherit this process's environment (XLA_FLAGS,
GLIBC_TUNABLES, ...); unless GLIBC_TUNABLES is set, the torch side runs
with glibc's malloc tuned for it (`--torch_malloc`).

  python benchmarks/train_step.py --torch --batches=32
  python benchmarks/train_step.py --batches=32,8 --repeats=5 --kernels=xla
  python benchmarks/train_step.py --torch --dtype=bfloat16 --remat=blocks
"""

import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

if not __package__:  # Run as `python benchmarks/<this file>.py`.
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
# The imports below need the repository on the path (hence E402).
from benchmarks import sides, torch_release  # noqa: E402
from mclnet_jax import platform, train_step
from mclnet_jax.configs import sysu

# The CLI's XLA:CPU defaults, before JAX initialises its backends.
platform.apply_cpu_defaults()

_BATCHES = flags.DEFINE_list(
    "batches",
    ["32", "8"],
    "Images per modality, comma-separated (multiples of K = 4).",
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Timed steps (median taken).", lower_bound=1
)
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Ours: config.model.dtype. torch: float32, or autocast to bfloat16.",
)
_KERNELS = flags.DEFINE_enum(
    "kernels",
    None,
    ["auto", "xla", "cpu"],
    "config.model.kernels (None: the config's default).",
)
_REMAT = flags.DEFINE_enum(
    "remat",
    None,
    ["none", "blocks", "stages"],
    "config.model.remat (None: the config's default).",
)
_SIDES = sides.define_flags("step")

NUM_CLASSES = 395


def _multiples_of_four(batches) -> bool:
    return all(b.isdigit() and int(b) > 0 and int(b) % 4 == 0 for b in batches)


flags.register_validator(
    "batches",
    _multiples_of_four,
    message="--batches: positive multiples of 4 (P x K images, K = 4).",
)


def _config(per_modality, dtype, kernels, remat):
    config = sysu.get_config("mclnet")
    config.data.num_identities = per_modality // 4
    config.data.num_instances = 4
    config.model.dtype = dtype
    if kernels is not None:
        config.model.kernels = kernels
    if remat is not None:
        config.model.remat = remat
    return config


def _batch(config, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    p, k = config.data.num_identities, config.data.num_instances
    h, w = config.data.image_size
    labels = np.repeat(rng.choice(num_classes, p, replace=False), k)
    return {
        "visible": rng.normal(size=(p * k, h, w, 3)).astype(np.float32),
        "infrared": rng.normal(size=(p * k, h, w, 3)).astype(np.float32),
        "visible_labels": labels.astype(np.int32),
        "infrared_labels": labels.astype(np.int32),
        "visible_cameras": rng.choice([1, 2, 4, 5], p * k).astype(np.int32),
        "infrared_cameras": rng.choice([3, 6], p * k).astype(np.int32),
    }


def _jax_side(n, *, repeats, dtype, kernels, remat):
    config = _config(n, dtype, kernels, remat)
    model = train_step.make_model(config, num_classes=NUM_CLASSES)
    tx, schedule, mcm_tx = train_step.make_optimizers(
        config, steps_per_epoch=696
    )
    state = train_step.init_state(
        config,
        model=model,
        num_classes=NUM_CLASSES,
        num_cameras=6,
        tx=tx,
        mcm_tx=mcm_tx,
    )
    step = jax.jit(
        train_step.make_train_step(
            config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
        ),
        donate_argnums=0,
    )
    batch = jax.device_put(_batch(config, NUM_CLASSES))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    rss_compiled = sides.peak_rss_gib()
    platform.release_host_memory()  # As the training loop does.
    memory = compiled.memory_analysis()
    temp_gib = getattr(memory, "temp_size_in_bytes", 0) / 2**30
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready(metrics)
        return metrics

    first_s = sides.time_calls(run, 1)[0][0]
    walls, cpus = sides.time_calls(run, repeats)
    loss = float(run()["loss"])
    return dict(
        compile_s=compile_s,
        first_s=first_s,
        walls=walls,
        cpus=cpus,
        gflop=sides.flops(compiled) / 1e9,
        rss_compiled_gib=rss_compiled,
        temp_gib=temp_gib,
        loss=loss,
        kernels=config.model.kernels,
        remat=config.model.remat,
        threads=f"XLA:CPU default pool ({len(os.sched_getaffinity(0))} cores)",
    )


def _torch_side(n, *, repeats, dtype):

    threads = torch_release.set_threads()
    step = torch_release.make_step(
        num_classes=NUM_CLASSES,
        batch=(n, n),
        dtype="float32" if dtype == "float32" else "autocast_bf16",
    )
    first_s = sides.time_calls(step, 1)[0][0]
    walls, cpus = sides.time_calls(step, repeats)
    import torch

    return dict(
        first_s=first_s,
        walls=walls,
        cpus=cpus,
        loss=step()["loss"],
        threads=f"torch {torch.__version__}, {threads} intra-op threads",
    )


def _run_child(side, n):
    """Runs one (side, batch) in a fresh process; returns its result."""
    args = [
        f"--batches={n}",
        f"--repeats={_REPEATS.value}",
        f"--dtype={_DTYPE.value}",
    ]
    for flag in (_KERNELS, _REMAT):
        if flag.value is not None:
            args.append(f"--{flag.name}={flag.value}")
    return sides.run_child(
        __file__,
        side,
        args,
        torch_malloc=_SIDES.torch_malloc.value,
        label=f"{side} side at {n}+{n}",
    )


def _describe(name, n, r):
    med = statistics.median(r["walls"])
    cores = len(os.sched_getaffinity(0))
    cpu = statistics.median(r["cpus"])
    line = (
        f"  {name}: {med:.2f} s/step (median of {len(r['walls'])}; min "
        f"{min(r['walls']):.2f}, max {max(r['walls']):.2f}), "
        f"{2 * n / med:.2f} images/s; CPU {cpu:.1f} s/step "
        f"({2 * n * cores / cpu:.2f} images/s if all {cores} cores were "
        f"its own); peak RSS {r['peak_rss_gib']:.2f} GiB; "
        f"first step {r['first_s']:.1f} s"
    )
    if "compile_s" in r:
        line += (
            f" after {r['compile_s']:.1f} s compiling; XLA cost analysis "
            f"{r['gflop'] / (2 * n):.1f} GFLOP per image; XLA temp buffer "
            f"{r['temp_gib']:.2f} GiB, peak RSS after compiling "
            f"{r['rss_compiled_gib']:.2f} GiB; kernels "
            f"{r['kernels']}, remat {r['remat']}"
        )
    return line + (
        f"; {r['threads']}; GLIBC_TUNABLES "
        f"{r['glibc_tunables'] or 'unset'}; loss {r['loss']:.3f}"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _SIDES.side.value is not None:
        (n,) = (int(b) for b in _BATCHES.value)
        kwargs = dict(repeats=_REPEATS.value, dtype=_DTYPE.value)
        if _SIDES.side.value == "jax":
            result = _jax_side(
                n, kernels=_KERNELS.value, remat=_REMAT.value, **kwargs
            )
        else:
            result = _torch_side(n, **kwargs)
        sides.print_result(result)
        return 0
    print(
        f"backend: {jax.default_backend()}, devices: {jax.devices()}, "
        f"dtype: {_DTYPE.value}, cores: {len(os.sched_getaffinity(0))}, "
        f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}, "
        f"GLIBC_TUNABLES: {os.environ.get('GLIBC_TUNABLES', '')!r}"
    )
    print(
        "each side in its own process, one after the other; on a shared "
        "machine wall times are noisy (the CPU-time figure estimates the "
        "unshared speed)."
    )
    for n in (int(b) for b in _BATCHES.value):
        print(f"{n}+{n} images:", flush=True)
        ours = _run_child("jax", n)
        print(_describe("ours", n, ours), flush=True)
        if not _SIDES.torch.value:
            continue
        theirs = _run_child("torch", n)
        print(_describe("torch release", n, theirs), flush=True)
        wall, cpu = sides.speed_ratios(ours, theirs)
        rss = ours["peak_rss_gib"] / theirs["peak_rss_gib"]
        print(
            f"  ours / torch speed: {wall:.2f}x (wall), {cpu:.2f}x (CPU "
            f"time); peak RSS ours / torch: {rss:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    app.run(main)
