"""Two processes of the CLI, one of them preempted (docs/training.md
"Scaling out").

Two local processes (one CPU device each, gloo collectives) train the tiny
synthetic config in one shared workdir, as the hosts of a slice would.
SIGTERM reaches only one of them mid-run: both must save the same step and
exit 0, and rerunning both must end with exactly the results and final
training metrics of an uninterrupted run of one process over two devices.
That run compiles the same global programs: how many hosts hold the devices
must not change a single number.

The runs share the session's XLA compilation cache (tests/conftest.py).
"""

import os
import re
import signal
import socket
import subprocess
import time

import cli_runs
import pytest

# 1 epoch x 13 steps: a SIGTERM after the first checkpoint lands mid-run.
_OVERRIDES = cli_runs.SHORT_RUN
_TOTAL_STEPS = 13
_TIMEOUT_S = 500


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def children():
    """The test's child processes: any still running at its end are killed."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def start_pair(children):
    """`start_pair(workdir)` starts processes 0 and 1 of a run on `workdir`
    (process 0 prepares the data, the other waits for it)."""

    def start(workdir):
        port = _free_port()
        procs = []
        for index in range(2):
            with open(f"{workdir}_process{index}.txt", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        cli_runs.command(
                            workdir,
                            *_OVERRIDES,
                            f"--log_dir={workdir}_logs{index}",
                            "--config.distributed.enabled=True",
                            "--config.distributed.coordinator_address="
                            f"127.0.0.1:{port}",
                            "--config.distributed.num_processes=2",
                            f"--config.distributed.process_id={index}",
                            "--config.distributed.cpu_collectives=gloo",
                        ),
                        # One CPU device per process, XLA's optimisations
                        # off (every run compared here compiles the same
                        # programs).
                        env=cli_runs.env(fast_compile=True),
                        cwd=cli_runs.REPO,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        children.extend(procs)
        return procs

    return start


def _wait(procs):
    return [proc.wait(timeout=_TIMEOUT_S) for proc in procs]


def _output(workdir, index):
    with open(f"{workdir}_process{index}.txt", errors="replace") as f:
        return f.read()


def _tail(workdir):
    """The end of process 0's output and of process 1's (failure messages)."""
    return "\n".join(_output(workdir, i)[-3000:] for i in range(2))


def test_sigterm_to_one_process_stops_both_and_resume_is_exact(
    tmp_path, start_pair, children
):
    workdir = str(tmp_path / "interrupted")
    procs = start_pair(workdir)
    deadline = time.monotonic() + _TIMEOUT_S
    while (
        not cli_runs.checkpoint_steps(workdir) and time.monotonic() < deadline
    ):
        assert all(p.poll() is None for p in procs), _tail(workdir)
        time.sleep(0.05)
    # The preemption notice reaches process 1 only.
    procs[1].send_signal(signal.SIGTERM)
    # Meanwhile, the uninterrupted run: one process, two devices.
    reference = str(tmp_path / "uninterrupted")
    with open(f"{reference}_process0.txt", "ab") as log:
        reference_proc = subprocess.Popen(
            cli_runs.command(reference, *_OVERRIDES),
            env=cli_runs.env(fast_compile=True, host_devices=2),
            cwd=cli_runs.REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    children.append(reference_proc)

    assert _wait(procs) == [0, 0], _tail(workdir)
    logs = [_output(workdir, i) for i in range(2)]
    assert "Signal 15: saving a checkpoint" in logs[1]
    assert "Signal 15" not in logs[0]
    stopped = [
        [int(s) for s in re.findall(r"Stopped at step (\d+) on SIGTERM", log)]
        for log in logs
    ]
    assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
    stopped_at = stopped[0][0]
    assert 0 < stopped_at < _TOTAL_STEPS
    assert max(cli_runs.checkpoint_steps(workdir)) == stopped_at
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    # The same two commands again: both resume at the saved step.
    assert _wait(start_pair(workdir)) == [0, 0], _tail(workdir)
    assert f"Resuming at step {stopped_at} " in _output(workdir, 1)
    assert reference_proc.wait(timeout=_TIMEOUT_S) == 0, _output(reference, 0)[
        -3000:
    ]
    total, want_summary, want_metrics = cli_runs.final_results(reference)
    assert total == _TOTAL_STEPS and want_metrics["step"] == _TOTAL_STEPS
    step, summary, metrics = cli_runs.final_results(workdir)
    assert step == total
    assert summary == want_summary
    assert metrics == want_metrics
