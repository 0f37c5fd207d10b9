"""Tests of the package's XLA:CPU defaults (mclnet_jax/platform.py): applied
by the command line, never by importing the package."""

import os
import subprocess
import sys

import pytest

from mclnet_jax import platform

DEFAULTS = [f"--{name}={value}" for name, value in platform.CPU_DEFAULT_FLAGS]


@pytest.fixture
def fresh(monkeypatch):
    """As if JAX had not initialised yet, with a clean environment."""
    monkeypatch.setattr(platform, "_backends_initialized", lambda: False)
    monkeypatch.setattr(platform, "_applied", [])
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(platform.OPT_OUT_ENV, raising=False)
    return monkeypatch


def test_defaults_are_appended_to_existing_flags(fresh):
    fresh.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert platform.apply_cpu_defaults() == DEFAULTS
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_dump_to=/tmp/x",
        *DEFAULTS,
    ]
    assert platform.applied_flags() == DEFAULTS
    # Idempotent: a second call finds the flags present.
    assert platform.apply_cpu_defaults() == []


def test_user_setting_wins(fresh):
    name = platform.CPU_DEFAULT_FLAGS[0][0]
    fresh.setenv("XLA_FLAGS", f"--{name}=false")
    platform.apply_cpu_defaults()
    assert f"--{name}=false" in os.environ["XLA_FLAGS"].split()
    assert f"--{name}=true" not in os.environ["XLA_FLAGS"].split()


def test_opt_out_and_too_late(fresh):
    fresh.setenv(platform.OPT_OUT_ENV, "1")
    assert platform.apply_cpu_defaults() == []
    assert "XLA_FLAGS" not in os.environ
    fresh.delenv(platform.OPT_OUT_ENV)
    fresh.setattr(platform, "_backends_initialized", lambda: True)
    assert platform.apply_cpu_defaults() == []
    assert "XLA_FLAGS" not in os.environ


def _child(code: str) -> str:
    """Runs `code` in a fresh interpreter without XLA_FLAGS; its stdout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XLA_FLAGS", platform.OPT_OUT_ENV)
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_importing_the_package_leaves_the_environment_alone():
    out = _child(
        "import os; e = dict(os.environ); import mclnet_jax; "
        "import mclnet_jax.configs.sysu; "
        "assert dict(os.environ) == e, set(os.environ.items()) ^ "
        "set(e.items()); print('unchanged')"
    )
    assert out.split() == ["unchanged"]


def test_the_command_line_applies_the_defaults():
    out = _child(
        "import os; import mclnet_jax.main; print(os.environ['XLA_FLAGS'])"
    )
    assert out.split() == DEFAULTS
