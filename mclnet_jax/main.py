r"""Command line: train, evaluate, analyze or export MCLNet (see README).

  python -m mclnet_jax.main --config=synthetic --workdir=/tmp/demo
  python -m mclnet_jax.main --config=sysu:mclnet \
      --workdir=$HOME/runs/sysu --config.data.manual_dir=$HOME/data/SYSU-MM01
  python -m mclnet_jax.main --config=sysu --workdir=... \
      --mode=evaluate --checkpoint=best

`--config` is a recipe of the package (sysu, regdb, llcm, synthetic; the
files of the repository's configs/) or the path of a config file, either
with `:ARG`. Any config field can be overridden with --config.<field>=<value>.
Rerunning the same command resumes from the latest checkpoint in the
workdir.
"""

import os
import sys

from mclnet_jax import platform

# The package's XLA:CPU defaults, before JAX initialises its backends (XLA
# reads XLA_FLAGS only then); importing `mclnet_jax` changes nothing.
platform.apply_cpu_defaults()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mclnet_jax import config_checks, console, errors  # noqa: E402
from mclnet_jax import configs as configs_lib  # noqa: E402
from mclnet_jax import workdir as workdir_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    configs_lib.recipe_path("synthetic"),
    "A recipe (sysu, regdb, llcm, synthetic) or a config file, optionally "
    "with "
    "an argument: sysu:base, configs/sysu.py:base.",
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
    workdir_lib.LATEST,
    list(workdir_lib.WHICH),
    "--mode=evaluate/analyze/export: the latest checkpoint or the best on "
    "validation.",
)


def _fail(code: int, message: str) -> int:
    print(f"\nERROR: {message}", file=sys.stderr)
    return code


def resolve_config(argv: list[str]) -> list[str]:
    """`argv` with `--config=NAME[:ARG]` turned into the recipe's file.

    A value that contains "/" or whose file part ends in ".py" is a path
    and stays as it is; any other names a recipe of `mclnet_jax.configs`.

    Raises:
      ConfigurationError: an unknown recipe name.
    """
    out = list(argv)
    for i, token in enumerate(out):
        for prefix in ("--config=", "-config="):
            if token.startswith(prefix):
                out[i] = prefix + _recipe_file(token[len(prefix) :])
        if token in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = _recipe_file(out[i + 1])
    return out


def _recipe_file(value: str) -> str:
    name, colon, arg = value.partition(":")
    if "/" in value or name.endswith(".py"):
        return value
    if name not in configs_lib.RECIPES:
        raise errors.ConfigurationError(
            f"--config={value}: no recipe {name!r}; choose one of "
            f"{', '.join(configs_lib.RECIPES)} (e.g. --config=sysu:base), "
            "or give a config file's path (configs/sysu.py)."
        )
    return configs_lib.recipe_path(name) + colon + arg


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or an override of no config
    field as one message (exit 2).

    A `ValueError` of the config file's `get_config` (an unknown variant or
    `:ARG` name, a value of the wrong type) is reported by its own message:
    ml_collections re-raises it with its traceback in the message, and the
    error itself as that one's context.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        for cause in errors.chain(e):
            if isinstance(cause.__context__, ValueError) and str(
                cause
            ).startswith("Error whilst parsing config file"):
                message = f"--config: {cause.__context__}"
        sys.exit(_fail(errors.USER_ERROR, message))
    except (AttributeError, KeyError) as e:
        # ml_collections: an override --config.<field> of no field.
        if not any(a.startswith(("--config.", "-config.")) for a in argv):
            raise
        # Its KeyError's text: the field, and ConfigDict's "Did you mean".
        key = next(
            (c for c in errors.chain(e) if isinstance(c, KeyError) and c.args),
            e,
        )
        sys.exit(
            _fail(
                errors.USER_ERROR,
                "A --config.<field> override names no field of the config: "
                f"{key.args[0] if key.args else key}",
            )
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir = os.path.expanduser(_WORKDIR.value)
    config = _CONFIG.value
    # Found before anything is created or read (docs/training.md "Exit codes").
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
        from mclnet_jax import evaluate, export, train

    try:
        if _MODE.value == "train":
            train.train_and_evaluate(config, workdir)
        elif _MODE.value == "evaluate":
            evaluate.evaluate(config, workdir, which=_CHECKPOINT.value)
        elif _MODE.value == "analyze":
            evaluate.analyze(config, workdir, which=_CHECKPOINT.value)
        else:
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
    try:
        # In sys.argv itself: ml_collections reads it again for the
        # --config.<field> overrides.
        sys.argv = resolve_config(sys.argv)
    except errors.ConfigurationError as e:
        sys.exit(_fail(errors.USER_ERROR, str(e)))
    app.run(main, flags_parser=parse_flags)
