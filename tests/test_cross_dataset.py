"""Cross-dataset evaluation: a model trained on one dataset, evaluated with
another dataset's protocol (`eval_on=`, an evaluator entry with `data`).

The plumbing is under test here (the protocols' maths is tested against
independent implementations in test_evaluators.py and test_llcm.py): the
recipes add one entry per other dataset, the config checks refuse what
cannot work, the run prepares and opens the other datasets beside its own,
the query counts of the results are those of the other dataset's files on
disk, the results files name both datasets, and the run's own results do
not change.
"""

import glob
import json
import os

import ml_collections
import pytest

from mclnet_jax import config_checks, evaluate, train
from mclnet_jax.configs import common, llcm, regdb, synthetic, sysu
from mclnet_jax.evaluators import registry

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_recipes_add_one_entry_per_other_dataset():
    config = sysu.get_config("eval_on=regdb+llcm")
    assert sorted(config.evals) == [
        "figures",
        "test",
        "test_llcm",
        "test_regdb",
    ]
    assert config.evals.test_regdb.type == "regdb"
    assert config.evals.test_regdb.data.dataset == "regdb"
    assert config.evals.test_regdb.data.builder_config == "trial_1"
    assert config.evals.test_llcm.num_trials == 10
    assert config_checks.problems(config) == []
    # The folders of the other datasets, from the command line.
    config.evals.test_llcm.data.manual_dir = "/data/LLCM"
    assert config.evals.test_llcm.data.manual_dir == "/data/LLCM"
    for recipe, own in ((regdb, "regdb"), (llcm, "llcm")):
        other = {"regdb": "sysu", "llcm": "regdb"}[own]
        config = recipe.get_config(f"eval_on={other}")
        assert f"test_{other}" in config.evals
        assert config_checks.problems(config) == []
    tiny = synthetic.get_config("tiny=1,dataset=llcm,eval_on=sysu+regdb")
    # The synthetic recipe generates the other layouts at its own size.
    generator = tiny.evals.test_sysu.data.synthetic.generator
    assert (generator.height, generator.width) == tuple(tiny.data.image_size)
    assert tiny.evals.test_sysu.num_trials == tiny.evals.test.num_trials == 2
    assert config_checks.problems(tiny) == []
    # No entry without eval_on: the recipes are unchanged.
    assert "test_regdb" not in synthetic.get_config("tiny=1").evals


@pytest.mark.parametrize("bad", ["sysu", "market", "regdb+sysu"])
def test_eval_on_names_other_datasets_only(bad):
    with pytest.raises(ValueError, match="choose from \\['llcm', 'regdb'\\]"):
        sysu.get_config(f"eval_on={bad}")
    with pytest.raises(ValueError, match="eval_on"):
        common.add_cross_dataset_evals(
            ml_collections.ConfigDict({"evals": {}}), bad, own="sysu"
        )


def test_config_checks_of_an_entrys_data():
    config = synthetic.get_config("tiny=1,eval_on=regdb")
    config.evals.test_regdb.data.dataset = "llcm"
    config.evals.test.data = {"dataset": "sysu_mm01", "folder": "x"}
    problems = config_checks.problems(config)
    assert any(
        "test_regdb.data.dataset must be 'regdb'" in p for p in problems
    ), problems
    assert any("test.data: unknown fields ['folder']" in p for p in problems)
    # A protocol of another dataset than the run's needs its `data`.
    config = synthetic.get_config("tiny=1")
    config.evals.other = dict(
        config.evals.test.to_dict(), type="regdb", modes=None
    )
    del config.evals.other["modes"], config.evals.other["num_trials"]
    del config.evals.other["num_shots"]
    (problem,) = config_checks.problems(config)
    assert "config.evals.other (regdb) evaluates 'regdb' data" in problem
    assert "config.evals.other.data" in problem
    # A figures entry takes no `data`.
    config = synthetic.get_config("tiny=1")
    config.evals.figures.data = {"dataset": "sysu_mm01"}
    (problem,) = config_checks.problems(config)
    assert "unknown ['data']" in problem


