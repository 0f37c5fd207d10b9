r"""Command line: train, evaluate, analyze or export MCLNet (see README).

  python -m mclnet_jax.main --config=configs/synthetic.py --workdir=/tmp/demo
  python -m mclnet_jax.main --config=configs/sysu.py:mclnet \
      --workdir=$HOME/runs/sysu --config.data.manual_dir=$HOME/data/SYSU-MM01
  python -m mclnet_jax.main --config=configs/sysu.py --workdir=... \
      --mode=evaluate --checkpoint=best

Any config field can be overridden with --config.<field>=<value>. Rerunning
the same command resumes from the latest checkpoint in the workdir.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mclnet_jax import config_checks, console, errors
from mclnet_jax import workdir as workdir_lib

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "synthetic.py",
)

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    _DEFAULT_CONFIG,
    "Config file, optionally with an argument: configs/sysu.py:base.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, TensorBoard logs and results go here."
)
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "evaluate", "analyze", "export"],
    "train (and evaluate at the end); evaluate only; analyze: figures into "
    "WORKDIR/figures; export: the eval-mode network into WORKDIR/export.",
)
_CHECKPOINT = flags.DEFINE_enum(
    "checkpoint",
    "latest",
    ["latest", "best"],
    "--mode=evaluate/analyze/export: the latest checkpoint or the best on "
    "validation.",
)


def _fail(code: int, message: str) -> int:
    print(f"\nERROR: {message}", file=sys.stderr)
    return code


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir = os.path.expanduser(_WORKDIR.value)
    config = _CONFIG.value
    # Found before anything is created or read (README "Exit codes").
    try:
        config_checks.check(config, mode=_MODE.value)
        workdir_lib.check(workdir)
    except errors.ConfigurationError as e:
        return _fail(errors.USER_ERROR, str(e))
    # The console gets progress, results and warnings; the rest goes to
    # WORKDIR/log.txt (before TensorFlow is imported).
    log_file = console.configure(workdir)
    # Imported after flag parsing: importing JAX/TensorFlow is slow and
    # `--help` should not wait for it.
    with console.native_stderr_to(log_file):
        from data_pipeline import datasets  # noqa: F401 - see errors.py.
        from mclnet_jax import train

    try:
        if _MODE.value == "train":
            train.train_and_evaluate(config, workdir)
        elif _MODE.value == "evaluate":
            train.evaluate_only(config, workdir, which=_CHECKPOINT.value)
        elif _MODE.value == "analyze":
            from mclnet_jax import analysis

            analysis.analyze_workdir(config, workdir, which=_CHECKPOINT.value)
        else:
            from mclnet_jax import export

            export.export_workdir(config, workdir, which=_CHECKPOINT.value)
    except Exception as e:
        foreseen = errors.classify(e, workdir=workdir)
        if foreseen is None:
            raise
        # The console gets one message; the log file the whole story.
        console.log_file_only(
            "Stopped with exit %d:", foreseen[0], exc_info=True
        )
        return _fail(*foreseen)
    return 0


if __name__ == "__main__":
    # Required of the command line only: importing this module (tests run
    # `main` in their process) must not make every parse of the global
    # flags ask for --workdir.
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
