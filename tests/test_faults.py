"""Faults a user meets, each one short message and its exit code
(docs/training.md "Exit codes"), and nothing saved lost.

Damaged checkpoints (the newest intact one is restored; exit 3 when none
is), a full disk during a save (exit 3), two runs on one workdir (exit 2),
a changed config on resume (exit 2, config.json unchanged), impossible
config values (exit 2, before any work), an unusable workdir (exit 2, also
before an evaluation) and an undecodable dataset image (exit 2).

Runs are in this process (tests/cli_runs.py) on the tiny synthetic config,
with XLA's optimisations off; the module trains one workdir and each test
that damages it works on a copy.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import time

import cli_runs
import pytest

from mclnet_jax import workdir as workdir_lib

# The run's lock file (docs/training.md "Outputs, checkpoints and resume").

# Steps 12 and 13 kept (cli_runs.SHORT_RUN).
_OVERRIDES = cli_runs.SHORT_RUN
pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_compile):
    """A finished tiny run (checkpoints 12 and 13); read it, never write."""
    del fast_compile
    workdir = str(tmp_path_factory.mktemp("faults") / "trained")
    assert cli_runs.run_main(workdir, *_OVERRIDES) == 0
    assert cli_runs.checkpoint_steps(workdir) == [12, 13]
    return workdir


def _copy(trained, tmp_path, name="work"):
    workdir = str(tmp_path / name)
    shutil.copytree(trained, workdir)
    return workdir


def _step_dir(workdir, step):
    return os.path.join(workdir, "checkpoints", str(step))


def _largest_file(folder):
    files = [
        os.path.join(root, n)
        for root, _, names in os.walk(folder)
        for n in names
    ]
    return max(files, key=os.path.getsize)


def _damage(path, how):
    if how == "remove":
        os.remove(path)
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:  # Flip bytes in the middle: the file keeps its size.
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            data = f.read(16)
            f.seek(-len(data), os.SEEK_CUR)
            f.write(bytes(b ^ 0xFF for b in data))


def _warnings(caplog):
    """The warnings a run logged (the console shows each; in this process
    pytest collects them)."""
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def _short(stderr, max_lines=12):
    """The console of a failed run: no traceback, a few lines."""
    assert "Traceback" not in stderr, stderr[-3000:]
    error = stderr[stderr.index("ERROR: ") :]
    assert len(error.splitlines()) <= max_lines, error
    return error


@pytest.mark.parametrize("how", ["remove", "truncate"])
def test_damaged_newest_checkpoint_evaluates_the_previous(
    trained, tmp_path, capsys, caplog, how
):
    workdir = _copy(trained, tmp_path)
    bad = _largest_file(_step_dir(workdir, 13))
    _damage(bad, how)
    code = cli_runs.run_main(workdir, *_OVERRIDES, "--mode=evaluate")
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    relative = os.path.relpath(bad, _step_dir(workdir, 13))
    warnings = _warnings(caplog)
    about_13 = [w for w in warnings if "step 13" in w]
    assert len(about_13) == 1, warnings
    assert "damaged" in about_13[0] and relative in about_13[0]
    assert any(
        w.startswith("Restored step 12, the newest intact checkpoint")
        for w in warnings
    ), warnings
    with open(os.path.join(workdir, "results_latest.json")) as f:
        assert json.load(f)["step"] == 12
    assert "Traceback" not in stderr


def test_corrupted_newest_checkpoint_resumes_from_the_previous(
    trained, tmp_path, capsys, caplog
):
    # Flipped bytes in the arrays' data file: orbax would restore the wrong
    # numbers without a word; the manifest's checksum catches them.
    workdir = _copy(trained, tmp_path)
    bad = _largest_file(_step_dir(workdir, 13))
    _damage(bad, "flip")
    code = cli_runs.run_main(workdir, *_OVERRIDES)
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    log = caplog.text
    assert "Checkpoint step 13 in" in log and "is corrupted" in log
    assert "Restored step 12, the newest intact checkpoint" in log
    # The damaged step is kept aside, and step 13 saved again.
    assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "13"))
    assert cli_runs.checkpoint_steps(workdir) == [12, 13]
    step, _, metrics = cli_runs.final_results(workdir)
    assert step == 13 and metrics["step"] == 13


def test_no_intact_checkpoint_exits_3_naming_the_workdir(
    trained, tmp_path, capsys
):
    workdir = _copy(trained, tmp_path)
    for step in (12, 13):
        _damage(_largest_file(_step_dir(workdir, step)), "truncate")
    code = cli_runs.run_main(workdir, *_OVERRIDES)
    stderr = capsys.readouterr().err
    assert code == 3, stderr[-3000:]
    error = _short(stderr)
    assert f"No intact checkpoint in {workdir}/checkpoints" in error
    assert "steps 13, 12 are damaged" in error
    assert "move" in error
    with open(os.path.join(workdir, "log.txt"), encoding="utf-8") as f:
        assert "Traceback" in f.read()


def test_disk_full_during_a_save_exits_3_and_loses_nothing(
    tmp_path, capsys, monkeypatch
):
    """ENOSPC from the OS for every file of step 8 (the run saves 4, 8, 12,
    13): the lowest level a test can reach is Python's `open`, which
    orbax's own files (TensorStore writes the arrays in C++) go through."""
    workdir = str(tmp_path / "full")
    full = os.path.join(workdir, "checkpoints", "8.")
    real_open = open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        if str(file).startswith(full) and any(c in mode for c in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_on_a_full_disk)
    code = cli_runs.run_main(workdir, *_OVERRIDES)
    monkeypatch.undo()
    stderr = capsys.readouterr().err
    assert code == 3, stderr[-3000:]
    error = _short(stderr)
    assert "No space left on device while writing" in error
    assert f"{workdir}/checkpoints" in error
    assert "Nothing was lost: the checkpoint of step 4 is intact" in error
    assert cli_runs.checkpoint_steps(workdir) == [4]
    with open(os.path.join(workdir, "log.txt"), encoding="utf-8") as f:
        assert "No space left on device" in f.read()
    # Space freed: the same command resumes from step 4.
    assert cli_runs.run_main(workdir, *_OVERRIDES) == 0
    assert cli_runs.checkpoint_steps(workdir) == [12, 13]
    step, _, metrics = cli_runs.final_results(workdir)
    assert step == 13 and metrics["step"] == 13


