"""Evaluators built from config, as big_vision's `evaluators/common.py`.

`from_config(config, predict_fn, source)` returns the evaluator of
`config.eval.protocol` ("sysu" -> `evaluators/sysu.py`, "regdb" ->
`evaluators/regdb.py`) over one test split. Every evaluator extracts the
split's features once with the predict function and the variables given to
`run`, then evaluates every trial of its protocol on them (README
"Evaluation protocols").
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from mclnet_jax import metrics as metrics_lib
from mclnet_jax import rerank as rerank_lib
from mclnet_jax import train_step
from mclnet_jax.evaluators import features as features_lib
from mclnet_jax.evaluators import protocols
from mclnet_jax.evaluators import results as results_lib

PROTOCOLS = ("sysu", "regdb")


def check_features(features: Mapping[str, np.ndarray], num: int) -> None:
    """Checks {name: [N, D]} features with one row per split example."""
    if not features:
        raise ValueError(
            "features is empty: pass e.g. {'pool': [N, D], 'bn': [N, D]}."
        )
    for name, value in features.items():
        shape = np.shape(value)
        if len(shape) != 2 or shape[0] != num:
            raise ValueError(
                f"features[{name!r}] must be [N={num}, D] (one row per "
                f"example of the split), got shape {shape}."
            )


class NonFiniteFeaturesError(train_step.NonFiniteLossError):
    """Features of a split are NaN or infinite (the run's exit code 3)."""


def check_finite_features(
    features: Mapping[str, np.ndarray], *, model: str
) -> None:
    """Raises `NonFiniteFeaturesError` if some feature row is not finite.

    Args:
        features: {name: [N, D]} of a split.
        model: what was evaluated, for the message (e.g. "the checkpoint of
            step 4 in WORKDIR/checkpoints").
    """
    bad = {}
    for name, value in features.items():
        rows = ~np.isfinite(np.asarray(value)).all(axis=1)
        if rows.any():
            bad[name] = f"{int(rows.sum())} of {rows.size} images"
    if bad:
        details = ", ".join(f"{k!r}: {v}" for k, v in sorted(bad.items()))
        raise NonFiniteFeaturesError(
            f"Non-finite features (NaN or inf) from {model} ({details}); "
            "nothing was evaluated. If its BatchNorm statistics lag its "
            "weights (a few steps from scratch at a large learning rate), "
            "recompute them for evaluation with "
            "--config.eval.precise_bn_batches=8. If the model diverged, "
            "delete that checkpoint (and later ones) and train again with "
            "a lower config.optimizer.lr or a warm-up "
            "(config.optimizer.schedule.warmup_epochs)."
        )


def check_rerank(rerank) -> None:
    if rerank is not None and not isinstance(rerank, rerank_lib.RerankParams):
        raise ValueError(
            f"rerank must be None or a rerank.RerankParams, got {rerank!r} "
            "(e.g. rerank=rerank.RerankParams(k1=20, k2=6, "
            "lambda_value=0.3))."
        )


def rerank_features(value, normalize: bool) -> np.ndarray:
    """The features whose Euclidean distances are re-ranked.

    Re-ranking is given Euclidean distances of the (normalised) features,
    sqrt(2 - 2 cos), which it squares to 2 - 2 cos: the squared Euclidean
    distance that feature-based re-ranking code (reid-strong-baseline, AGW)
    computes from normalised features.
    """
    value = np.asarray(value)
    return metrics_lib.l2_normalize(value) if normalize else value


def rerank_params(
    eval_config: ml_collections.ConfigDict,
) -> rerank_lib.RerankParams | None:
    """config.eval.rerank{,_k1,_k2,_lambda} -> RerankParams, None when off."""
    if not eval_config.get("rerank"):
        return None
    defaults = rerank_lib.RerankParams()
    try:
        return rerank_lib.RerankParams(
            k1=eval_config.get("rerank_k1", defaults.k1),
            k2=eval_config.get("rerank_k2", defaults.k2),
            lambda_value=eval_config.get(
                "rerank_lambda", defaults.lambda_value
            ),
        )
    except ValueError as e:
        raise ValueError(f"config.eval.rerank_*: {e}") from None


class Evaluator:
    """Extracts a split's features once, then evaluates a protocol on them.

    Subclasses (one per protocol) define `evaluate(features)` and
    `rank_list_views()`.

    Args:
        predict_fn: `predict_fn(variables, images, modality) -> {name:
            [B, D]}` (`features.make_predict_fn(model)`,
            `features.raw_pixels`).
        split: the test split (`features.open_split`).
        feature_names: outputs of predict_fn to evaluate.
        max_rank: CMC length.
        normalize: L2-normalise the features first (the protocols do).
        rerank: also evaluate k-reciprocal re-ranked distances with these
            parameters (protocols + `results.RERANK_SUFFIX`).
    """

    title = ""  # The dataset, for the log.

    def __init__(
        self,
        predict_fn: features_lib.PredictFn,
        split: features_lib.EvalSplit,
        *,
        feature_names: Sequence[str] = features_lib.FEATURE_NAMES,
        max_rank: int = 20,
        normalize: bool = True,
        rerank: rerank_lib.RerankParams | None = None,
    ):
        check_rerank(rerank)
        self.predict_fn = predict_fn
        self.split = split
        self.feature_names = tuple(feature_names)
        self.max_rank = max_rank
        self.normalize = normalize
        self.rerank = rerank

    @property
    def metadata(self):
        """The split's `records.SplitMetadata`."""
        return self.split.metadata

    def extract(self, variables: Any) -> dict[str, np.ndarray]:
        """{name: [N, D]} features of every image of the split, row i = i."""

        def embed_fn(images, modality):
            return self.predict_fn(variables, images, modality)

        return features_lib.extract_features(
            embed_fn,
            batches_fn=self.split.batches_fn,
            modality=self.metadata.modality,
            feature_names=self.feature_names,
        )

    def evaluate(
        self, features: Mapping[str, np.ndarray]
    ) -> results_lib.EvaluationResults:
        """The protocol on features already extracted (rows = the split)."""
        raise NotImplementedError

    def rank_list_views(self) -> list[protocols.RankListView]:
        """The query / gallery pairs that rank-list figures show."""
        raise NotImplementedError

    def run(
        self, variables: Any, *, model: str = "the evaluated variables"
    ) -> results_lib.EvaluationResults:
        """Extracts the features with `variables`, evaluates, logs the table.

        Args:
            variables: the predict function's first argument, e.g.
                `state.model_variables()` ({"params", "batch_stats"}).
            model: what `variables` are, named by the error if the features
                are not finite (e.g. the checkpoint's directory).

        Raises:
            NonFiniteFeaturesError: some feature is NaN or infinite.
        """
        features = self.extract(variables)
        check_finite_features(features, model=model)
        results = self.evaluate(features)
        logging.info("%s evaluation:\n%s", self.title, results.table())
        return results


def protocol_module(protocol: str):
    """The module of a protocol name ("sysu", "regdb")."""
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"config.eval.protocol must be one of {PROTOCOLS}, got "
            f"{protocol!r}."
        )
    return importlib.import_module(f"mclnet_jax.evaluators.{protocol}")


def from_config(
    config: ml_collections.ConfigDict,
    predict_fn: features_lib.PredictFn,
    source,
    *,
    feature_names: Sequence[str] = features_lib.FEATURE_NAMES,
) -> Evaluator:
    """The evaluator of `config.eval.protocol` on one split.

    Args:
        config: the run's config: `config.eval` (protocol, trials, modes,
            re-ranking), `config.data` (eval_batch_size, image_size; RegDB:
            the trial in builder_config "trial_<t>").
        predict_fn: see `Evaluator`.
        source: the split's serialized records (`records.open_source`).
        feature_names: outputs of predict_fn to evaluate.
    """
    module = protocol_module(config.eval.protocol)
    kwargs = module.config_kwargs(config)
    split = features_lib.open_split(
        source,
        batch_size=config.data.eval_batch_size,
        image_size=tuple(config.data.image_size),
    )
    return module.Evaluator(
        predict_fn,
        split,
        feature_names=feature_names,
        rerank=rerank_params(config.eval),
        **kwargs,
    )
