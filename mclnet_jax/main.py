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

from mclnet_jax import console

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir = os.path.expanduser(_WORKDIR.value)
    # The console gets progress, results and warnings; the rest goes to
    # WORKDIR/log.txt (before TensorFlow is imported).
    log_file = console.configure(workdir)
    # Imported after flag parsing: importing JAX/TensorFlow is slow and
    # `--help` should not wait for it.
    with console.native_stderr_to(log_file):
        from data_pipeline import datasets
        from mclnet_jax import train, train_step

    try:
        if _MODE.value == "train":
            train.train_and_evaluate(_CONFIG.value, workdir)
        elif _MODE.value == "evaluate":
            train.evaluate_only(_CONFIG.value, workdir, which=_CHECKPOINT.value)
        elif _MODE.value == "analyze":
            from mclnet_jax import analysis

            analysis.analyze_workdir(
                _CONFIG.value, workdir, which=_CHECKPOINT.value
            )
        else:
            from mclnet_jax import export

            export.export_workdir(
                _CONFIG.value, workdir, which=_CHECKPOINT.value
            )
    except (
        datasets.DatasetUnavailableError,
        train_step.ConfigurationError,
    ) as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 2
    except (train_step.NonFiniteLossError, FileNotFoundError) as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    # Required of the command line only: importing this module (tests run
    # `main` in their process) must not make every parse of the global
    # flags ask for --workdir.
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
