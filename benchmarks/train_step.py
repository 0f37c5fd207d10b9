r"""Seconds per training step and images/s of MCLNet (ResNet-50, 288x144).

Times the full jitted step of mclnet_jax.train_step (one backbone forward,
the MCM update, one backbone backward, both optimiser updates) on the
current JAX backend, for 32+32 and 8+8 images (P x K per modality: 8 x 4
and 2 x 4), with the paper's model (non-local blocks, GeM, BNNeck, 395
classes) and all losses on. Reports the median over repeats after one
warm-up (compile) step, the compile time and the process's peak RSS.

  python benchmarks/train_step.py                 # both batch sizes
  python benchmarks/train_step.py --batches=32 --repeats=5 --dtype=bfloat16

Reference (the authors' PyTorch release on this machine type: torch 2.13
CPU, 2 threads, tuned allocator): 12.4 s per 32+32 step (5.1 images/s) and
3.3 s per 8+8 step (4.9 images/s); it back-propagates twice per step.
"""

import os
import resource
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from mclnet_jax import train_step
from mclnet_jax.configs import settings

_BATCHES = flags.DEFINE_list(
    "batches",
    ["32", "8"],
    "Images per modality, comma-separated (multiples of K = 4).",
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Timed steps (median taken).", lower_bound=1
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16"], "The model's dtype."
)


def _multiples_of_four(batches) -> bool:
    return all(b.isdigit() and int(b) > 0 and int(b) % 4 == 0 for b in batches)


flags.register_validator(
    "batches",
    _multiples_of_four,
    message="--batches: positive multiples of 4 (P x K images, K = 4).",
)

RELEASE_SECONDS = {32: 12.4, 8: 3.3}


def _config(per_modality, dtype):
    config = settings.sysu("mclnet")
    config.data.num_identities = per_modality // 4
    config.data.num_instances = 4
    config.model.dtype = dtype
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


def peak_rss_gib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench(per_modality, *, repeats, dtype, num_classes=395):
    config = _config(per_modality, dtype)
    model = train_step.make_model(config, num_classes=num_classes)
    tx, schedule, mcm_tx = train_step.make_optimizers(
        config, steps_per_epoch=696
    )
    state = train_step.init_state(
        config,
        model=model,
        num_classes=num_classes,
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
    batch = jax.device_put(_batch(config, num_classes))
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return compile_s, times


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(
        f"backend: {jax.default_backend()}, devices: {jax.devices()}, "
        f"dtype: {_DTYPE.value}, cpu count: {os.cpu_count()}"
    )
    print(
        "note: if the machine is shared, figures are noisy; medians of "
        f"{_REPEATS.value} timed steps after a warm-up step."
    )
    for n in (int(b) for b in _BATCHES.value):
        compile_s, times = bench(n, repeats=_REPEATS.value, dtype=_DTYPE.value)
        med = statistics.median(times)
        rate = 2 * n / med
        line = (
            f"{n}+{n} images: {med:.2f} s/step (median; min "
            f"{min(times):.2f}, max {max(times):.2f}), {rate:.2f} "
            f"images/s, first step incl. compile {compile_s:.1f} s, "
            f"peak RSS {peak_rss_gib():.2f} GiB"
        )
        if n in RELEASE_SECONDS and jax.default_backend() == "cpu":
            release_rate = 2 * n / RELEASE_SECONDS[n]
            line += (
                f"; release {RELEASE_SECONDS[n]} s/step "
                f"({release_rate:.1f} images/s): "
                f"{rate / release_rate:.2f}x"
            )
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
