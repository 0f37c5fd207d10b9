r"""The paper's ablation rows on synthetic data, over several seeds.

Trains Base, AGW*, AGW*+MCM, AGW*+ICA,CCA and MCLNet (the variants base,
agw_re, agw_re_mcm, agw_re_ica_cca, mclnet of configs/common.py; and on
request MCLNet+CAJ, mclnet_caj: CAJ's channel augmentation)
with the demo's setting (configs/synthetic.py: data, model, schedule) for N
seeds, evaluates each on the SYSU-MM01 all-search single-shot protocol (10
gallery trials) and prints one table: mean +- std over seeds of rank-1 / mAP
/ mINP per row, and the paired difference of each row to AGW* (or the
`--reference` row; same seed: same data, same initialisation) with its std
over seeds. With `--test_time` every run is also evaluated with test-time
flip, average query expansion and both, each a row of its own. Seed s generates
the synthetic data with generator seed s and trains with config.seed = s;
the data of a seed is generated and built once and shared by its rows. Stds
are sample stds (ddof 1) over seeds.

Writes <workdir>/ablation.json and <workdir>/ablation.md; every run keeps
its own workdir (<workdir>/runs/<row>_seed<s>, with results.json), and a
rerun skips the runs that have finished, so an interrupted benchmark
resumes.

Usage::

    python benchmarks/ablation.py --workdir=/tmp/ablation
    python benchmarks/ablation.py --workdir=/tmp/ablation --seeds=5
    python benchmarks/ablation.py --workdir=/tmp/ablation_gpu --setting=large
    python benchmarks/ablation.py --workdir=/tmp/ab_tiny --setting=tiny
    python benchmarks/ablation.py --workdir=/tmp/beyond \
        --rows=mclnet,mclnet_caj --reference=mclnet --test_time

Settings: "demo" (default) is configs/synthetic.py as is, so every row
shares the demo's departures: random erasing is off in every row (AGW* here
is AGW without erasing, which slows learning from scratch at this budget)
and our random grey and random remapping (config.data.random_grey = 0.5,
random_remap = 0.3) are on in every row; the rows differ only in what the
variants switch (triplet, pooling, non-local, MCM, ICA, CCA). "large" (for
a GPU) has more identities and images, bigger images, a wider network and a
longer schedule; "tiny" is a seconds-long smoke run (the tests).
"""

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from mclnet_jax import platform
from mclnet_jax.configs import synthetic

# The CLI's XLA:CPU defaults, before JAX initialises its backends.
platform.apply_cpu_defaults()

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (variant, label) in the paper's order; AGW* is the reference of the
# paired differences.
ROWS = (
    ("base", "Base"),
    ("agw_re", "AGW*"),
    ("agw_re_mcm", "AGW*+MCM"),
    ("agw_re_ica_cca", "AGW*+ICA,CCA"),
    ("mclnet", "MCLNet"),
    # Beyond the paper: MCLNet with CAJ's channel augmentation.
    ("mclnet_caj", "MCLNet+CAJ"),
)
PAPER_ROWS = tuple(v for v, _ in ROWS[:5])
REFERENCE = "agw_re"
# With --test_time: each run also evaluated with test-time flip, average
# query expansion and both (config.eval.flip / aqe): its own rows, read from
# the same results.json as "<variant><view>".
TEST_TIME_VIEWS = (
    ("", ""),
    ("+flip", " +flip"),
    ("+aqe", " +AQE"),
    ("+flip+aqe", " +flip +AQE"),
)
METRICS = ("rank1", "mAP", "mINP")
PROTOCOL = "sysu_all_single_shot"
SETTINGS = ("demo", "large", "tiny")


def load_config(
    variant: str, *, seed: int, setting: str, test_time: bool = False
):
    """The run's config (configs/synthetic.py plus the setting's changes;
    `test_time`: flip and AQE evaluated too)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}.")
    config = synthetic.get_config(
        f"variant={variant},seed={seed},tiny={int(setting == 'tiny')},"
        f"large={int(setting == 'large')}"
    )
    # Only the model's all-search numbers are compared.
    config.evals.test.modes = ("all",)
    config.eval.flip = config.eval.aqe = test_time
    for name in ("raw_pixels", "figures"):
        if name in config.evals:
            config.evals[name].at_end = False
    return config


def _run_dir(workdir: str, variant: str, seed: int) -> str:
    return os.path.join(workdir, "runs", f"{variant}_seed{seed}")


def _generate(workdir: str, seed: int, setting: str) -> tuple[str, str]:
    """Generates seed's data once; returns (manual_dir, tfds data_dir)."""
    from data_pipeline import synthetic

    config = load_config(REFERENCE, seed=seed, setting=setting)
    root = os.path.join(workdir, f"data_seed{seed}")
    marker = os.path.join(root, ".complete")
    if not os.path.exists(marker):
        synthetic.generate_sysu(
            root, overwrite=True, **dict(config.data.synthetic.generator)
        )
        with open(marker, "w") as f:
            f.write("ok\n")
    return root, os.path.join(workdir, f"tfds_seed{seed}")


