"""The workdir: usable before any work, and held by one run at a time.

`check(path)` finds a workdir that is a file, cannot be created, or cannot
be written (read-only, no permission) before the run reads any data;
`hold(path)` keeps a second training run off a workdir a live run uses.

The hold is an advisory lock (`fcntl.flock`) on WORKDIR/run.lock, which
also names its holder (pid, host, start time). The kernel releases it when
the holding process ends, however it ends: a run killed with SIGKILL leaves
the file but no lock, and the next run takes it. A multi-host run takes it
once, in process 0 (the other processes are that run's own).

The names of what a run keeps in its workdir are defined here, once.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
import tempfile

from mclnet_jax import errors

# What a run writes into its workdir (docs/training.md "Outputs, checkpoints
# and resume").
LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
LOG_FILE = "log.txt"
TENSORBOARD_DIR = "tensorboard"
FIGURES_DIR = "figures"
LATEST_DIR = "checkpoints"  # The newest states, to resume from.
BEST_DIR = "checkpoints_best"  # The best state on validation.
DAMAGED_DIR = "checkpoints_damaged"  # Steps set aside on restore.
# Which checkpoint a mode reads (--checkpoint).
LATEST = "latest"
BEST = "best"
WHICH = (LATEST, BEST)


def _first_existing(path: str) -> str:
    """`path` or its nearest existing parent."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe(folder: str) -> OSError | None:
    """Creates and removes a file in `folder`; the error, if any.

    Tried rather than predicted: os.access does not see read-only mounts
    the same way everywhere and says yes to root.
    """
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".write_test.")
    except OSError as e:
        return e
    os.close(fd)
    os.remove(name)
    return None


def check(path: str) -> None:
    """Raises WorkdirError if `path` cannot serve as a workdir.

    A missing workdir is fine when it can be created (it is not created
    here); an existing one must be a folder this process can write to.
    """
    shown = os.path.abspath(path)
    existing = _first_existing(shown)
    if not os.path.isdir(existing):
        what = (
            "is a file"
            if existing == shown
            else f"is under a file ({existing})"
        )
        raise errors.WorkdirError(
            f"--workdir {shown} {what}; pass a folder (new or a run's)."
        )
    error = _probe(existing)
    if error is None:
        return
    if error.errno == errno.EROFS:
        why = "is on a read-only file system"
    elif error.errno in (errno.EACCES, errno.EPERM):
        why = "is not writable by this user (permission denied)"
    elif error.errno == errno.ENOSPC:
        why = "is on a full disk (no space left on device)"
    else:
        why = f"cannot be written ({error.strerror or error})"
    where = shown if existing == shown else f"{existing} (to create {shown})"
    raise errors.WorkdirError(
        f"--workdir {where} {why}; the run writes its checkpoints and "
        "results there. Pass a writable folder, or fix its permissions."
    )


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "unknown process"
    except OSError:
        return "unknown process"


@contextlib.contextmanager
def hold(path: str, *, lead: bool = True):
    """Holds `path` for this run for the duration of the block.

    Args:
      path: the workdir (created if needed).
      lead: whether this process takes the lock (process 0 of a run).

    Raises:
      WorkdirError: a live process holds the workdir; names it.
    """
    if not lead:
        yield
        return
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.WorkdirError(
                f"{os.path.abspath(path)} is in use by another run "
                f"({_holder(lock_path)}). One run per workdir: wait for it "
                "to end (or stop it), or pass another --workdir."
            ) from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{started}\n".encode(),
        )
        yield
    finally:
        # Closing the descriptor releases the lock; the file stays (another
        # run may hold it by now).
        os.close(fd)
