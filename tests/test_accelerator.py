"""Tests of benchmarks/accelerator.py: a --tiny run on CPU, and its parts."""

import json
import os
import subprocess
import sys
import types

import pytest
from absl import app, flags

import benchmarks
from benchmarks import accelerator, accelerator_torch, device_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`python benchmarks/accelerator.py --tiny` on two CPU devices."""
    out = tmp_path_factory.mktemp("accelerator") / "accelerator.json"
    env = dict(os.environ)
    # Two devices exercise the mesh; XLA's cheapest optimisation keeps the
    # five compilations of this smoke run short.
    env["XLA_FLAGS"] = " ".join(
        [
            env.get("XLA_FLAGS", ""),
            "--xla_force_host_platform_device_count=2",
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
        ]
    )
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/accelerator.py",
            "--tiny",
            f"--out={out}",
            "--budget_s=3600",  # However loaded the machine, run every part.
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, encoding="utf-8") as f:
        return json.load(f), proc.stdout


def test_tiny_run_environment_and_correctness(tiny_run):
    report, stdout = tiny_run
    env = report["environment"]
    assert env["platform"] == "cpu"
    assert env["device_count"] == 2
    for key in ("device_kind", "jax", "jaxlib", "flax", "optax", "python"):
        assert env[key]
    assert report["tiny"] is True
    assert report["model"]["depth"] == 18
    check = report["correctness"]
    assert check["passed"] is True
    assert check["cpu_only"] is True
    assert check["steps"] == 3
    assert check["tolerance"] == 1e-4
    assert 0.0 <= check["max_relative_error"] <= check["tolerance"]
    assert "CPU-only machine: both sides ran on the CPU" in check["note"]
    assert "correctness: PASSED" in stdout
    assert "CPU-only machine" in stdout
    # Nothing in the script's import chain pulls TensorFlow in.
    assert report["tensorflow_imported"] is False


def test_tiny_run_train_step_eval_and_estimate(tiny_run):
    report, stdout = tiny_run
    rows = report["train_step"]
    assert sorted(r["dtype"] for r in rows) == ["bfloat16", "float32"]
    for r in rows:
        assert r["batch"] == [4, 4]
        assert r["images_per_step"] == 8
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["images_per_s"] == pytest.approx(8e3 / r["median_ms"])
        assert r["compile_s"] > 0
        assert r["flops_per_device"] > 0
        assert r["executable_bytes"] > 0
        assert r["loss_finite"] is True
        # No peak FLOP/s or device memory statistics for the CPU.
        assert r["mfu"] is None
        assert r["peak_device_bytes"] is None
    evals = report["eval_forward"]
    assert [r["dtype"] for r in evals] == ["float32", "bfloat16"]
    for r in evals:
        assert r["batch"] == 16
        assert r["images_per_s"] == pytest.approx(16e3 / r["median_ms"])
        assert r["flops_per_device"] > 0
    estimate = report["sysu_201_epochs"]
    assert len(estimate) == 2
    for e in estimate:
        assert e["steps"] == 201 * 696
        assert e["hours"] > 0
    assert report["torch"] is None
    assert report["skipped"] == []
    assert report["peak_tflops"]["source"] is None
    assert "train step, ResNet-18" in stdout
    assert "201 epochs of SYSU-MM01" in stdout


@pytest.mark.parametrize(
    "kind, name, bf16",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5),
        ("NVIDIA H200", "H200 SXM", 989.4),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA L4", "L4", 121.0),
        ("TPU v4", "TPU v4", 275.0),
        ("TPU v5 lite", "TPU v5e", 197.0),
        ("TPU v5", "TPU v5p", 459.0),
        ("TPU v5p", "TPU v5p", 459.0),
        ("TPU v6 lite", "TPU v6e", 918.0),
    ],
)
def test_peak_tflops_table(kind, name, bf16):
    peaks = device_bench.peak_tflops(kind)
    assert peaks["name"] == name
    assert peaks["bfloat16"] == bf16
    assert 0 < peaks["float32"] <= bf16
    assert peaks["source"] == "PEAK_TFLOPS"


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA L40S", "TPU v4 lite"])
def test_peak_tflops_unknown_device_has_no_peak(kind):
    peaks = device_bench.peak_tflops(kind)
    assert peaks["float32"] is None and peaks["bfloat16"] is None
    assert peaks["source"] is None


def test_peak_tflops_override():
    both = device_bench.peak_tflops("NVIDIA H100 PCIe", ["100"])
    assert both["float32"] == both["bfloat16"] == 100.0
    assert both["source"] == "--peak_tflops"
    one = device_bench.peak_tflops("cpu", ["bfloat16=2.5"])
    assert one["bfloat16"] == 2.5 and one["float32"] is None
    for bad in (["fast"], ["float16=3"], ["-1"], ["bfloat16=0"]):
        with pytest.raises(ValueError, match="peak TFLOP/s"):
            device_bench.peak_tflops("cpu", bad)


def test_relative_errors_per_leaf():
    errors = device_bench._relative_errors(
        {"a": [3.0, 4.0], "b": 0.0}, {"a": [3.0, 4.0 + 5e-4], "b": 0.0}
    )
    assert errors["['a'][0]"] == 0.0
    assert errors["['a'][1]"] == pytest.approx(5e-4 / 4.0005)
    assert errors["['b']"] == 0.0
    nan = device_bench._relative_errors({"a": float("nan")}, {"a": 1.0})
    assert nan == {"['a']": float("inf")}


def test_check_divisible_names_the_flag():
    accelerator._check_divisible([32, 64], 256, k=4, devices=8)
    with pytest.raises(app.UsageError, match="--batches: 36 .* multiple of 8"):
        accelerator._check_divisible([36], 256, k=4, devices=8)
    with pytest.raises(app.UsageError, match="--eval_batch: 100"):
        accelerator._check_divisible([32], 100, k=4, devices=8)


def _fake_torch_release(calls):
    torch = types.SimpleNamespace(
        float32="torch.float32",
        __version__="0.fake",
        cuda=types.SimpleNamespace(is_available=lambda: False),
    )

    def make_step(**kwargs):
        calls.append(kwargs)
        return lambda: {"loss": 1.0}

    return types.SimpleNamespace(
        require_torch=lambda: torch,
        set_threads=lambda: 2,
        make_step=make_step,
    )


def test_torch_side_interface_and_speedups(monkeypatch):
    calls = []
    monkeypatch.setattr(
        benchmarks, "torch_release", _fake_torch_release(calls), raising=False
    )
    config = accelerator.sysu.get_config()
    report = accelerator_torch.bench_torch(config, 395, 32, repeats=2)
    assert calls == [
        dict(
            depth=50,
            width_multiplier=1.0,
            num_classes=395,
            image_size=(288, 144),
            batch=(32, 32),
            device="cpu",
            dtype=dtype,
        )
        for dtype in ("torch.float32", "autocast_bf16")
    ]
    assert report["device"] == "cpu" and report["batch"] == [32, 32]
    assert [r["dtype"] for r in report["rows"]] == ["float32", "bfloat16"]
    ours = [
        {"dtype": "float32", "batch": [32, 32], "median_ms": 10.0},
        {"dtype": "bfloat16", "batch": [64, 64], "median_ms": 5.0},
    ]
    accelerator_torch.add_speedups(report, ours, "cpu")
    f32, bf16 = report["rows"]
    assert report["comparable"] is True
    assert f32["ours_median_ms"] == 10.0
    assert f32["speedup"] == pytest.approx(f32["median_ms"] / 10.0)
    assert bf16["ours_median_ms"] is None and bf16["speedup"] is None
    # A TPU run against PyTorch on the CPU gives no ratio.
    accelerator_torch.add_speedups(report, ours, "tpu")
    assert report["comparable"] is False and f32["speedup"] is None


def test_torch_side_passes_non_release_non_local_counts(monkeypatch):
    calls = []
    monkeypatch.setattr(
        benchmarks, "torch_release", _fake_torch_release(calls), raising=False
    )
    config = accelerator.synthetic.get_config("tiny=1")
    accelerator_torch.bench_torch(config, 8, 4, repeats=1)
    assert calls[0]["non_local_counts"] == (0, 1, 1, 0)
    assert calls[0]["depth"] == 18


def test_torch_side_missing_module_is_a_usage_error(monkeypatch):
    monkeypatch.delattr(benchmarks, "torch_release", raising=False)
    monkeypatch.setitem(sys.modules, "benchmarks.torch_release", None)
    with pytest.raises(app.UsageError, match="benchmarks/torch_release"):
        accelerator_torch.bench_torch(accelerator.sysu.get_config(), 395, 32, 1)


def test_torch_side_without_torch_is_a_usage_error(monkeypatch):
    def require_torch():
        raise ImportError("The PyTorch side needs torch.")

    fake = types.SimpleNamespace(require_torch=require_torch)
    monkeypatch.setattr(benchmarks, "torch_release", fake, raising=False)
    with pytest.raises(app.UsageError, match="--torch: .*needs torch"):
        accelerator_torch.bench_torch(accelerator.sysu.get_config(), 395, 32, 1)


def test_sysu_estimate():
    rows = [
        {"dtype": "float32", "batch": [32, 32], "median_ms": 100.0},
        {"dtype": "float32", "batch": [64, 64], "median_ms": 150.0},
    ]
    (only,) = accelerator.sysu_estimate(rows, 32)
    assert only["steps"] == 201 * 696
    assert only["hours"] == pytest.approx(0.1 * 201 * 696 / 3600)


def test_jobs_run_the_paper_batch_and_the_eval_forward_first():
    jobs = accelerator._jobs([128, 32, 64], ["float32", "bfloat16"], 256)
    assert jobs[:4] == [
        ("train_step", 32, "bfloat16"),
        ("train_step", 32, "float32"),
        ("eval_forward", 256, "float32"),
        ("eval_forward", 256, "bfloat16"),
    ]
    assert [(part, n) for part, n, _ in jobs[4:]] == [
        ("train_step", 64),
        ("train_step", 64),
        ("train_step", 128),
        ("train_step", 128),
    ]


def _flags(*argv):
    flag_values = flags.FlagValues()
    accelerator.define_flags(flag_values)
    flag_values(["accelerator.py", *argv])
    return flag_values


def test_flag_sizes():
    assert accelerator._sizes(_flags()) == (
        [32, 64, 128],
        256,
        10,
        ["float32", "bfloat16"],
    )
    assert accelerator._sizes(_flags("--tiny")) == (
        [4],
        16,
        2,
        ["float32", "bfloat16"],
    )
    sizes = accelerator._sizes(_flags("--tiny", "--batches=8", "--repeats=3"))
    assert sizes[0] == [8] and sizes[2] == 3
    for argv, match in (
        (["--dtypes=float16"], "--dtypes"),
        (["--batches=32,x"], "--batches"),
        (["--eval_batch=0"], "--eval_batch"),
    ):
        with pytest.raises(app.UsageError, match=match):
            accelerator._sizes(_flags(*argv))
