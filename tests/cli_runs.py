"""Runs of `python -m mclnet_jax.main`: as a child process or in this one.

A child process costs the imports of JAX, TensorFlow, TFDS and orbax again;
tests about what a run does call `run_main` here instead, and only the
drills that need a process of their own (SIGKILL, several processes) and one
smoke test per mode start the program. Both share the session's XLA
compilation cache (tests/conftest.py).
"""

import json
import logging as std_logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Absolute, so that in-process runs do not depend on the working directory.
TINY = os.path.join(REPO, "configs", "synthetic.py") + ":tiny=1"
# A short tiny run: 1 epoch x 13 steps, a checkpoint every 4 (steps 12 and
# 13 kept); a small lr keeps the eval-mode features of so short a run
# finite; only the model's results are evaluated.
SHORT_RUN = (
    "--config.num_epochs=1",
    "--config.checkpoint.every_steps=4",
    "--config.optimizer.lr=0.01",
    "--config.mcm_optimizer.lr=0.01",
    "--config.evals.figures.at_end=False",
)


def env(*, fast_compile: bool = False, host_devices: int = 1) -> dict[str, str]:
    """A child's environment, with `host_devices` CPU devices.

    It inherits the session's compilation cache and XLA_FLAGS; with
    `fast_compile` XLA's optimisations are off, as the `fast_compile`
    fixture (tests/conftest.py) turns them off in this process (runs
    compared with each other must agree on it)."""
    out = dict(os.environ)
    if fast_compile:
        out["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    out["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if host_devices != 1:
        out["XLA_FLAGS"] = (
            f"{out.get('XLA_FLAGS', '')} "
            f"--xla_force_host_platform_device_count={host_devices}"
        )
    return out


def command(workdir, *args: str, config: str = TINY) -> list[str]:
    """The command line of a child run on `workdir`."""
    return [
        sys.executable,
        "-m",
        "mclnet_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *args,
    ]


def run_main(workdir, *args: str, config: str = TINY) -> int:
    """`python -m mclnet_jax.main --config=CONFIG --workdir=WORKDIR ARGS` in
    this process; returns its exit status.

    The global flags are parsed for the run and reset afterwards, and the
    log file handler and console filter the run installs are removed.
    """
    from absl import flags
    from absl import logging as absl_logging

    from mclnet_jax import main

    root = std_logging.getLogger()
    handlers = list(root.handlers)
    absl_handler = absl_logging.get_absl_handler()
    filters = list(absl_handler.filters)
    fl = flags.FLAGS
    fl.unparse_flags()
    argv = ["main.py", f"--config={config}", f"--workdir={workdir}", *args]
    saved_argv = sys.argv
    try:
        # ml_collections reads the --config.<field> overrides from sys.argv.
        sys.argv = argv
        try:
            fl(argv)
        finally:
            sys.argv = saved_argv
        return main.main(argv[:1])
    finally:
        fl.unparse_flags()
        # The override flags belong to this run's config: the next run
        # defines its own.
        for name in [n for n in fl if n.startswith("config.")]:
            delattr(fl, name)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        absl_handler.filters[:] = filters


def checkpoint_steps(workdir) -> list[int]:
    """The steps saved in WORKDIR/checkpoints, in order."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def final_results(workdir):
    """(step, summary, train_metrics) of WORKDIR/results.json."""
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return results["step"], results["summary"], results["train_metrics"]
