"""The package's XLA:CPU defaults, applied by the programs that run it.

XLA:CPU's own convolution kernels are slow for ResNets; XNNPACK is faster
for some of them (the models also compute 1x1 convolutions as dots, which
matters more; figures in benchmarks/README.md). XLA reads XLA_FLAGS once,
when JAX initialises its backends, so the programs call
`apply_cpu_defaults()` before that: the command line (`mclnet_jax.main`),
the CPU benchmarks (`benchmarks/*.py`) and the tests
(`tests/conftest.py`). Importing `mclnet_jax` leaves the environment alone:
a library user calls it (or sets XLA_FLAGS) before using JAX. It appends
each default flag to XLA_FLAGS unless:

  * the user already set that flag (any value) in XLA_FLAGS, or
  * the environment variable MCLNET_JAX_NO_XLA_DEFAULTS is set (non-empty),
    or
  * JAX's backends are already initialised (too late; a warning is logged).

The flags only affect the CPU backend; GPU/TPU computations are unchanged.
`release_host_memory()` hands the heap pages that compiling freed back to
the operating system (the training loop calls it once the step is
compiled).
"""

import ctypes
import os
import sys

from absl import logging

# Each entry: (flag name, value). Chosen with benchmarks/model_forward.py on a
# 2-core AMD EPYC (Zen 4) VM, where the alternatives (oneDNN custom calls,
# YNNPACK convolution fusions, bfloat16) were no faster; numerically checked
# by the PyTorch parity tests in tests/test_pretrained.py.
CPU_DEFAULT_FLAGS = (("xla_cpu_use_xnnpack", "true"),)

OPT_OUT_ENV = "MCLNET_JAX_NO_XLA_DEFAULTS"

_applied: list[str] = []


def _flag_names(xla_flags: str) -> set[str]:
    names = set()
    for token in xla_flags.split():
        name = token.lstrip("-").split("=", 1)[0]
        if name:
            names.add(name)
    return names


def _backends_initialized() -> bool:
    if "jax" not in sys.modules:
        return False
    try:  # A private API, looked for only here.
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # Private API moved: assume not.
        return False


def apply_cpu_defaults() -> list[str]:
    """Appends the package's default XLA:CPU flags to XLA_FLAGS.

    Returns:
      The flags appended by this call (e.g. ["--xla_cpu_use_xnnpack=true"]).
    """
    if os.environ.get(OPT_OUT_ENV):
        return []
    current = os.environ.get("XLA_FLAGS", "")
    present = _flag_names(current)
    wanted = [
        f"--{name}={value}"
        for name, value in CPU_DEFAULT_FLAGS
        if name not in present
    ]
    if not wanted:
        return []
    if _backends_initialized():
        logging.warning(
            "JAX is already initialised, so mclnet_jax's XLA:CPU defaults %s "
            "are not applied; call platform.apply_cpu_defaults() before using "
            "JAX, or set them in XLA_FLAGS yourself.",
            wanted,
        )
        return []
    os.environ["XLA_FLAGS"] = " ".join([current, *wanted]).strip()
    _applied.extend(wanted)
    return wanted


def applied_flags() -> list[str]:
    """The flags this process got from `apply_cpu_defaults`."""
    return list(_applied)


def release_host_memory() -> bool:
    """Returns free heap memory to the OS (glibc's `malloc_trim(0)`).

    XLA's compiler frees most of what it allocated, but glibc keeps the
    pages, so the process's RSS stays at the compiler's peak while the
    step runs. Returns whether memory was released; False where glibc is
    not the C library.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
