"""End-to-end tests of the CLI on the tiny synthetic config.

* Bad set-ups (in this process, tests/cli_runs.py): a ResNet-50 without
  weights and a missing dataset folder exit with 2 and a message with the
  path and the download instructions, no traceback; a diverging run exits
  with 3 and leaves no checkpoint.
* Resume: a run killed with SIGKILL mid-training (a child process),
  restarted with the same command (which then gets SIGTERM: it must save and
  exit cleanly), and restarted again, ends with exactly the results and
  final training metrics of an uninterrupted run (a child process too: the
  train mode's smoke test, whose console and log file are checked).

XLA's optimisations are off in every run here (the runs compare with each
other only), and the runs share the session's compilation cache.
"""

import os
import signal
import subprocess
import threading
import time

import cli_runs
import pytest

# The tiny config's 3 epochs x 13 steps, a checkpoint every 10: a kill
# after the first checkpoint lands mid-run.
_TOTAL_STEPS = 39
_OVERRIDES = (
    f"--config.num_epochs={_TOTAL_STEPS // 13}",
    "--config.checkpoint.every_steps=10",
    "--config.evals.figures.at_end=False",
)
_SYSU = os.path.join(cli_runs.REPO, "configs", "sysu.py")
pytestmark = pytest.mark.usefixtures("fast_compile")


def _kill_after_checkpoint(proc, workdir, *, after, sig):
    """Sends `sig` to `proc` once a checkpoint newer than `after` exists."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if any(s > after for s in cli_runs.checkpoint_steps(workdir)):
            proc.send_signal(sig)
            return
        time.sleep(0.05)


def _run_until_checkpoint(workdir, *, after, sig):
    """The CLI as a child; `sig` once a checkpoint newer than `after`."""
    with open(workdir + "_log.txt", "ab") as log:
        proc = subprocess.Popen(
            cli_runs.command(workdir, *_OVERRIDES),
            env=cli_runs.env(fast_compile=True),
            cwd=cli_runs.REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _kill_after_checkpoint(proc, workdir, after=after, sig=sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return proc.returncode


def _run_main_until_checkpoint(workdir, *, after):
    """The CLI in this process, SIGTERM to it once a checkpoint newer than
    `after` exists; returns the exit status.

    A SIGTERM that came after the run restored the previous handler would
    reach this test's handler, never pytest's default (which would end the
    worker)."""
    assert threading.current_thread() is threading.main_thread()
    late = []
    previous = signal.signal(signal.SIGTERM, lambda *a: late.append(a))
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if any(s > after for s in cli_runs.checkpoint_steps(workdir)):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return cli_runs.run_main(workdir, *_OVERRIDES)
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)


def test_resnet50_without_weights_stops_before_the_data(tmp_path, capsys):
    missing = tmp_path / "no_such_SYSU-MM01"
    code = cli_runs.run_main(
        tmp_path / "work",
        f"--config.data.manual_dir={missing}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        config=_SYSU,
    )
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert "config.init.pretrained is not set for a ResNet-50" in stderr
    assert "diverges from random initialisation" in stderr
    assert "--config.init.pretrained=random" in stderr
    assert "save_file(torchvision.models.resnet50" in stderr
    assert "Traceback" not in stderr
    # Stopped before building or even looking for the data.
    assert str(missing) not in stderr
    assert not (tmp_path / "tfds").exists()


def test_missing_dataset_gives_path_and_instructions(tmp_path, capsys):
    # An explicit random initialisation passes the weights check (the run
    # starts) and then stops at the missing dataset.
    missing = tmp_path / "no_such_SYSU-MM01"
    code = cli_runs.run_main(
        tmp_path / "work",
        f"--config.data.manual_dir={missing}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.init.pretrained=random",
        config=_SYSU + ":base",
    )
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert str(missing) in stderr
    assert "cam1" in stderr  # The expected layout is shown.
    assert "Traceback" not in stderr


def test_sigkill_then_sigterm_then_resume_equals_uninterrupted(tmp_path):
    reference = str(tmp_path / "uninterrupted")
    proc = subprocess.run(
        cli_runs.command(reference, *_OVERRIDES),
        env=cli_runs.env(fast_compile=True),
        cwd=cli_runs.REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    total, want_summary, want_metrics = cli_runs.final_results(reference)
    assert total == _TOTAL_STEPS and want_metrics["step"] == _TOTAL_STEPS
    # The console: one progress line per log interval (every 2 steps of
    # the tiny config, and the last) and the results table; every metric
    # and the libraries' INFO chatter (TFDS, orbax) only in WORKDIR/log.txt
    # (their warnings reach the console, as every warning does: orbax warns
    # when a save waits for the previous one).
    logged_steps = [s for s in range(1, total + 1) if s % 2 == 0 or s == total]
    lines = [line for line in proc.stderr.splitlines() if "| ETA " in line]
    assert [int(line.split("] step ")[1].split("/")[0]) for line in lines] == (
        logged_steps
    )
    assert f"step {total}/{total} | epoch 3/3 | " in lines[-1]
    assert " img/s | ETA " in lines[-1] and " | loss " in lines[-1]
    assert "Metrics at step" not in proc.stderr
    assert "Downloading and preparing" not in proc.stdout + proc.stderr
    assert "sysu_all_single_shot" in proc.stderr
    with open(os.path.join(reference, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    for line in lines:
        assert line.split("] ", 1)[1] in log
    assert f"Metrics at step {total}: " in log
    assert "Building the sysu_mm01 records" in proc.stderr
    # TensorBoard events from clu's writer (tags are stored as plain bytes).
    folder = os.path.join(reference, "tensorboard")
    events = b""
    for name in os.listdir(folder):
        assert name.startswith("events.out.tfevents")
        with open(os.path.join(folder, name), "rb") as f:
            events += f.read()
    for tag in ("loss_id", "lr", "steps_per_sec", "test/sysu_all_single_shot"):
        assert tag.encode() in events
    console_info = [
        line for line in proc.stderr.splitlines() if line.startswith("I")
    ]
    for chatter in ("dataset_builder.py", "checkpoint_manager.py"):
        assert chatter in log
        assert not [line for line in console_info if chatter in line]

    workdir = str(tmp_path / "interrupted")
    code = _run_until_checkpoint(workdir, after=0, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed_at = max(cli_runs.checkpoint_steps(workdir))
    assert 0 < killed_at < total
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    # SIGTERM (preemption): checkpoint at the current step, exit 0.
    code = _run_main_until_checkpoint(workdir, after=killed_at)
    assert code == 0
    stopped_at = max(cli_runs.checkpoint_steps(workdir))
    assert killed_at < stopped_at
    if stopped_at < total:
        assert not os.path.exists(os.path.join(workdir, "results.json"))

    assert cli_runs.run_main(workdir, *_OVERRIDES) == 0
    step, summary, metrics = cli_runs.final_results(workdir)
    assert step == total
    assert summary == want_summary
    assert metrics == want_metrics


def test_non_finite_loss_stops_with_message_and_no_checkpoint(tmp_path, capsys):
    workdir = tmp_path / "diverged"
    code = cli_runs.run_main(workdir, "--config.optimizer.lr=1e12")
    stderr = capsys.readouterr().err
    assert code == 3, stderr[-3000:]
    assert "Non-finite values at step" in stderr
    assert "Traceback" not in stderr
    assert cli_runs.checkpoint_steps(str(workdir)) == []
