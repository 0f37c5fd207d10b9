"""End-to-end tests of the CLI on the tiny synthetic config (subprocesses).

* A missing dataset folder: exit code 2 and a message with the path and the
  download instructions, no traceback.
* Resume: a run killed with SIGKILL mid-training, restarted with the same
  command (which then gets SIGTERM: it must save and exit cleanly), and
  restarted again, ends with exactly the results and final training metrics
  of an uninterrupted run.

Runs share the session's XLA compilation cache (tests/conftest.py), so
only the first compiles.
"""

import json
import os
import signal
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = "configs/synthetic.py:tiny=1"
# Long enough (6 epochs x 13 steps) that a kill lands mid-run.
_OVERRIDES = (
    "--config.num_epochs=6",
    "--config.checkpoint.every_steps=10",
    "--config.eval.figures=False",
)


def _env(*, fast_compile=False):
    """The environment of a CLI subprocess (it inherits the session's
    compilation cache); with `fast_compile` XLA optimisations off (for runs
    whose numbers are not checked)."""
    env = dict(os.environ)
    if fast_compile:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("XLA_FLAGS", None)
    return env


def _command(workdir, config=_TINY, extra=_OVERRIDES):
    return [
        sys.executable,
        "-m",
        "mclnet_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *extra,
    ]


def _steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _run_until_checkpoint(command, env, workdir, *, after, sig):
    """Starts `command`, sends `sig` once a checkpoint newer than `after`."""
    log = open(os.path.join(workdir + "_log.txt"), "ab")
    proc = subprocess.Popen(
        command, env=env, cwd=_REPO, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if any(s > after for s in _steps(workdir)):
                proc.send_signal(sig)
                break
            time.sleep(0.05)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    return proc.returncode


def _final(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return results["step"], results["summary"], results["train_metrics"]


def test_resnet50_without_weights_stops_before_the_data(tmp_path):
    missing = tmp_path / "no_such_SYSU-MM01"
    proc = subprocess.run(
        _command(
            tmp_path / "work",
            config="configs/sysu.py",
            extra=(
                f"--config.data.manual_dir={missing}",
                f"--config.data.data_dir={tmp_path / 'tfds'}",
            ),
        ),
        env=_env(),
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "config.model.pretrained is not set for a ResNet-50" in proc.stderr
    assert "diverges from random initialisation" in proc.stderr
    assert "--config.model.pretrained=random" in proc.stderr
    assert "save_file(torchvision.models.resnet50" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Stopped before building or even looking for the data.
    assert str(missing) not in proc.stderr
    assert not (tmp_path / "tfds").exists()


def test_missing_dataset_gives_path_and_instructions(tmp_path):
    # An explicit random initialisation passes the weights check (the run
    # starts) and then stops at the missing dataset.
    missing = tmp_path / "no_such_SYSU-MM01"
    proc = subprocess.run(
        _command(
            tmp_path / "work",
            config="configs/sysu.py:base",
            extra=(
                f"--config.data.manual_dir={missing}",
                f"--config.data.data_dir={tmp_path / 'tfds'}",
                "--config.model.pretrained=random",
            ),
        ),
        env=_env(),
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(missing) in proc.stderr
    assert "cam1" in proc.stderr  # The expected layout is shown.
    assert "Traceback" not in proc.stderr


def test_sigkill_then_sigterm_then_resume_equals_uninterrupted(tmp_path):
    env = _env()
    reference = str(tmp_path / "uninterrupted")
    proc = subprocess.run(
        _command(reference),
        env=env,
        cwd=_REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    total, want_summary, want_metrics = _final(reference)
    assert total == 78 and want_metrics["step"] == 78
    # The console: progress (clu's report and scalars) and the results
    # table; the libraries' INFO chatter (TFDS, orbax) only in
    # WORKDIR/log.txt.
    progress = ("100.0% (78/78), ETA", "] [78] loss=")
    for line in progress:
        assert line in proc.stderr
    assert "sysu_all_single_shot" in proc.stderr
    with open(os.path.join(reference, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    for line in progress:
        assert line in log
    # TensorBoard events from clu's writer (tags are stored as plain bytes).
    folder = os.path.join(reference, "tensorboard")
    events = b""
    for name in os.listdir(folder):
        assert name.startswith("events.out.tfevents")
        with open(os.path.join(folder, name), "rb") as f:
            events += f.read()
    for tag in ("loss_id", "lr", "steps_per_sec", "test/sysu_all_single_shot"):
        assert tag.encode() in events
    for chatter in ("dataset_builder.py", "checkpoint_manager.py"):
        assert chatter in log
        assert chatter not in proc.stderr

    workdir = str(tmp_path / "interrupted")
    code = _run_until_checkpoint(
        _command(workdir), env, workdir, after=0, sig=signal.SIGKILL
    )
    assert code == -signal.SIGKILL
    killed_at = max(_steps(workdir))
    assert 0 < killed_at < total
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    # SIGTERM (preemption): checkpoint at the current step, exit 0.
    code = _run_until_checkpoint(
        _command(workdir), env, workdir, after=killed_at, sig=signal.SIGTERM
    )
    assert code == 0
    stopped_at = max(_steps(workdir))
    assert killed_at < stopped_at
    if stopped_at < total:
        assert not os.path.exists(os.path.join(workdir, "results.json"))

    subprocess.run(
        _command(workdir),
        env=env,
        cwd=_REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    step, summary, metrics = _final(workdir)
    assert step == total
    assert summary == want_summary
    assert metrics == want_metrics


def test_non_finite_loss_stops_with_message_and_no_checkpoint(tmp_path):
    workdir = tmp_path / "diverged"
    proc = subprocess.run(
        _command(workdir, extra=("--config.optimizer.lr=1e12",)),
        env=_env(),
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Non-finite values at step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _steps(str(workdir)) == []
