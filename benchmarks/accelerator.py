r"""MCLNet on a GPU or TPU: correctness, step speed, memory and MFU, one run.

Runs on synthetic in-memory batches over every local device (the global
batch split over a ("data",) mesh, as in training) and needs only jax, flax,
optax, numpy, absl and ml_collections (no TensorFlow). It prints a table and
writes one JSON (--out) with:

  * the devices and the jax / jaxlib versions;
  * a correctness check: a tiny MCLNet's train step on the first device
    against the same step on the CPU, float32 at "highest" matmul precision,
    within 1e-4 relative after 3 steps (on a CPU-only machine both sides are
    the CPU, and the output says so);
  * the full train step of the ResNet-50 MCLNet at 288x144 for each
    --batches (images per modality) and --dtypes: median ms/step, images/s,
    compile time, peak device memory (`memory_stats`, None on CPU; the
    process's running peak: within a batch size bfloat16 runs first), XLA's
    memory estimate of the executable, XLA cost-analysis FLOPs and the MFU
    against `device_bench.PEAK_TFLOPS` (or --peak_tflops);
  * eval-mode forward images/s at --eval_batch in each dtype;
  * with --torch, the release's PyTorch step (`accelerator_torch`) on the
    same kind of device in float32 and autocast bfloat16, and our speed-up;
  * the time of 201 epochs of SYSU-MM01 (696 steps each) at 32+32.

  python benchmarks/accelerator.py --out=accelerator.json  # GPU/TPU machine
  python benchmarks/accelerator.py --batches=32 --dtypes=bfloat16 --torch
  python benchmarks/accelerator.py --tiny                  # CPU, a minute

The measurements are in `device_bench`. They run smallest batch first (the
paper's 32+32), then the eval forward, then the larger batches; one that
would end past --budget_s (default 5.5 minutes from the start) is skipped
and listed. The JSON is rewritten after each measurement. The script runs
from a checkout without installing the project. --tiny: a ResNet-18 x1/16
MCLNet at 32x16, one batch size and eval batch 16, on any machine: a smoke
run of every part (its figures mean nothing).
"""

import json
import math
import os
import platform
import sys
import time

import flax
import jax
import jaxlib
import optax
from absl import app, flags

if not __package__:  # Run as `python benchmarks/accelerator.py`.
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
# The imports below need the repository on the path (hence E402).
from benchmarks import accelerator_torch, device_bench  # noqa: E402
from mclnet_jax import platform as mclnet_platform  # noqa: E402
from mclnet_jax import sharding  # noqa: E402
from mclnet_jax.configs import synthetic, sysu  # noqa: E402

# The CLI's XLA:CPU defaults, before JAX initialises its backends.
mclnet_platform.apply_cpu_defaults()

DTYPES = device_bench.DTYPES
PAPER_BATCH = 32  # Images per modality: P = 8 identities x K = 4.
EPOCHS, STEPS_PER_EPOCH = 201, 696  # SYSU-MM01 as the release trains it.
NUM_CLASSES = 395
# --tiny: configs/synthetic.py:tiny=1, as the correctness check.
TINY_EVAL_BATCH = 16
TINY_NUM_CLASSES = device_bench.TINY_NUM_CLASSES
TINY_BATCH = device_bench.TINY_BATCH


def sysu_estimate(rows, n) -> list[dict]:
    """Hours of 201 epochs x 696 steps at `n`+`n`, from the measured steps."""
    steps = EPOCHS * STEPS_PER_EPOCH
    return [
        {
            "dtype": r["dtype"],
            "batch": r["batch"],
            "steps": steps,
            "hours": r["median_ms"] / 1e3 * steps / 3600,
        }
        for r in rows
        if r["batch"][0] == n
    ]


def _fmt(value, spec, scale=1.0):
    return "-" if value is None else format(value * scale, spec)


def _table(title: str, head, rows) -> None:
    line = "{:>11}" * len(head)
    print(f"\n{title}\n{line.format(*head)}")
    for row in rows:
        print(line.format(*row))


