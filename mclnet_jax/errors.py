"""The errors the command line foresees, and the exit code of each.

Exit 2: the user must change something (the config, a dataset folder, the
workdir) before rerunning. Exit 3: something happened in the run (non-finite
values, no intact checkpoint, a full disk); the workdir keeps what was saved.
Any other exception is a bug: the CLI lets it through with its traceback
(exit 1).

`classify` maps an exception to (exit code, message) for `main.py`; the
dataset errors are named here by module and class so that this module
imports nothing heavy.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys

USER_ERROR = 2
RUN_ERROR = 3


class ConfigurationError(ValueError):
    """A config that cannot run as asked (exit 2)."""


class ConfigChangedError(ConfigurationError):
    """A resumed run's config differs from the saved one where it may not."""


class WorkdirError(ConfigurationError):
    """The workdir is a file, not writable, or held by another run (exit 2)."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or parameter (exit 3)."""


class NonFiniteFeaturesError(NonFiniteLossError):
    """Features of an evaluated split are NaN or infinite (exit 3)."""


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint of the workdir is damaged (exit 3)."""


class DiskFullError(OSError):
    """No space left on device while the run wrote something (exit 3)."""


# (module, class name) of errors defined where importing them is slow or
# belongs to another package, with their exit codes. Subclasses count.
_BY_NAME = (
    ("data_pipeline.datasets", "DatasetUnavailableError", USER_ERROR),
    ("data_pipeline.layouts", "DatasetLayoutError", USER_ERROR),
    ("data_pipeline.sysu_mm01.sysu_mm01", "CorruptImageError", USER_ERROR),
    ("data_pipeline.image_files", "ImageError", USER_ERROR),
    ("data_pipeline.synthetic.appearance", "SyntheticDataError", USER_ERROR),
)

_BY_TYPE = (
    (DiskFullError, RUN_ERROR),
    (ConfigurationError, USER_ERROR),
    (NonFiniteLossError, RUN_ERROR),
    (NoIntactCheckpointError, RUN_ERROR),
)


def chain(exc: BaseException):
    """`exc`, then its causes and contexts (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    # TensorStore (orbax's array writes) reports errno as text in a
    # ValueError.
    return "no space left on device" in str(exc).lower()


def no_space_error(exc: BaseException) -> OSError | None:
    """The ENOSPC error in `exc`'s chain, or None."""
    for e in chain(exc):
        if _is_no_space(e):
            return e
    return None


def _size(num_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"


def disk_full_message(where: str, *, saved: str) -> str:
    """The message of a full disk: where, how full, and what was kept.

    Args:
      where: the folder being written.
      saved: what the workdir still holds intact (e.g. "the checkpoint of
        step 36").
    """
    free = ""
    try:
        usage = shutil.disk_usage(where if os.path.exists(where) else "/")
        free = f" ({_size(usage.free)} free of {_size(usage.total)})"
    except OSError:
        pass
    return (
        f"No space left on device while writing {where}{free}. Nothing was "
        f"lost: {saved} is intact. Free some space (or move the workdir) "
        "and rerun the same command to resume."
    )


def _matches_by_name(exc: BaseException) -> int | None:
    for module, name, code in _BY_NAME:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return code
    return None


def _code(exc: BaseException, *, top: bool) -> int | None:
    code = _matches_by_name(exc)
    if code is not None:
        return code
    for cls, code in _BY_TYPE:
        if isinstance(exc, cls):
            return code
    # A checkpoint asked for that does not exist (evaluate before training):
    # the message says to train first. Only when raised as such: a missing
    # file deep inside a library is not foreseen.
    if top and isinstance(exc, FileNotFoundError):
        return RUN_ERROR
    return None


def classify(
    exc: BaseException, *, workdir: str | None = None
) -> tuple[int, str] | None:
    """(exit code, message) for a foreseen error, None for anything else.

    A foreseen error wrapped by a library (TFDS re-raises what a builder
    raised, orbax what its threads raised) is found in the exception's
    chain of causes.
    """
    for e in chain(exc):
        code = _code(e, top=e is exc)
        if code is not None:
            return code, str(e)
    no_space = no_space_error(exc)
    if no_space is not None:
        filename = getattr(no_space, "filename", None)
        return RUN_ERROR, disk_full_message(
            os.path.dirname(filename) if filename else workdir or ".",
            saved="every checkpoint saved before this error",
        )
    return None
