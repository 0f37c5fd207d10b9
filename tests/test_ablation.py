"""Tests of benchmarks/ablation.py: its statistics and a tiny end-to-end run."""

import json
import os
import subprocess
import types

import numpy as np
import pytest
from absl import flags
from absl import logging as absl_logging

from benchmarks import ablation


def _main(argv) -> int:
    """`python benchmarks/ablation.py ARGV` in this process."""
    flag_values = flags.FlagValues()
    ablation.define_flags(flag_values)
    flag_values(["ablation.py", *argv])
    return ablation.main(["ablation.py"], flag_values)


def _metrics(r1, m, n):
    return {"rank1": r1, "mAP": m, "mINP": n}


def test_summarize_means_stds_and_paired_differences():
    results = {
        "agw_re": {
            0: _metrics(10.0, 20.0, 5.0),
            1: _metrics(14.0, 22.0, 7.0),
            2: _metrics(12.0, 27.0, 6.0),
        },
        "mclnet": {
            0: _metrics(13.0, 21.0, 5.0),
            1: _metrics(14.0, 26.0, 9.0),
            2: _metrics(18.0, 29.0, 7.0),
        },
    }
    table = ablation.summarize(results, [0, 1, 2])
    agw, mcl = table["agw_re"], table["mclnet"]
    # Hand-worked: mean(10, 14, 12) = 12, sample std = sqrt((4+4+0)/2) = 2.
    assert agw["rank1"]["mean"] == pytest.approx(12.0)
    assert agw["rank1"]["std"] == pytest.approx(2.0)
    assert "rank1_vs_ref" not in agw  # The reference has no difference.
    # Paired differences per seed: 3, 0, 6 -> mean 3, std sqrt(9+9+0)/sqrt2.
    assert mcl["rank1_vs_ref"]["mean"] == pytest.approx(3.0)
    assert mcl["rank1_vs_ref"]["std"] == pytest.approx(3.0)
    # mAP: 1, 4, 2 -> mean 7/3.
    assert mcl["mAP_vs_ref"]["mean"] == pytest.approx(7.0 / 3.0)
    assert mcl["mAP_vs_ref"]["std"] == pytest.approx(
        np.std([1.0, 4.0, 2.0], ddof=1)
    )
    # Rows without runs are left out; one seed has std 0.
    one = ablation.summarize({"base": {0: _metrics(1.0, 2.0, 3.0)}}, [0])
    assert set(one) == {"base"}
    assert one["base"]["mAP"] == {"mean": 2.0, "std": 0.0}


def test_markdown_rows_in_paper_order():
    results = {
        v: {0: _metrics(float(i), 2.0 * i, 3.0)}
        for i, (v, _) in enumerate(ablation.ROWS)
    }
    md = ablation.markdown(ablation.summarize(results, [0]), title="T")
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        label for _, label in ablation.ROWS
    ]
    # MCLNet (row 4) vs AGW* (row 1): +3.0 rank-1, +6.0 mAP; MCLNet+CAJ
    # (row 5): +4.0, +8.0.
    assert "+3.0 ± 0.0 | +6.0 ± 0.0 | +0.0 ± 0.0" in rows[4]
    assert "+4.0 ± 0.0 | +8.0 ± 0.0 | +0.0 ± 0.0" in rows[5]
    assert rows[1].endswith("| — | — | — |")


def test_test_time_views_are_rows_of_their_own(tmp_path):
    def mean(r1):
        return {"mean": {"rank1": r1, "mAP": r1 / 2, "mINP": r1 / 4}}

    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    summary = {
        "sysu_all_single_shot": {"bn": mean(0.1), "bn+flip": mean(0.2)},
        "sysu_all_single_shot+aqe": {"bn": mean(0.3), "bn+flip": mean(0.4)},
    }
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"summary": summary}, f)
    got = {
        view: ablation.read_result(run_dir, "bn", view)["rank1"]
        for view, _ in ablation.TEST_TIME_VIEWS
    }
    assert got == pytest.approx(
        {"": 10.0, "+flip": 20.0, "+aqe": 30.0, "+flip+aqe": 40.0}
    )
    assert ablation.read_result(run_dir, "bn", "+aqe")["mAP"] == 15.0
    # A run that evaluated no flip has no flip rows (the benchmark reruns it).
    del summary["sysu_all_single_shot"]["bn+flip"]
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"summary": summary}, f)
    assert ablation.read_result(run_dir, "bn", "+flip") is None
    rows = ablation.table_rows(["mclnet_caj", "mclnet"], test_time=True)
    assert rows == [
        ("mclnet", "MCLNet"),
        ("mclnet+flip", "MCLNet +flip"),
        ("mclnet+aqe", "MCLNet +AQE"),
        ("mclnet+flip+aqe", "MCLNet +flip +AQE"),
        ("mclnet_caj", "MCLNet+CAJ"),
        ("mclnet_caj+flip", "MCLNet+CAJ +flip"),
        ("mclnet_caj+aqe", "MCLNet+CAJ +AQE"),
        ("mclnet_caj+flip+aqe", "MCLNet+CAJ +flip +AQE"),
    ]
    # Paired differences to another reference row, per seed.
    results = {
        "mclnet": {0: _metrics(10.0, 20.0, 5.0), 1: _metrics(12.0, 20.0, 5.0)},
        "mclnet+flip": {
            0: _metrics(11.0, 20.0, 5.0),
            1: _metrics(15.0, 20.0, 5.0),
        },
    }
    table = ablation.summarize(
        results, [0, 1], rows=rows[:2], reference="mclnet"
    )
    assert "rank1_vs_ref" not in table["mclnet"]
    # Differences 1 and 3: mean 2, sample std sqrt(2).
    assert table["mclnet+flip"]["rank1_vs_ref"]["mean"] == pytest.approx(2.0)
    assert table["mclnet+flip"]["rank1_vs_ref"]["std"] == pytest.approx(
        np.sqrt(2.0)
    )
    md = ablation.markdown(
        table, title="T", rows=rows[:2], reference_label="MCLNet"
    )
    assert "dR1 vs MCLNet" in md and "| MCLNet +flip | " in md
    with pytest.raises(ValueError, match="reference"):
        ablation.run(
            str(tmp_path / "x"),
            num_seeds=1,
            rows=["mclnet_caj"],
            reference="mclnet",
        )
    assert not os.path.exists(str(tmp_path / "x"))