def print_table(report) -> None:
    """Prints the report as tables."""
    env, peaks, check = (
        report["environment"],
        report["peak_tflops"],
        report["correctness"],
    )
    print(
        f"devices: {env['device_count']} x {env['device_kind']} "
        f"({env['platform']}); jax {env['jax']}, jaxlib {env['jaxlib']}; "
        f"peak TFLOP/s per device: float32 {_fmt(peaks['float32'], '.1f')}, "
        f"bfloat16 {_fmt(peaks['bfloat16'], '.1f')} ({peaks['name']}, "
        f"{peaks['source'] or 'unknown device: no MFU'})"
    )
    print(
        f"correctness: {'PASSED' if check['passed'] else 'FAILED'}: max "
        f"relative error {check['max_relative_error']:.2e} (at "
        f"{check['worst_leaf']}) after {check['steps']} steps, tolerance "
        f"{check['tolerance']:.0e}; {check['note']}"
    )
    m, batch = report["model"], "{0}+{1}".format
    head = ("batch", "dtype", "ms", "images/s", "compile s", "MFU")
    _table(
        f"train step, ResNet-{m['depth']} x{m['width_multiplier']:g} MCLNet "
        f"at {m['image_size'][0]}x{m['image_size'][1]}:",
        head + ("GFLOP/dev", "peak GiB", "XLA GiB"),
        [
            (
                batch(*r["batch"]),
                r["dtype"],
                *(_fmt(r[k], ".1f") for k in ("median_ms", "images_per_s")),
                _fmt(r["compile_s"], ".1f"),
                _fmt(r["mfu"], ".1%"),
                _fmt(r["flops_per_device"], ".4g", 1e-9),
                _fmt(r["peak_device_bytes"], ".3g", 2**-30),
                _fmt(r["executable_bytes"], ".3g", 2**-30),
            )
            for r in report["train_step"]
        ],
    )
    _table(
        "eval forward (one modality):",
        head,
        [
            (r["batch"], r["dtype"], f"{r['median_ms']:.1f}")
            + (f"{r['images_per_s']:.1f}", f"{r['compile_s']:.1f}")
            + (_fmt(r["mfu"], ".1%"),)
            for r in report["eval_forward"]
        ],
    )
    if report["torch"]:
        t = report["torch"]
        _table(
            f"PyTorch release step on {t['device']}, bfloat16 as autocast "
            "(ours / torch):",
            ("batch", "dtype", "torch ms", "ours ms", "speed-up"),
            [
                (batch(*t["batch"]), r["dtype"], f"{r['median_ms']:.1f}")
                + (_fmt(r["ours_median_ms"], ".1f"), _fmt(r["speedup"], ".2f"))
                for r in t["rows"]
            ],
        )
    _table(
        f"{EPOCHS} epochs of SYSU-MM01 ({STEPS_PER_EPOCH} steps each):",
        ("batch", "dtype", "hours"),
        [
            (batch(*r["batch"]), r["dtype"], f"{r['hours']:.1f}")
            for r in report["sysu_201_epochs"]
        ],
    )
    if not report["sysu_201_epochs"]:
        print("  (none: --batches did not include the paper's batch)")
    for skipped in report["skipped"]:
        print(f"skipped (--budget_s): {skipped}")
    print(
        f"\nTensorFlow imported: {report['tensorflow_imported']}; "
        f"elapsed {report['elapsed_s']:.0f} s; JSON: {report['out']}"
    )


def _int_list(name, values) -> list[int]:
    if not all(v.isdigit() and int(v) > 0 for v in values):
        raise app.UsageError(f"--{name}: positive integers, got {values}.")
    return [int(v) for v in values]


def _write(report) -> None:
    tmp = report["out"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, report["out"])


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command line's flags (defined when run as a program only)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("out", "accelerator.json", "The JSON written.", **fv)
    flags.DEFINE_bool("tiny", False, "Tiny model and sizes, for CPUs.", **fv)
    flags.DEFINE_list(
        "batches",
        ["32", "64", "128"],
        "Images per modality (P x K, K = 4).",
        **fv,
    )
    flags.DEFINE_list("dtypes", list(DTYPES), "config.model.dtype's.", **fv)
    flags.DEFINE_integer("repeats", 10, "Timed calls.", lower_bound=1, **fv)
    flags.DEFINE_integer("eval_batch", 256, "Eval forward batch.", **fv)
    flags.DEFINE_list(
        "peak_tflops",
        [],
        "Dense peak TFLOP/s per device for the MFU: one number for every "
        "dtype, or DTYPE=NUMBER items (float32=494.7,bfloat16=989.4).",
        **fv,
    )
    flags.DEFINE_bool("torch", False, "Also time the PyTorch release.", **fv)
    flags.DEFINE_float(
        "budget_s",
        330.0,
        "Skip the measurements that would end past this many seconds.",
        **fv,
    )
    flags.DEFINE_string(
        "compilation_cache_dir",
        None,
        "JAX's persistent compilation cache.",
        **fv,
    )


