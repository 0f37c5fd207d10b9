"""A short run evaluates; non-finite features stop with a clear error.

* `batch_stats.recompute` gives each BatchNorm the average of its batch
  statistics under the evaluated weights (checked on the BNNeck against
  numpy statistics of the train-mode pooled features).
* The tiny demo stopped after 4 steps evaluates to finite metrics (before
  the recomputation its running statistics lagged the weights and the
  features overflowed float32: "distmat contains NaN or infinite values").
* Non-finite features raise `NonFiniteLossError` (exit 3) naming the model
  evaluated, before any metric is computed; from the command line, the
  4-step checkpoint evaluated with its running statistics.
"""

import json
import os

import cli_runs
import jax
import numpy as np
import pytest

from data_pipeline.constants import INFRARED, VISIBLE
from mclnet_jax import errors, train_step
from mclnet_jax.evaluators import batch_stats, common, features, sysu
from mclnet_jax.models import mclnet

pytestmark = pytest.mark.usefixtures("fast_compile")


def _tiny_model():
    return mclnet.MCLNet(
        num_classes=3,
        depth=18,
        width_multiplier=1 / 16,
        non_local_counts=(0, 1, 1, 0),
        kernels="xla",
    )


def test_recompute_averages_batch_statistics_of_the_evaluated_weights():
    model = _tiny_model()
    rng = np.random.default_rng(0)
    batches = [
        {
            "visible": rng.normal(size=(3, 32, 16, 3)).astype(np.float32),
            "infrared": rng.normal(2.0, 3.0, (3, 32, 16, 3)).astype(np.float32),
        }
        for _ in range(2)
    ]
    variables = model.init(
        jax.random.key(0),
        batches[0]["visible"],
        batches[0]["infrared"],
        train=False,
    )
    out = batch_stats.recompute(model, variables, batches)

    # Independent: the BNNeck normalises the pooled features, which in train
    # mode do not depend on any running statistic.
    means, variances = [], []
    for b in batches:
        pool, _ = model.apply(
            variables,
            b["visible"],
            b["infrared"],
            train=True,
            mutable=["batch_stats"],
        )
        pool = np.asarray(pool["pool"], np.float64)
        means.append(pool.mean(0))
        variances.append(pool.var(0, ddof=1))
    got = jax.device_get(out["batch_stats"]["bnneck"])
    np.testing.assert_allclose(got["mean"], np.mean(means, 0), rtol=1e-4)
    np.testing.assert_allclose(got["var"], np.mean(variances, 0), rtol=1e-4)
    # Every statistic is replaced (the stem's is not left at its start of
    # 1), keeps its dtype, and the parameters are the evaluated ones.
    for new, old in zip(
        jax.tree.leaves(out["batch_stats"]),
        jax.tree.leaves(variables["batch_stats"]),
        strict=True,
    ):
        assert new.shape == old.shape and new.dtype == old.dtype
    stem_var = np.asarray(out["batch_stats"]["visible_stem"]["bn1"]["var"])
    assert not np.allclose(stem_var, 1.0)
    assert out["params"] is variables["params"]
    with pytest.raises(ValueError, match="precise_bn_batches"):
        batch_stats.recompute(model, variables, [])


def test_non_finite_features_raise_naming_the_model(sysu_builder):
    from data_pipeline import records

    source = records.open_source(sysu_builder("original"), "test")
    split = features.open_split(source, batch_size=8, image_size=(32, 16))

    def predict_fn(variables, images, modality):
        del variables
        value = np.ones((len(images), 4), np.float32)
        if modality == INFRARED:
            value[0] = np.inf
        else:
            assert modality == VISIBLE
        return {"pool": value, "bn": value}

    class State:  # What the store reads of a training state.
        step = 4

    store = features.FeatureStore(
        {"test": split},
        predict_fn=predict_fn,
        variables_fn=lambda state: None,
        describe=lambda state: (
            f"the checkpoint of step {state.step} in W/checkpoints"
        ),
    )
    evaluator = common.ProtocolEvaluator(
        "test",
        sysu.Sysu(split.metadata, trials=(0,)),
        store=store,
        split="test",
    )
    with pytest.raises(train_step.NonFiniteLossError) as info:
        dict(evaluator.run(State()))
    message = str(info.value)
    assert isinstance(info.value, errors.NonFiniteFeaturesError)
    assert "the checkpoint of step 4 in W/checkpoints" in message
    assert "'bn': 1 of" in message and "'pool': 1 of" in message
    assert "precise_bn_batches" in message


def test_four_step_run_evaluates(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    code = cli_runs.run_main(
        workdir,
        "--config.max_steps=4",
        "--config.evals.figures.at_end=False",
    )
    assert code == 0
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["step"] == 4
    flat = json.dumps(results)
    assert "NaN" not in flat and "Infinity" not in flat
    assert sorted(results["results"]) == [
        "sysu_all_single_shot",
        "sysu_indoor_single_shot",
    ]
    for protocol in results["summary"].values():
        for feature in ("pool", "bn"):
            mean = protocol[feature]["mean"]
            assert 0.0 < mean["mAP"] <= 1.0
    # With the running statistics (the release's way) the same checkpoint's
    # features overflow: exit 3, naming the checkpoint and the remedy, and
    # no results file.
    capsys.readouterr()
    code = cli_runs.run_main(
        workdir,
        "--mode=evaluate",
        "--config.eval.precise_bn_batches=0",
    )
    err = capsys.readouterr().err
    assert code == 3, err[-2000:]
    assert "Non-finite features" in err
    assert os.path.join(workdir, "checkpoints") in err
    assert "step 4" in err and "precise_bn_batches" in err
    assert not os.path.exists(os.path.join(workdir, "results_latest.json"))


def test_validation_rounds_keep_the_best_checkpoint_by_val_only(
    tmp_path, monkeypatch
):
    """The loop's periodic evaluations: a val and a test evaluator every 4
    steps, the best checkpoint chosen by the val evaluator alone (the
    periodic test results never reach the checkpointer), and --mode=evaluate
    --checkpoint=best reads that step."""
    from mclnet_jax import checkpointing, evaluate, train
    from mclnet_jax.configs import synthetic

    config = synthetic.get_config("tiny=1")
    config.max_steps = 8
    config.evals.figures.at_end = False
    config.evals.test.every_steps = 4
    config.evals.val = dict(config.evals.test.to_dict(), split="val")
    config.evals.val.at_end = False
    config.checkpoint.best_metric = "val/sysu_all_single_shot/bn/mean/mAP"
    seen = []
    save_best = checkpointing.Checkpointer.save_best

    def recording(self, step, state, results):
        seen.append((step, results))
        return save_best(self, step, state, results)

    monkeypatch.setattr(checkpointing.Checkpointer, "save_best", recording)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)

    assert [step for step, _ in seen] == [4, 8]
    assert all(list(results) == ["val"] for _, results in seen)
    values = {
        step: results["val"]["sysu_all_single_shot"]["bn"]["mean"]["mAP"]
        for step, results in seen
    }
    # The first round always saves; a later one only when strictly better.
    best_step = 8 if values[8] > values[4] else 4
    with open(os.path.join(workdir, "checkpoints_best", "best.json")) as f:
        best = json.load(f)
    assert best == {
        "step": best_step,
        "metric": config.checkpoint.best_metric,
        "value": values[best_step],
    }
    out = evaluate.evaluate(config, workdir, which="best")
    assert out["step"] == best_step
    assert os.path.exists(os.path.join(workdir, "results_best.json"))
