r"""Seconds per training step and images/s of MCLNet (ResNet-50, 288x144).

Times the full jitted step of mclnet_jax.train (one backbone forward, the MCM
update, one backbone backward, both optimiser updates) on the current JAX
backend, for 32+32 and 8+8 images (P x K per modality: 8 x 4 and 2 x 4),
with the paper's model (non-local blocks, GeM, BNNeck, 395 classes) and all
losses on. Reports the median over repeats after one warm-up (compile) step,
the compile time and the process's peak RSS.

  python benchmarks/train_step.py                 # both batch sizes
  python benchmarks/train_step.py --batches=32 --repeats=5 --dtype=bfloat16

Reference (the authors' PyTorch release on this machine type: torch 2.13
CPU, 2 threads, tuned allocator): 12.4 s per 32+32 step (5.1 images/s) and
3.3 s per 8+8 step (4.9 images/s); it back-propagates twice per step.
"""

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import time

import jax
import numpy as np

from mclnet_jax import train

RELEASE_SECONDS = {32: 12.4, 8: 3.3}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(per_modality, dtype):
    spec = importlib.util.spec_from_file_location(
        "mclnet_configs_sysu", os.path.join(_REPO, "configs", "sysu.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("mclnet")
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
    model = train.make_model(config, num_classes=num_classes)
    tx, schedule, mcm_tx = train.make_optimizers(config, steps_per_epoch=696)
    state = train.init_state(
        config,
        model=model,
        num_classes=num_classes,
        num_cameras=6,
        tx=tx,
        mcm_tx=mcm_tx,
    )
    step = jax.jit(
        train.make_train_step(
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--batches", default="32,8", help="images per modality, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"]
    )
    args = parser.parse_args(argv)
    print(
        f"backend: {jax.default_backend()}, devices: {jax.devices()}, "
        f"dtype: {args.dtype}, cpu count: {os.cpu_count()}"
    )
    print(
        "note: if the machine is shared, figures are noisy; medians of "
        f"{args.repeats} timed steps after a warm-up step."
    )
    for n in (int(b) for b in args.batches.split(",")):
        compile_s, times = bench(n, repeats=args.repeats, dtype=args.dtype)
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
    sys.exit(main())
