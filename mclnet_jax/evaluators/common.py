"""What every evaluator shares: the protocol base class and the scheduled,
named evaluator of `config.evals`.

A `Protocol` (one class per dataset: `sysu.Sysu`, `regdb.Regdb`) turns the
features of a split into `EvaluationResults`; pure numpy, usable on any
features. A `ProtocolEvaluator` is one entry of `config.evals` (big_vision's
evaluators): a name, a protocol, which features it reads from the run's
`features.FeatureStore` (the model's or raw pixels), and when it runs
(`every_steps`, `at_end`). `run(state)` yields (name, value) pairs for the
writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from mclnet_jax import metrics as metrics_lib
from mclnet_jax import rerank as rerank_lib
from mclnet_jax.evaluators import features as features_lib
from mclnet_jax.evaluators import protocols
from mclnet_jax.evaluators import results as results_lib


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
    entry: ml_collections.ConfigDict,
) -> rerank_lib.RerankParams | None:
    """An evaluator entry's rerank{,_k1,_k2,_lambda} -> RerankParams, or None
    when `rerank` is off."""
    if not entry.rerank:
        return None
    return rerank_lib.RerankParams(
        k1=entry.rerank_k1, k2=entry.rerank_k2, lambda_value=entry.rerank_lambda
    )


def scalars(prefix: str, tree: Mapping[str, Any]) -> dict[str, float]:
    """{"a": {"b": 1.0}} -> {"<prefix>/a/b": 1.0}, numbers only."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {
        f"{prefix}/{k}": float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
    }


class Protocol:
    """A re-id protocol on one split's features (one subclass per dataset).

    Args:
        metadata: the split's `records.SplitMetadata`.
        max_rank: CMC length.
        normalize: L2-normalise the features first (the protocols do).
        rerank: also evaluate k-reciprocal re-ranked distances with these
            parameters (protocols + `results.RERANK_SUFFIX`).
    """

    title = ""  # The dataset, for the log.

    def __init__(
        self,
        metadata,
        *,
        max_rank: int = 20,
        normalize: bool = True,
        rerank: rerank_lib.RerankParams | None = None,
    ):
        if rerank is not None and not isinstance(
            rerank, rerank_lib.RerankParams
        ):
            raise ValueError(
                f"rerank must be None or a rerank.RerankParams, got {rerank!r}"
                " (e.g. rerank=rerank.RerankParams(k1=20, k2=6, "
                "lambda_value=0.3))."
            )
        self.metadata = metadata
        self.max_rank = max_rank
        self.normalize = normalize
        self.rerank = rerank

    def evaluate(
        self, features: Mapping[str, np.ndarray]
    ) -> results_lib.EvaluationResults:
        """The protocol on {name: [N, D]} features, row i = split example i."""
        raise NotImplementedError

    def rank_list_views(self) -> list[protocols.RankListView]:
        """The query / gallery pairs that rank-list figures show."""
        raise NotImplementedError


class Evaluator:
    """An entry of `config.evals`: a name, and when it runs.

    Args:
        name: the entry's name (the prefix of what `run` yields).
        every_steps: run every this many training steps (0: never).
        at_end: run on the final state.
    """

    def __init__(self, name: str, *, every_steps: int = 0, at_end: bool = True):
        self.name = name
        self.every_steps = every_steps
        self.at_end = at_end

    def due(self, step: int, *, final: bool) -> bool:
        """Whether this evaluator runs after `step` (`final`: the last)."""
        if final:
            return self.at_end
        return bool(self.every_steps) and step % self.every_steps == 0

    def run(self, state) -> Iterator[tuple[str, float]]:
        """Evaluates `state`; yields (name, value) pairs for the writer."""
        raise NotImplementedError


class ProtocolEvaluator(Evaluator):
    """One named protocol evaluation of a run (an entry of `config.evals`).

    Args:
        name: the entry's name; its scalars are "<name>/<protocol>/...".
        protocol: the protocol on the split's metadata.
        store: the run's feature store (features extracted once per
            checkpoint and split, shared by every evaluator).
        split: the evaluated split.
        features: "model" (the evaluated network's) or "pixels" (the
            normalised pixels: a no-learning floor).
        every_steps: run every this many training steps (0: never).
        at_end: run on the final state.
    """

    def __init__(
        self,
        name: str,
        protocol: Protocol,
        *,
        store: features_lib.FeatureStore,
        split: str,
        features: str = "model",
        every_steps: int = 0,
        at_end: bool = True,
    ):
        if features not in features_lib.KINDS:
            raise ValueError(
                f"features must be one of {features_lib.KINDS}, got "
                f"{features!r}."
            )
        super().__init__(name, every_steps=every_steps, at_end=at_end)
        self.protocol = protocol
        self.store = store
        self.split = split
        self.kind = features
        self._results: tuple[Any, results_lib.EvaluationResults] | None = None

    def features(self, state) -> dict[str, np.ndarray]:
        """The split's features of `state` (extracted once, then shared)."""
        return self.store.features(self.split, self.kind, state)

    def results(self, state) -> results_lib.EvaluationResults:
        """The protocol's results for `state`, computed once per state."""
        key = self.store.key(self.kind, state)
        if self._results is None or self._results[0] != key:
            results = self.protocol.evaluate(self.features(state))
            logging.info(
                "%s %s (%s features):\n%s",
                self.protocol.title,
                self.name,
                self.kind,
                results.table(),
            )
            self._results = (key, results)
        return self._results[1]

    def run(self, state) -> Iterator[tuple[str, float]]:
        """(name, value) pairs of the results' summary for the writer."""
        yield from scalars(self.name, self.results(state).summary()).items()
