"""The wheel: built from the checkout, installed alone, run by recipe name.

The wheel goes into a fresh virtual environment that sees this one's
dependencies but not its editable install of the checkout (a `.pth` file
naming this environment's site-packages: the `.pth` files inside a folder
added that way are not processed, so the editable finder stays out). From a
folder outside the checkout, `python -m mclnet_jax.main
--config=synthetic:tiny=1` must find the recipe in the installed package and
run the tiny demo to its results.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import cli_runs
import pytest

REPO = pathlib.Path(__file__).parents[1]
# What the wheel is built from.
_SOURCES = (
    "pyproject.toml",
    "setup.cfg",
    "README.md",
    "LICENSE",
    "mclnet_jax",
    "data_pipeline",
    "configs",
)


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def _checkout_packages() -> set[str]:
    """The packages of the checkout as the wheel names them."""
    found = {"mclnet_jax.configs"}
    for top in ("mclnet_jax", "data_pipeline"):
        for init in (REPO / top).rglob("__init__.py"):
            package = init.parent.relative_to(REPO)
            if "__pycache__" not in package.parts:
                found.add(".".join(package.parts))
    return found


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> pathlib.Path:
    """The interpreter of a fresh environment with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: setuptools' build/ folder in the
    # checkout would keep files deleted since and put them in later wheels.
    source = tmp / "source"
    source.mkdir()
    for name in _SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp / "dist"
    proc = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps"]
        + ["--no-build-isolation", "-q", "-w", dist, source]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("mclnet_jax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    packaged = {
        os.path.dirname(n).replace("/", ".")
        for n in names
        if n.endswith("/__init__.py")
    }
    # pyproject.toml lists the packages: none of the checkout's is left out.
    assert packaged == _checkout_packages()
    assert "mclnet_jax/configs/synthetic.py" in names
    print(f"\nbuilt {wheel.name}: {len(names)} files")

    venv = tmp / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert proc.returncode == 0, proc.stderr[-3000:]
    python = venv / "bin" / "python"
    site = _run(
        [
            python,
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ]
    ).stdout.strip()
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    pathlib.Path(site, "dependencies.pth").write_text("\n".join(sorted(ours)))
    probe = _run(
        [python, "-c", "import jax, ml_collections; import mclnet_jax"],
        cwd=tmp,
        env=_env(),
    )
    assert "No module named 'mclnet_jax'" in probe.stderr, probe.stderr[-3000:]
    # --ignore-installed: the editable install's metadata is visible through
    # dependencies.pth; pip must neither skip the wheel nor touch that one.
    proc = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
        + ["--no-deps", "--ignore-installed", "--no-compile", wheel]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


def _env() -> dict[str, str]:
    """A child's environment (the session's compilation cache), with
    nothing pointing into the checkout."""
    env = cli_runs.env(fast_compile=True)
    env.pop("PYTHONPATH", None)
    return env


def test_the_wheel_runs_the_tiny_demo_by_recipe_name(venv_python, tmp_path):
    workdir = tmp_path / "demo"
    proc = _run(
        [venv_python, "-m", "mclnet_jax.main", f"--workdir={workdir}"]
        + ["--config=synthetic:tiny=1", *cli_runs.SHORT_RUN],
        cwd=tmp_path,
        env=_env(),
    )
    print(proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workdir / "results.json").is_file()
    where = _run(
        [
            venv_python,
            "-c",
            "import mclnet_jax.configs as c; print(c.__file__)",
        ],
        cwd=tmp_path,
        env=_env(),
    ).stdout
    assert "site-packages" in where and str(REPO) not in where, where


def test_an_unknown_recipe_names_the_recipes(venv_python, tmp_path):
    proc = _run(
        [venv_python, "-m", "mclnet_jax.main", f"--workdir={tmp_path / 'w'}"]
        + ["--config=nosuch"],
        cwd=tmp_path,
        env=_env(),
    )
    print(proc.stderr[-1000:])
    assert proc.returncode == 2
    assert "no recipe 'nosuch'; choose one of llcm, regdb, synthetic, sysu" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()