def test_bad_arguments(tmp_path):
    with pytest.raises(flags.IllegalFlagValueError, match="nope"):
        _main([f"--workdir={tmp_path}", "--rows=agw_re,nope"])
    with pytest.raises(flags.IllegalFlagValueError, match="seeds"):
        _main([f"--workdir={tmp_path}", "--seeds=0"])
    with pytest.raises(flags.IllegalFlagValueError, match="setting"):
        _main([f"--workdir={tmp_path}", "--setting=huge"])
    with pytest.raises(flags.IllegalFlagValueError, match="workdir"):
        _main([])
    with pytest.raises(ValueError, match="nope"):
        ablation.run(str(tmp_path), num_seeds=1, rows=["agw_re", "nope"])
    with pytest.raises(ValueError, match="seeds"):
        ablation.run(str(tmp_path), num_seeds=0)
    with pytest.raises(ValueError, match="setting"):
        ablation.load_config("base", seed=0, setting="huge")
    assert not os.listdir(tmp_path)


def _worker_in_this_process(cmd, *, cwd, check):
    """`subprocess.run` for `ablation.run`'s worker command (`python -m
    benchmarks.ablation --worker ...`): its flags, parsed and run here."""
    assert cmd[1:3] == ["-m", "benchmarks.ablation"] and not check, cmd
    assert cwd and os.path.isdir(cwd)
    verbosity = absl_logging.get_verbosity()  # The worker lowers it.
    try:
        code = _main(cmd[3:])
    finally:
        absl_logging.set_verbosity(verbosity)
    return subprocess.CompletedProcess(cmd, code)


def test_tiny_end_to_end_and_resume(
    tmp_path, capsys, monkeypatch, fast_compile
):
    # The table's bookkeeping is under test, not the numbers: the training
    # runs go through the worker's command line in this process (no new
    # imports), without XLA's optimisations (much faster compiles).
    del fast_compile
    monkeypatch.setattr(
        ablation,
        "subprocess",
        types.SimpleNamespace(run=_worker_in_this_process),
    )
    # And a few steps of the tiny setting are enough for that (at a small lr:
    # the eval-mode features stay finite, as in tests/test_analysis.py).
    tiny_config = ablation.load_config

    def few_steps(variant, *, seed, setting, test_time=False):
        config = tiny_config(
            variant, seed=seed, setting=setting, test_time=test_time
        )
        config.max_steps = 4
        config.optimizer.lr = config.mcm_optimizer.lr = 0.01
        return config

    monkeypatch.setattr(ablation, "load_config", few_steps)
    workdir = str(tmp_path / "ab")
    args = [
        f"--workdir={workdir}",
        "--setting=tiny",
        "--seeds=1",
        "--rows=base,agw_re",
    ]
    assert _main(args) == 0
    with open(os.path.join(workdir, "ablation.json")) as f:
        out = json.load(f)
    assert set(out["rows"]) == {"base", "agw_re"}
    assert set(out["timings"]) == {"base_seed0", "agw_re_seed0"}
    for variant in ("base", "agw_re"):
        with open(
            os.path.join(workdir, "runs", f"{variant}_seed0", "results.json")
        ) as f:
            mean = json.load(f)["summary"]["sysu_all_single_shot"]["bn"]["mean"]
        assert out["rows"][variant]["rank1"]["mean"] == pytest.approx(
            100 * mean["rank1"]
        )
    base = out["rows"]["base"]
    agw = out["rows"]["agw_re"]
    assert base["mAP_vs_ref"]["mean"] == pytest.approx(
        base["mAP"]["mean"] - agw["mAP"]["mean"]
    )
    md = open(os.path.join(workdir, "ablation.md")).read()
    assert "| Base |" in md and "| AGW* |" in md
    # The two runs share one generated dataset.
    assert os.path.exists(os.path.join(workdir, "data_seed0", ".complete"))
    # A rerun trains nothing and gives the same table.
    capsys.readouterr()
    assert _main(args) == 0
    with open(os.path.join(workdir, "ablation.json")) as f:
        again = json.load(f)
    assert again["timings"] == {}
    assert again["rows"] == out["rows"]
    assert "training" not in capsys.readouterr().out