def _sizes(fl: flags.FlagValues):
    """(batches, eval batch, repeats, dtypes) from the flags.

    Raises:
      app.UsageError: naming the bad flag.
    """
    tiny = fl.tiny
    batches = _int_list("batches", fl.batches)
    if tiny and not fl["batches"].present:
        batches = [TINY_BATCH]
    eval_batch = fl.eval_batch
    if tiny and not fl["eval_batch"].present:
        eval_batch = TINY_EVAL_BATCH
    if eval_batch < 1:
        raise app.UsageError(f"--eval_batch: positive, got {eval_batch}.")
    repeats = 2 if tiny and not fl["repeats"].present else fl.repeats
    dtypes = [d for d in DTYPES if d in fl.dtypes]
    if not dtypes or len(dtypes) != len(set(fl.dtypes)):
        raise app.UsageError(f"--dtypes: from {DTYPES}, got {fl.dtypes}.")
    return batches, eval_batch, repeats, dtypes


def _check_divisible(batches, eval_batch, k: int, devices: int) -> None:
    """Batches split into identities of K and evenly over the devices."""
    checks = [("batches", n, math.lcm(k, devices)) for n in batches]
    for name, n, multiple in checks + [("eval_batch", eval_batch, devices)]:
        if n % multiple:
            raise app.UsageError(
                f"--{name}: {n} must be a multiple of {multiple} (K = {k} "
                f"images per identity, {devices} local devices)."
            )


def _environment(devices, cache_dir) -> dict:
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compilation_cache_dir": cache_dir,
    }


def _jobs(batches, dtypes, eval_batch):
    """(part, batch, dtype) in the order run: the smallest batch (the
    paper's), the eval forward, then the larger batches. bfloat16 first
    within a batch size, as the peak memory is the process's running peak."""
    batches = sorted(batches)
    train = [
        [("train_step", n, d) for d in sorted(dtypes, key="bfloat16".__ne__)]
        for n in batches
    ]
    evals = [("eval_forward", eval_batch, d) for d in dtypes]
    return train[0] + evals + sum(train[1:], [])


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    start, fl = time.perf_counter(), flag_values
    if fl.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", fl.compilation_cache_dir)
    tiny = fl.tiny
    batches, eval_batch, repeats, dtypes = _sizes(fl)
    config = synthetic.get_config("tiny=1") if tiny else sysu.get_config()
    num_classes = TINY_NUM_CLASSES if tiny else NUM_CLASSES
    paper_batch = TINY_BATCH if tiny else PAPER_BATCH
    k = config.data.num_instances
    _check_divisible(batches + [paper_batch], eval_batch, k, 1)
    # Before JAX initialises its backends (see accelerator_torch).
    torch_report = None
    if fl.torch:
        torch_report = accelerator_torch.bench_torch(
            config, num_classes, paper_batch, repeats
        )
    devices = jax.local_devices()
    _check_divisible(batches, eval_batch, k, len(devices))
    try:
        peaks = device_bench.peak_tflops(devices[0].device_kind, fl.peak_tflops)
    except ValueError as e:
        raise app.UsageError(f"--peak_tflops: {e}") from e
    report = {
        "out": fl.out,
        "command": sys.argv,
        "tiny": tiny,
        "environment": _environment(devices, fl.compilation_cache_dir),
        "peak_tflops": peaks,
        "model": {
            "depth": config.model.depth,
            "width_multiplier": config.model.width_multiplier,
            "image_size": list(config.data.image_size),
            "num_classes": num_classes,
        },
        "correctness": None,
        "train_step": [],
        "eval_forward": [],
        "torch": torch_report,
        "sysu_201_epochs": [],
    }
    state = device_bench.host_state(config, num_classes)
    report["correctness"] = device_bench.correctness_check(
        devices[0], state if tiny else None
    )
    _write(report)
    bench = device_bench.Bench(
        config=config,
        num_classes=num_classes,
        mesh=sharding.make_mesh(devices),
        peaks=peaks,
        repeats=repeats,
        state=state,
    )
    report["skipped"] = []
    for kind, n, dtype in _jobs(batches, dtypes, eval_batch):
        elapsed = time.perf_counter() - start
        longest = max([0.0] + [r["wall_s"] for r in report["train_step"]])
        if elapsed + 1.25 * longest > fl.budget_s:
            report["skipped"].append({"part": kind, "batch": n, "dtype": dtype})
            continue
        run = (
            device_bench.bench_train_step
            if kind == "train_step"
            else (device_bench.bench_eval)
        )
        report[kind].append(run(bench, n, dtype))
        _write(report)
    if torch_report:
        accelerator_torch.add_speedups(
            torch_report, report["train_step"], devices[0].platform
        )
    report["sysu_201_epochs"] = sysu_estimate(report["train_step"], paper_batch)
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    report["elapsed_s"] = time.perf_counter() - start
    _write(report)
    print_table(report)
    return 0 if report["correctness"]["passed"] else 1


if __name__ == "__main__":
    define_flags()
    app.run(main)