def test_a_second_run_on_a_held_workdir_exits_2_naming_the_first(
    tmp_path, capsys
):
    workdir = str(tmp_path / "shared")
    lock = os.path.join(workdir, workdir_lib.LOCK_FILE)
    with open(str(tmp_path / "first.txt"), "wb") as log:
        first = subprocess.Popen(
            cli_runs.command(workdir, *_OVERRIDES, "--config.num_epochs=30"),
            env=cli_runs.env(fast_compile=True),
            cwd=cli_runs.REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while not cli_runs.checkpoint_steps(workdir):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        code = cli_runs.run_main(workdir, *_OVERRIDES)
        stderr = capsys.readouterr().err
        assert code == 2, stderr[-3000:]
        error = _short(stderr)
        assert f"{workdir} is in use by another run" in error
        assert f"pid {first.pid} on " in error
        assert first.poll() is None  # The first run goes on.
        # A killed run leaves its lock file, but not the lock.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert f"pid {first.pid} on " in open(lock).read()
        killed_at = max(cli_runs.checkpoint_steps(workdir))
        assert cli_runs.run_main(workdir, *_OVERRIDES) == 0
        # It resumed: the first run's last checkpoint is past this run's 13.
        assert cli_runs.final_results(workdir)[0] == max(killed_at, 13)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_resume_with_a_changed_config_exits_2_before_writing(
    trained, tmp_path, capsys
):
    workdir = _copy(trained, tmp_path)
    saved = open(os.path.join(workdir, "config.json"), "rb").read()
    listing = sorted(os.listdir(workdir))
    code = cli_runs.run_main(
        workdir,
        *_OVERRIDES,
        "--config.data.num_identities=1",
        "--config.data.image_size=(64, 32)",
        # May change on resume: not reported.
        "--config.evals.test.num_trials=1",
        "--config.max_steps=12",
    )
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    error = _short(stderr)
    assert "config.data.num_identities: 2 in the checkpoints, 1 now" in error
    assert (
        "config.data.image_size: [32, 16] in the checkpoints, [64, 32] now"
        in error
    )
    assert "num_trials" not in error and "max_steps" not in error
    assert open(os.path.join(workdir, "config.json"), "rb").read() == saved
    assert sorted(os.listdir(workdir)) == listing
    assert cli_runs.checkpoint_steps(workdir) == [12, 13]


def test_fields_that_may_change_on_resume_are_not_compared(trained):
    from mclnet_jax import config_checks

    config = cli_runs_config()
    for field in ("max_steps", "num_epochs", "log_every_steps"):
        assert config_checks._may_change(field)  # noqa: SLF001
    for field in ("seed", "variant", "data.num_identities", "model.depth"):
        assert not config_checks._may_change(field)  # noqa: SLF001
    config.evals.test.num_trials = 1
    config.max_steps = 12
    config.num_epochs = 1
    config.optimizer.lr = 0.01
    config.mcm_optimizer.lr = 0.01
    config.checkpoint.every_steps = 4
    config_checks.check_resume(config, trained)  # No error.
    config.seed = 1
    with pytest.raises(config_checks.errors.ConfigChangedError, match="seed"):
        config_checks.check_resume(config, trained)


def cli_runs_config():
    from mclnet_jax.configs import synthetic

    return synthetic.get_config("tiny=1")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["--config.optimizer.lr=-0.1"], ["config.optimizer.lr must be"]),
        (["--config.num_epochs=0"], ["config.num_epochs must be"]),
        (["--config.max_steps=-1"], ["config.max_steps must be"]),
        (["--config.max_steps=0"], ["config.max_steps must be"]),
        (["--config.variant=nope"], ["config.variant must be one of"]),
        (["--config.data.dataset=nope"], ["config.data.dataset must be"]),
        (
            [
                "--config.data.random_erasing=1.5",
                "--config.optimizer.weight_decay=-1.0",
                "--config.data.num_identities=0",
                "--config.data.image_size=(8, 4)",
            ],
            [
                "config.data.random_erasing must be a probability",
                "config.optimizer.weight_decay must be",
                "config.data.num_identities must be",
                "config.data.image_size (8, 4) is too small",
            ],
        ),
    ],
)
def test_impossible_values_exit_2_before_any_work(
    tmp_path, capsys, overrides, expected
):
    workdir = tmp_path / "never"
    code = cli_runs.run_main(workdir, *_OVERRIDES, *overrides)
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    error = _short(stderr)
    for line in expected:
        assert sum(line in e for e in error.splitlines()) == 1, error
    assert f"{len(expected)} problem" in error
    assert not workdir.exists()  # Nothing created, no data generated.