def test_an_entrys_data_replaces_the_dataset_fields_only():
    run = synthetic.get_config("tiny=1,eval_on=regdb")
    entry = run.evals.test_regdb
    data = registry.entry_data(entry, run.data)
    assert data.dataset == "regdb" and data.builder_config == "trial_1"
    # The run's folders are not the other dataset's; its pipeline is.
    run.data.manual_dir = "/data/SYSU-MM01"
    data = registry.entry_data(entry, run.data)
    assert data.manual_dir is None and data.data_dir is None
    assert tuple(data.image_size) == tuple(run.data.image_size)
    assert data.eval_batch_size == run.data.eval_batch_size
    assert registry.entry_data(run.evals.test, run.data) is run.data
    assert registry.source_key(run.evals.test) == "test"
    assert registry.source_key(entry) == "regdb:trial_1:test"
    assert registry.splits(run.evals) == ["test", "regdb:trial_1:test"]
    assert registry.dataset_name(data) == "regdb/trial_1"


def _lines(path):
    with open(path) as f:
        return [line for line in f.read().splitlines() if line.strip()]


def test_trained_on_sysu_evaluated_on_regdb_and_llcm(tmp_path):
    config = synthetic.get_config("tiny=1")
    config.max_steps = 4
    config.optimizer.lr = config.mcm_optimizer.lr = 0.01
    config.evals.figures.at_end = False
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "results.json")) as f:
        own = json.load(f)
    assert own["dataset"] == own["trained_on"] == "sysu_mm01/original"

    # The same recipe with the other datasets' test evaluators.
    evaluate.evaluate(
        synthetic.get_config("tiny=1,eval_on=regdb+llcm"), workdir
    )
    with open(os.path.join(workdir, "results_latest.json")) as f:
        latest = json.load(f)
    # The run's own protocol on the same checkpoint: the same numbers.
    assert latest["summary"] == own["summary"]
    assert latest["step"] == own["step"] == 4

    # RegDB: trial 1's test images of each modality, from its index files.
    root = os.path.join(workdir, "synthetic_regdb")
    visible = _lines(os.path.join(root, "idx", "test_visible_1.txt"))
    thermal = _lines(os.path.join(root, "idx", "test_thermal_1.txt"))
    with open(os.path.join(workdir, "results_test_regdb_latest.json")) as f:
        out = json.load(f)
    assert out["dataset"] == "regdb/trial_1"
    assert out["trained_on"] == "sysu_mm01/original"
    assert out["step"] == 4
    for direction, queries in (
        ("visible_to_infrared", visible),
        ("infrared_to_visible", thermal),
    ):
        trial = out["results"][f"regdb_{direction}"]["bn"]["trials"]["1"]
        assert trial["num_queries"] == len(queries)
    with open(os.path.join(workdir, "results_test_regdb_latest.txt")) as f:
        assert f.readline().strip() == (
            "step 4, regdb/trial_1 (trained on sysu_mm01/original)"
        )

    # LLCM: every test image of the query modality, from the folders.
    root = os.path.join(workdir, "synthetic_llcm")
    (ids,) = _lines(os.path.join(root, "idx", "test_id.txt"))
    ids = [f"{int(i):04d}" for i in ids.split(",")]

    def count(folder):
        return sum(
            len(glob.glob(os.path.join(root, folder, "cam*", i, "*")))
            for i in ids
        )

    with open(os.path.join(workdir, "results_test_llcm_latest.json")) as f:
        out = json.load(f)
    assert out["dataset"] == "llcm/original"
    for direction, folder in (
        ("infrared_to_visible", "test_nir"),
        ("visible_to_infrared", "test_vis"),
    ):
        trials = out["results"][f"llcm_{direction}"]["bn"]["trials"]
        assert sorted(trials) == ["0", "1"]
        assert {t["num_queries"] for t in trials.values()} == {count(folder)}
