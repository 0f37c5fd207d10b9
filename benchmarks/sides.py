"""Ours against the release, each side in a child process of its own.

What `model_forward.py` and `train_step.py` share: the `--torch`,
`--torch_malloc` and internal `--side` flags, timing a callable, XLA's FLOP
count, and running one side in a fresh process (so that its peak RSS is its
own) that prints its result as one JSON line.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

from absl import flags

from benchmarks import torch_release

RESULT_PREFIX = "RESULT_JSON "
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags(what: str) -> types.SimpleNamespace:
    """--torch ("Also time the release's `what` in PyTorch"),
    --torch_malloc and --side; returns their holders."""
    return types.SimpleNamespace(
        torch=flags.DEFINE_bool(
            "torch", False, f"Also time the release's {what} in PyTorch."
        ),
        torch_malloc=flags.DEFINE_enum(
            "torch_malloc",
            "tuned",
            ["tuned", "default"],
            "glibc malloc of the torch side: 'tuned' sets GLIBC_TUNABLES to "
            "torch_release.TORCH_GLIBC_TUNABLES (unless already set), "
            "'default' leaves glibc's defaults.",
        ),
        side=flags.DEFINE_enum(
            "side",
            None,
            ["jax", "torch"],
            "Internal: time one side in this process and print its result.",
        ),
    )


def time_calls(fn, repeats: int, *, warmup: int = 0):
    """(walls, cpus): seconds of `repeats` calls of `fn` after `warmup`
    untimed ones, wall clock and this process's CPU time."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def flops(compiled) -> float:
    """FLOPs of one call from XLA's cost analysis (0 if unavailable)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def peak_rss_gib() -> float:
    """This process's peak resident set so far, GiB."""
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def print_result(result: dict) -> None:
    """The child's last word: `result` with its peak RSS and GLIBC_TUNABLES."""
    glibc = os.environ.get("GLIBC_TUNABLES", "")
    result = dict(result, peak_rss_gib=peak_rss_gib(), glibc_tunables=glibc)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(
    script: str, side: str, args, *, torch_malloc: str, label: str
) -> dict:
    """Runs `script --side=side *args` in a fresh process; its result.

    Raises:
      RuntimeError: the child printed no result (its output's tail says
        why); `label` names the run in the message.
    """
    env = torch_release.child_env(
        side, _REPO, tuned_malloc=torch_malloc == "tuned"
    )
    proc = subprocess.run(
        [sys.executable, os.path.abspath(script), f"--side={side}", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(
        f"The {label} failed (exit {proc.returncode}):\n"
        f"{(proc.stdout + proc.stderr)[-4000:]}"
    )


def speed_ratios(ours: dict, theirs: dict) -> tuple[float, float]:
    """Ours / torch speed: (wall, CPU time), from the median calls."""
    median = statistics.median
    return (
        median(theirs["walls"]) / median(ours["walls"]),
        median(theirs["cpus"]) / median(ours["cpus"]),
    )