def test_workdir_that_is_a_file_exits_2(tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    for mode in ("train", "evaluate"):
        code = cli_runs.run_main(path, *_OVERRIDES, f"--mode={mode}")
        stderr = capsys.readouterr().err
        assert code == 2, stderr[-3000:]
        assert f"--workdir {path} is a file" in _short(stderr)


def test_read_only_workdir_stops_evaluate_before_evaluating(
    trained, tmp_path, capsys, monkeypatch
):
    workdir = _copy(trained, tmp_path)
    os.chmod(workdir, 0o555)
    if os.geteuid() == 0:
        # Permission bits do not stop root: the OS's answer to a new file
        # in a folder it may not write, for this folder only.
        denied = PermissionError(errno.EACCES, "Permission denied")
        real_open, real_os_open = open, os.open

        def in_workdir(path):
            return os.path.dirname(os.path.abspath(str(path))) == workdir

        def read_only_open(file, mode="r", *args, **kwargs):
            if in_workdir(file) and any(c in mode for c in "wax+"):
                raise denied
            return real_open(file, mode, *args, **kwargs)

        def read_only_os_open(path, flags, *args, **kwargs):
            writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT
            if in_workdir(path) and flags & writes:
                raise denied
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr("builtins.open", read_only_open)
        monkeypatch.setattr(os, "open", read_only_os_open)
    try:
        code = cli_runs.run_main(workdir, *_OVERRIDES, "--mode=evaluate")
    finally:
        monkeypatch.undo()
        os.chmod(workdir, 0o755)
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    error = _short(stderr)
    assert f"--workdir {workdir} is not writable" in error
    assert not os.path.exists(os.path.join(workdir, "results_latest.json"))
    assert "SYSU-MM01 evaluation" not in stderr  # Nothing evaluated.


def test_undecodable_image_is_one_line_and_exit_2(tmp_path, capsys):
    from data_pipeline import datasets

    workdir = str(tmp_path / "corrupt")
    config = cli_runs_config()
    root = datasets.generate_synthetic(config.data, workdir)
    images = sorted(
        os.path.join(r, n)
        for r, _, names in os.walk(os.path.join(root, "cam1"))
        for n in names
    )
    with open(images[0], "wb") as f:
        f.write(b"not an image" * 10)
    code = cli_runs.run_main(workdir, *_OVERRIDES)
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    error = _short(stderr, max_lines=4)
    assert images[0] in error


def test_a_best_metric_that_names_no_number_is_a_user_error():
    from mclnet_jax import checkpointing, errors

    results = {"val": {"sysu_all_single_shot": {"bn": {"mAP": 0.25}}}}
    path = "val/sysu_all_single_shot/bn/mAP"
    assert checkpointing._lookup(results, path) == 0.25
    for bad, says in (
        ("val/nope/bn/mAP", "not found in the validation results"),
        ("val/sysu_all_single_shot/bn", "names a group"),
    ):
        with pytest.raises(errors.ConfigurationError, match=says) as info:
            checkpointing._lookup(results, bad)
        assert errors.classify(info.value)[0] == errors.USER_ERROR


def test_a_damaged_best_json_is_a_warning_not_a_traceback(tmp_path):
    from mclnet_jax import checkpointing

    best = tmp_path / workdir_lib.BEST_DIR
    best.mkdir()
    (best / checkpointing.BEST_INFO_FILE).write_text('{"step": 4, "val')
    checkpointer = checkpointing.Checkpointer(
        str(tmp_path), best_metric="val/x"
    )
    try:
        assert checkpointer._best_value is None
    finally:
        checkpointer.close()
    (best / checkpointing.BEST_INFO_FILE).write_text(
        json.dumps({"step": 4, "metric": "val/x", "value": 0.5})
    )
    checkpointer = checkpointing.Checkpointer(
        str(tmp_path), best_metric="val/x"
    )
    try:
        assert checkpointer._best_value == 0.5
    finally:
        checkpointer.close()


def test_a_damaged_config_json_is_a_user_error(tmp_path):
    from mclnet_jax import embed, errors

    path = tmp_path / workdir_lib.CONFIG_FILE
    for damaged in (b'{"seed": 0, "da', b"\xff\xfe\x00garbage"):
        path.write_bytes(damaged)
        with pytest.raises(errors.ConfigurationError, match="not valid JSON"):
            embed.read_workdir_config(str(tmp_path))
