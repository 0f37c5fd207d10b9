"""What the command-line tools print, and what goes to their log file.

The console shows this package's progress (`Progress`: one line per log
interval) and results, and every warning;
the INFO chatter of TensorFlow, TFDS, orbax and JAX goes only to a log file
(`log.txt` in the workdir, or `--log_dir`). `-v 1` (absl's `--verbosity`)
shows everything on the console, as before. Call `configure` once, after
flag parsing, and import TensorFlow inside `native_stderr_to(log file)`:
its C++ start-up notices (oneDNN, absl::InitializeLog) ignore
TF_CPP_MIN_LOG_LEVEL and are written straight to file descriptor 2.
"""

import contextlib
import importlib.util
import logging as std_logging
import os
import sys
import time
from collections.abc import Mapping

from absl import flags, logging

from mclnet_jax import workdir as workdir_lib


def _folders() -> tuple[str, ...]:
    """Where this package, its data pipeline and clu live (with a final /).

    clu is found without importing it (it imports TensorFlow).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folders = [os.path.join(root, n) for n in ("mclnet_jax", "data_pipeline")]
    clu = importlib.util.find_spec("clu")
    if clu is not None and clu.submodule_search_locations:
        folders.extend(clu.submodule_search_locations)
    return tuple(os.path.join(f, "") for f in folders)


_OURS = _folders()
LOG_FILE = workdir_lib.LOG_FILE


# A record with this attribute set goes to the log file only.
_FILE_ONLY = "mclnet_log_file_only"


class _OursOrWarnings(std_logging.Filter):
    """Keeps warnings and errors from anywhere, INFO from `_OURS` only.

    Tracebacks that libraries log (orbax logs each failure of its
    background threads, several times over) and records marked by
    `log_file_only` stay in the log file: the CLI prints one message for a
    foreseen error, and an unforeseen one still ends with its traceback.
    """

    def filter(self, record):
        if getattr(record, _FILE_ONLY, False):
            return False
        ours = record.pathname.startswith(_OURS)
        if record.exc_info and not ours:
            return False
        return record.levelno >= std_logging.WARNING or ours


def log_file_only(msg: str, *args, exc_info=None) -> None:
    """Logs `msg` (and a traceback) to the log file, not the console."""
    # WARNING: recorded whatever the verbosity.
    logging.warning(msg, *args, exc_info=exc_info, extra={_FILE_ONLY: True})


def to_log_file(msg: str, *args) -> None:
    """Logs `msg` at INFO to the log file only (not the console)."""
    logging.info(msg, *args, extra={_FILE_ONLY: True})


class Progress:
    """The training loop's console line, once per log interval: step, epoch,
    images/s, ETA and the main losses. Every metric goes to the log file.

    Args:
      total_steps: the run's last step.
      steps_per_epoch: steps of one epoch.
      images_per_step: images of one global batch (both modalities).
      start_step: the step the run starts (or resumes) at.
    """

    MAIN_LOSSES = (
        "loss",
        "loss_id",
        "loss_triplet",
        "loss_mcm",
        "loss_confusion",
        "loss_ica",
        "loss_cca",
    )

    def __init__(
        self,
        *,
        total_steps: int,
        steps_per_epoch: int,
        images_per_step: int,
        start_step: int,
    ):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.images_per_step = images_per_step
        self._since = (start_step, time.perf_counter())

    def restart(self, step: int) -> None:
        """Starts the clock at `step` (after compiling: not counted)."""
        self._since = (step, time.perf_counter())

    def report(self, step: int, metrics: Mapping[str, float]) -> dict:
        """Prints the line for `step`; returns {"steps_per_sec": ...}."""
        since_step, since_time = self._since
        now = time.perf_counter()
        rate = (step - since_step) / max(now - since_time, 1e-9)
        self._since = (step, now)
        eta = (self.total_steps - step) / rate if rate > 0 else 0.0
        minutes, seconds = divmod(int(round(eta)), 60)
        hours, minutes = divmod(minutes, 60)
        losses = " ".join(
            f"{name.removeprefix('loss_')} {metrics[name]:.4g}"
            for name in self.MAIN_LOSSES
            if name in metrics
        )
        epochs = -(-self.total_steps // self.steps_per_epoch)
        logging.info(
            "step %d/%d | epoch %d/%d | %.0f img/s | ETA %s | %s",
            step,
            self.total_steps,
            (step - 1) // self.steps_per_epoch + 1,
            epochs,
            rate * self.images_per_step,
            f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s",
            losses,
        )
        to_log_file(
            "Metrics at step %d: %s",
            step,
            ", ".join(f"{k} {v:.6g}" for k, v in sorted(metrics.items())),
        )
        return {"steps_per_sec": rate}


def configure(log_dir: str | None) -> str | None:
    """Splits logging between the console and `log_dir/log.txt`.

    Args:
      log_dir: the folder of the log file (created if needed); `--log_dir`
        overrides it. None: no log file, the libraries' INFO is dropped.

    Returns:
      The log file's path; None without one, or when `--verbosity >= 1`
      asked for everything on the console (then nothing is filtered).
    """
    if logging.get_verbosity() >= 1:
        return None
    # TensorFlow's C++ INFO lines (oneDNN notices and the like) are noise on
    # the console; its warnings stay. Only if the user has not chosen.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.get_absl_handler().addFilter(_OursOrWarnings())
    log_dir = flags.FLAGS["log_dir"].value or log_dir
    if not log_dir:
        return None
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, LOG_FILE)
    to_file = std_logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.PythonFormatter())
    to_file.setLevel(std_logging.DEBUG)
    std_logging.getLogger().addHandler(to_file)
    sys.unraisablehook = _unraisable_to_log_file
    return path


def _unraisable_to_log_file(unraisable) -> None:
    """Exceptions Python cannot raise (e.g. asyncio's "Event loop is closed"
    from a callback of orbax's writes that fires after a failed save has
    closed its loop) go to the log file, not the console."""
    log_file_only(
        "Exception ignored in %r:",
        unraisable.object,
        exc_info=(
            unraisable.exc_type,
            unraisable.exc_value,
            unraisable.exc_traceback,
        ),
    )


@contextlib.contextmanager
def native_stderr_to(path: str | None):
    """Sends file descriptor 2 (C++ libraries too) to `path` for a while.

    With `path` None (everything on the console), does nothing.
    """
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