def _worker(
    *,
    variant: str,
    seed: int,
    setting: str,
    manual_dir: str,
    data_dir: str,
    run_dir: str,
    test_time: bool = False,
) -> int:
    """Trains and evaluates one (row, seed) in this process."""
    from absl import logging

    from mclnet_jax import train

    logging.set_verbosity(logging.WARNING)
    config = load_config(
        variant, seed=seed, setting=setting, test_time=test_time
    )
    config.data.synthetic = None
    config.data.manual_dir = manual_dir
    config.data.data_dir = data_dir
    train.train_and_evaluate(config, run_dir)
    return 0


def read_result(
    run_dir: str, feature: str, view: str = ""
) -> dict[str, float] | None:
    """{metric: percent} of a finished run, or None (also when the run did
    not evaluate `view`, one of TEST_TIME_VIEWS)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)["summary"]
    protocol = PROTOCOL + ("+aqe" if "+aqe" in view else "")
    feature += "+flip" if "+flip" in view else ""
    if feature not in summary.get(protocol, {}):
        return None
    mean = summary[protocol][feature]["mean"]
    return {m: 100.0 * float(mean[m]) for m in METRICS}


def table_rows(variants, *, test_time: bool) -> list[tuple[str, str]]:
    """(key, label) of the table's rows in ROWS order: a variant, or with
    `test_time` each of its TEST_TIME_VIEWS ("mclnet+flip", ...)."""
    labels = dict(ROWS)
    views = TEST_TIME_VIEWS if test_time else (("", ""),)
    return [
        (variant + view, labels[variant] + suffix)
        for variant, _ in ROWS
        if variant in variants
        for view, suffix in views
    ]


def summarize(
    results: dict[str, dict[int, dict[str, float]]],
    seeds,
    *,
    rows=ROWS,
    reference: str = REFERENCE,
) -> dict:
    """Mean / std per row and paired differences to the `reference` row
    (percent); `rows` are (key, label) in table order."""

    def stats(values):
        values = np.asarray(values, np.float64)
        std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
        return {"mean": float(np.mean(values)), "std": std}

    out = {}
    ref = results.get(reference, {})
    for key, label in rows:
        runs = results.get(key, {})
        done = [s for s in seeds if s in runs]
        if not done:
            continue
        row = {"label": label, "seeds": done}
        for m in METRICS:
            row[m] = stats([runs[s][m] for s in done])
            paired = [s for s in done if s in ref]
            if key != reference and paired:
                row[f"{m}_vs_ref"] = stats(
                    [runs[s][m] - ref[s][m] for s in paired]
                )
        out[key] = row
    return out


def markdown(table: dict, *, title: str, rows=ROWS, reference_label="AGW*"):
    """The summary as a Markdown table."""
    ref = reference_label
    lines = [
        title,
        "",
        f"| Row | R1 (%) | mAP (%) | mINP (%) | dR1 vs {ref} | dmAP vs "
        f"{ref} | dmINP vs {ref} |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, _ in rows:
        if key not in table:
            continue
        row = table[key]
        cells = [f"{row[m]['mean']:.1f} ± {row[m]['std']:.1f}" for m in METRICS]
        for m in METRICS:
            d = row.get(f"{m}_vs_ref")
            cells.append(
                "—" if d is None else f"{d['mean']:+.1f} ± {d['std']:.1f}"
            )
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_rows(rows) -> None:
    """Raises ValueError unless `rows` is a non-empty list of known rows."""
    known = sorted(v for v, _ in ROWS)
    unknown = sorted(set(rows) - set(known))
    if unknown or not rows:
        raise ValueError(f"--rows: unknown {unknown}; choose from {known}.")


def run(
    workdir: str,
    *,
    num_seeds: int,
    setting: str = "demo",
    rows=PAPER_ROWS,
    feature: str = "bn",
    reference: str = REFERENCE,
    test_time: bool = False,
) -> int:
    """Trains the missing (row, seed) runs and writes the tables.

    Args:
      workdir: where the data, the runs and the tables go.
      num_seeds: seeds 0 .. num_seeds - 1.
      setting: one of SETTINGS.
      rows: the variants of ROWS to train.
      feature: "bn" or "pool", the feature reported.
      reference: the row (a variant) of the paired differences.
      test_time: also evaluate flip, AQE and both (their own rows).

    Returns:
      The exit status: 0, or that of the first run that failed.
    """
    check_rows(rows)
    if reference not in rows:
        raise ValueError(
            f"--reference {reference!r} must be one of --rows {list(rows)}."
        )
    if num_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}.")
    seeds = list(range(num_seeds))
    views = [v for v, _ in TEST_TIME_VIEWS] if test_time else [""]
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    results: dict[str, dict[int, dict[str, float]]] = {}
    timings = {}
    for seed in seeds:
        manual_dir, data_dir = _generate(workdir, seed, setting)
        for variant in rows:
            run_dir = _run_dir(workdir, variant, seed)
            # The last view: None until the run evaluated what is asked.
            res = read_result(run_dir, feature, views[-1])
            if res is None:
                t0 = time.time()
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.ablation",
                    "--worker",
                    f"--variant={variant}",
                    f"--seed={seed}",
                    f"--setting={setting}",
                    f"--manual_dir={manual_dir}",
                    f"--data_dir={data_dir}",
                    f"--run_dir={run_dir}",
                    f"--workdir={workdir}",
                    f"--test_time={test_time}",
                ]
                print(
                    f"[{time.time() - start:7.0f} s] training {variant} "
                    f"seed {seed}",
                    flush=True,
                )
                proc = subprocess.run(cmd, cwd=_ROOT, check=False)
                if proc.returncode:
                    print(
                        f"{variant} seed {seed} failed (exit "
                        f"{proc.returncode}); see {run_dir}.",
                        file=sys.stderr,
                    )
                    return proc.returncode
                cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                timings[f"{variant}_seed{seed}"] = {
                    "wall_s": round(time.time() - t0, 1),
                    "cpu_s": round(
                        cpu1.ru_utime
                        + cpu1.ru_stime
                        - cpu0.ru_utime
                        - cpu0.ru_stime,
                        1,
                    ),
                }
            for view in views:
                results.setdefault(variant + view, {})[seed] = read_result(
                    run_dir, feature, view
                )
    table_keys = table_rows(rows, test_time=test_time)
    labels = dict(ROWS)
    table = summarize(results, seeds, rows=table_keys, reference=reference)
    wall = time.time() - start
    max_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    title = (
        f"Synthetic ablation ({setting} setting, {len(seeds)} "
        f"seeds, SYSU all-search single-shot, {feature} "
        "features; mean ± std over seeds; d = paired difference to "
        f"{labels[reference]})"
    )
    md = markdown(
        table,
        title=title,
        rows=table_keys,
        reference_label=labels[reference],
    )
    with open(os.path.join(workdir, "ablation.md"), "w") as f:
        f.write(md)
    with open(os.path.join(workdir, "ablation.json"), "w") as f:
        json.dump(
            {
                "setting": setting,
                "seeds": seeds,
                "feature": feature,
                "protocol": PROTOCOL,
                "reference": reference,
                "rows": table,
                "per_seed": results,
                "timings": timings,
                "wall_s": round(wall, 1),
                "max_child_rss_mb": round(max_rss_mb, 1),
            },
            f,
            indent=2,
        )
    print(md)
    print(
        f"Wall time {wall / 60:.1f} min (runs done now: "
        f"{len(timings)}); tables in {workdir}/ablation.{{md,json}}."
    )
    return 0


def _validate_rows(rows) -> bool:
    try:
        check_rows(rows)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command line's flags (defined when run as a program only)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("workdir", None, "Data, runs and tables go here.", **fv)
    flags.DEFINE_integer(
        "seeds", 3, "Number of seeds (0 .. N-1).", lower_bound=1, **fv
    )
    flags.DEFINE_enum(
        "setting",
        "demo",
        SETTINGS,
        "demo (default), large (GPU), tiny (smoke test).",
        **fv,
    )
    flags.DEFINE_list(
        "rows",
        list(PAPER_ROWS),
        "Comma-separated variants (default: the paper's five; also "
        "mclnet_caj).",
        **fv,
    )
    flags.DEFINE_string(
        "reference",
        REFERENCE,
        "The row of the paired differences (one of --rows).",
        **fv,
    )
    flags.DEFINE_bool(
        "test_time",
        False,
        "Also evaluate test-time flip, AQE and both: rows of their own.",
        **fv,
    )
    flags.DEFINE_enum(
        "feature",
        "bn",
        ["bn", "pool"],
        "Feature reported (both are evaluated).",
        **fv,
    )
    flags.DEFINE_bool(
        "worker",
        False,
        "Internal: train one (row, seed) in this process.",
        **fv,
    )
    flags.DEFINE_string("variant", None, "Internal (--worker): the row.", **fv)
    flags.DEFINE_integer("seed", None, "Internal (--worker): the seed.", **fv)
    flags.DEFINE_string("manual_dir", None, "Internal (--worker).", **fv)
    flags.DEFINE_string("data_dir", None, "Internal (--worker).", **fv)
    flags.DEFINE_string("run_dir", None, "Internal (--worker).", **fv)
    flags.register_validator("rows", _validate_rows, flag_values=flag_values)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    fl = flag_values
    if fl.worker:
        internal = ("variant", "seed", "manual_dir", "data_dir", "run_dir")
        missing = [f"--{n}" for n in internal if fl[n].value is None]
        if missing:
            raise app.UsageError(f"--worker needs {', '.join(missing)}.")
        return _worker(
            setting=fl.setting,
            test_time=fl.test_time,
            **{n: fl[n].value for n in internal},
        )
    return run(
        fl.workdir,
        num_seeds=fl.seeds,
        setting=fl.setting,
        rows=fl.rows,
        feature=fl.feature,
        reference=fl.reference,
        test_time=fl.test_time,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
