"""The other modes on a trained workdir: `--mode=evaluate` runs the at-end
evaluators of `config.evals` on a checkpoint (or on a checkpoint of the
authors' release), `--mode=analyze` draws the figures evaluators. Both set
up the run exactly as training does (`train.setup`) and restore read-only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import ml_collections

from mclnet_jax import checkpointing, errors, train
from mclnet_jax.evaluators import figures as figures_lib


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    which: str = checkpointing.LATEST,
) -> dict[str, Any]:
    """`--mode=evaluate`: the at-end evaluators on a workdir's checkpoint.

    Writes `results_<which>.json` / `.txt` (and `results_<name>_<which>` for
    the other protocol evaluators). With `config.init.release_checkpoint`
    set, evaluates that checkpoint of the authors' release instead (`which`
    must stay "latest") into `results_release.*` (step 0).
    """
    checkpointing.check_which(which)
    release_path = config.init.release_checkpoint
    if release_path and which != checkpointing.LATEST:
        raise errors.ConfigurationError(
            "--checkpoint=best does not apply to "
            "config.init.release_checkpoint; drop one of them."
        )
    run = train.setup(config, workdir)
    if release_path:
        run.checkpointer.close()  # Nothing of the workdir is read.
        state = checkpointing.release_state(
            release_path,
            run.abstract_state,
            model_config=config.model,
            feature_dim=run.model.feature_dim,
            num_classes=run.num_classes,
        )
        state = jax.device_put(state, run.state_sharding)
        return train.final_evaluations(
            run, state, workdir, suffix="_release", figures=False
        )
    with contextlib.closing(run.checkpointer):  # Read only.
        state = train.restore(run, which=which, init=False)
    return train.final_evaluations(
        run, state, workdir, suffix=f"_{which}", figures=False
    )


def analyze(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    which: str = checkpointing.LATEST,
) -> dict[str, str]:
    """`--mode=analyze`: the figures evaluators on a workdir's checkpoint.

    Returns:
      {figure name: PNG path} of every figures evaluator.
    """
    checkpointing.check_which(which)
    if not any(e.type == "figures" for e in config.evals.values()):
        raise errors.ConfigurationError(
            "--mode=analyze draws the figures evaluators of config.evals, "
            "and this config has none; use a recipe's config (e.g. "
            "--config=synthetic), which has config.evals.figures."
        )
    run = train.setup(config, workdir, label=which)
    with contextlib.closing(run.checkpointer):  # Read only.
        state = train.restore(run, which=which, init=False)
    paths = {}
    for evaluator in run.evaluators.values():
        if isinstance(evaluator, figures_lib.FiguresEvaluator):
            dict(evaluator.run(state))
            paths.update(evaluator.paths)
    return paths
