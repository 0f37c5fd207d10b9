"""Shared pytest setup: quiet TensorFlow, one XLA compilation cache per run,
XLA:CPU's faster-compiling emitters and the package's XLA:CPU defaults, the
slowest files first, PyTorch on one thread, a `fast_compile` fixture and
the generated datasets.

The cache directory is made once by the controlling pytest process and
reaches the xdist workers and every CLI subprocess the tests start through
the environment, so a program (the tiny model's train step, its eval
forward) is compiled once per run instead of once per process. XLA_FLAGS
reaches them the same way.
"""

import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Mapping
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
# Set before JAX is imported (it reads these at import); an xdist worker
# inherits the controller's values.
_OWN_CACHE = None
if _CACHE_ENV not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="mclnet_jax_test_xla_cache_")
    os.environ[_CACHE_ENV] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA:CPU's older emitters compile the suite's programs (small, often with
# XLA's optimisations off) about 2.5x faster than its default fusion
# emitters; the checks hold under both. Setting the flag yourself overrides
# this, e.g. XLA_FLAGS=--xla_cpu_use_fusion_emitters=true python -m pytest
# runs the suite on XLA's default emitters.
_EMITTERS_FLAG = "--xla_cpu_use_fusion_emitters"
if _EMITTERS_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} {_EMITTERS_FLAG}=false".strip()
    )
# Then the command line's XLA:CPU defaults (mclnet_jax/platform.py), which
# the checks assume, as `python -m mclnet_jax.main` applies them; importing
# mclnet_jax does not. Both reach the xdist workers and the CLI children.
from mclnet_jax import platform  # noqa: E402

platform.apply_cpu_defaults()


def pytest_unconfigure(config):
    del config
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The files that take longest, longest first. xdist hands whole files to its
# workers in collection order (setup.cfg: --dist loadfile
# --no-loadscope-reorder), so these start first and the run does not end
# with one of them alone on one worker.
SLOWEST_FILES = (
    "test_multiprocess.py",
    "test_wheel.py",
    "test_train.py",
    "test_cpu_kernels.py",
    "test_main.py",
    "test_faults.py",
    "test_models.py",
    "test_pretrained.py",
    "test_export.py",
    "test_analysis.py",
    "test_release_step_parity.py",
    "test_release.py",
    "test_accelerator.py",
    "test_embed.py",
    "test_ablation.py",
    "test_torch_release.py",
    "test_losses.py",
    "test_bfloat16.py",
)


def pytest_collection_modifyitems(config, items):
    del config
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    # A stable sort: each file's tests keep their order.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """PyTorch (where a test has imported it) on one thread. JAX's CPU
    client keeps threads of its own in this process; PyTorch's intra-op
    threads waiting on the same two cores make its ops many times slower.
    Results agree to float rounding whatever the count (the parity tests'
    tolerances hold either way); a benchmark sets its own count."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fast_compile():
    """XLA's optimisations off while a module runs (its programs compile
    several times faster); for modules whose checks do not depend on them:
    `pytestmark = pytest.mark.usefixtures("fast_compile")`."""
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# --------------------------------------------------------------------------
# Generated datasets and their TFDS builds, made once per test session (once
# per xdist worker). They are shared: read them, never write to them; a test
# that damages a layout copies it to its own tmp_path first.

# One parameter set per layout (keyword arguments of the generators), small
# and chosen so that every user's checks hold: SYSU has 2 test identities,
# visible and infrared counts that differ (a swap shows) and 16 images per
# identity; RegDB has 3 train and 3 test identities per trial.
SYSU_PARAMS = types.MappingProxyType(
    dict(
        num_identities=8,
        visible_images_per_camera=3,
        infrared_images_per_camera=2,
        height=32,
        width=16,
        seed=0,
    )
)
REGDB_PARAMS = types.MappingProxyType(
    dict(num_identities=6, images_per_modality=2, height=32, width=16, seed=1)
)


@dataclasses.dataclass(frozen=True)
class Generated:
    """A generated dataset folder.

    Attributes:
      root: the folder (read-only for tests).
      params: the generator's keyword arguments that made it.
      summary: the generator's `GenerationSummary`.
    """

    root: str
    params: Mapping[str, Any]
    summary: Any


@pytest.fixture(scope="session")
def sysu_raw(tmp_path_factory) -> Generated:
    """A synthetic SYSU-MM01 folder made with `SYSU_PARAMS`."""
    from data_pipeline import synthetic

    root = str(tmp_path_factory.mktemp("sysu") / "raw")
    summary = synthetic.generate_sysu(root, **SYSU_PARAMS)
    return Generated(root=root, params=SYSU_PARAMS, summary=summary)


@pytest.fixture(scope="session")
def regdb_raw(tmp_path_factory) -> Generated:
    """A synthetic RegDB folder (10 trials) made with `REGDB_PARAMS`."""
    from data_pipeline import synthetic

    root = str(tmp_path_factory.mktemp("regdb") / "raw")
    summary = synthetic.generate_regdb(root, **REGDB_PARAMS)
    return Generated(root=root, params=REGDB_PARAMS, summary=summary)


@pytest.fixture
def sysu_copy(sysu_raw, tmp_path) -> str:
    """A copy of `sysu_raw`'s folder for a test that damages it."""
    copy = str(tmp_path / "sysu")
    shutil.copytree(sysu_raw.root, copy)
    return copy


@pytest.fixture
def regdb_copy(regdb_raw, tmp_path) -> str:
    """A copy of `regdb_raw`'s folder for a test that damages it."""
    copy = str(tmp_path / "regdb")
    shutil.copytree(regdb_raw.root, copy)
    return copy


@pytest.fixture(scope="session")
def sysu_builder(sysu_raw, tmp_path_factory) -> Callable[[str], Any]:
    """`sysu_builder(config)`: the prepared TFDS builder of `sysu_raw`.

    Each config ("original", "288x144") is built on first use, then reused.
    """
    from data_pipeline.sysu_mm01 import sysu_mm01

    data_dir = str(tmp_path_factory.mktemp("sysu_tfds"))

    @functools.cache
    def build(config: str):
        return sysu_mm01.prepare(
            manual_dir=sysu_raw.root, data_dir=data_dir, config=config
        )

    return build


@pytest.fixture(scope="session")
def regdb_builder(regdb_raw, tmp_path_factory) -> Callable[[int], Any]:
    """`regdb_builder(trial)`: the prepared TFDS builder of `regdb_raw`.

    Each trial (1 .. 10) is built on first use, then reused.
    """
    from data_pipeline.regdb import regdb

    data_dir = str(tmp_path_factory.mktemp("regdb_tfds"))

    @functools.cache
    def build(trial: int):
        return regdb.prepare(
            manual_dir=regdb_raw.root,
            data_dir=data_dir,
            config=f"trial_{trial}",
        )

    return build
