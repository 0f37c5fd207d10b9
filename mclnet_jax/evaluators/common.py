"""What every evaluator shares: the protocol base class and the scheduled,
named evaluator of `config.evals`.

A `Protocol` (one class per dataset: `sysu.Sysu`, `regdb.Regdb`) turns the
features of a split into `EvaluationResults`; pure numpy, usable on any
features. `Protocol.distance_variants` gives a protocol every distance
matrix of one query / gallery pair: the plain one, and the re-ranked and
query-expanded ones when asked for (`Distances` computes each matrix a
protocol reuses once). A `ProtocolEvaluator` is one entry of
`config.evals` (big_vision's evaluators): a name, a protocol, which
features it reads from the run's `features.FeatureStore` (the model's or
raw pixels), and when it runs (`every_steps`, `at_end`). `run(state)`
yields (name, value) pairs for the writer.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from mclnet_jax import metrics as metrics_lib
from mclnet_jax import query_expansion
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


def aqe_params(
    eval_config: ml_collections.ConfigDict,
) -> query_expansion.AqeParams | None:
    """`config.eval`'s aqe{,_k,_alpha} -> AqeParams, or None when `aqe` is
    off."""
    if not eval_config.aqe:
        return None
    return query_expansion.AqeParams(
        k=eval_config.aqe_k, alpha=eval_config.aqe_alpha
    )


class Distances:
    """One feature's distance matrices between sets of split rows.

    The last few matrices of each kind are kept, and a matrix asked for
    with query and gallery swapped is the kept one transposed: SYSU's
    query-query distances serve every trial, RegDB's matrices both
    directions, each computed once (and the transposed values are the
    same numbers).

    Args:
        value: [N, D] the split's features (row i = example i).
        normalize: L2-normalise the rows first (the protocols do).
    """

    _KEEP = 3  # Per kind: a pair's query-gallery, query-query, gallery-gallery.

    def __init__(self, value, *, normalize: bool):
        self.value = np.asarray(value)
        self.normalize = normalize
        self._rerank_features: np.ndarray | None = None
        self._kept: dict[str, collections.OrderedDict] = {}

    def _cached(self, kind: str, a: np.ndarray, b: np.ndarray | None, fn):
        kept = self._kept.setdefault(kind, collections.OrderedDict())
        key_a = np.asarray(a, np.int64).tobytes()
        key_b = None if b is None else np.asarray(b, np.int64).tobytes()
        if (key_a, key_b) in kept:
            kept.move_to_end((key_a, key_b))
            return kept[key_a, key_b]
        if key_b is not None and (key_b, key_a) in kept:
            kept.move_to_end((key_b, key_a))
            return kept[key_b, key_a].T
        out = fn()
        kept[key_a, key_b] = out
        while len(kept) > self._KEEP:
            kept.popitem(last=False)
        return out

    def plain(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """[Q, G] negative inner products (the protocols' distance)."""
        return self._cached(
            "plain",
            query,
            gallery,
            lambda: metrics_lib.negative_inner_product(
                self.value[query], self.value[gallery], normalize=self.normalize
            ),
        )

    def euclidean(
        self, a: np.ndarray, b: np.ndarray | None = None
    ) -> np.ndarray:
        """[A, B] Euclidean distances that re-ranking is given (of the
        `rerank_features`); `b` omitted: within `a`."""
        if self._rerank_features is None:
            self._rerank_features = rerank_features(self.value, self.normalize)
        f = self._rerank_features
        return self._cached(
            "euclidean",
            a,
            b,
            lambda: rerank_lib.euclidean_distance(
                f[a], None if b is None else f[b]
            ),
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
        aqe: also evaluate distances after average query expansion with
            these parameters (protocols + `results.AQE_SUFFIX`).
    """

    title = ""  # The dataset, for the log.

    def __init__(
        self,
        metadata,
        *,
        max_rank: int = 20,
        normalize: bool = True,
        rerank: rerank_lib.RerankParams | None = None,
        aqe: query_expansion.AqeParams | None = None,
    ):
        if rerank is not None and not isinstance(
            rerank, rerank_lib.RerankParams
        ):
            raise ValueError(
                f"rerank must be None or a rerank.RerankParams, got {rerank!r}"
                " (e.g. rerank=rerank.RerankParams(k1=20, k2=6, "
                "lambda_value=0.3))."
            )
        if aqe is not None and not isinstance(aqe, query_expansion.AqeParams):
            raise ValueError(
                f"aqe must be None or a query_expansion.AqeParams, got {aqe!r}"
                " (e.g. aqe=query_expansion.AqeParams(k=5, alpha=3.0))."
            )
        self.metadata = metadata
        self.max_rank = max_rank
        self.normalize = normalize
        self.rerank = rerank
        self.aqe = aqe

    def evaluate(
        self, features: Mapping[str, np.ndarray]
    ) -> results_lib.EvaluationResults:
        """The protocol on {name: [N, D]} features, row i = split example i."""
        raise NotImplementedError

    def rank_list_views(self) -> list[protocols.RankListView]:
        """The query / gallery pairs that rank-list figures show."""
        raise NotImplementedError

    def distance_variants(
        self,
        distances: Distances,
        query: np.ndarray,
        gallery: np.ndarray,
        *,
        plain: np.ndarray | None = None,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """(protocol suffix, [Q, G] distances) of one query / gallery pair.

        "" with the plain distances (`plain` if the caller has them, e.g. as
        columns of a larger matrix); `results.RERANK_SUFFIX` with
        k-reciprocal re-ranking when `self.rerank`;
        `results.AQE_SUFFIX` after average query expansion of the query and
        gallery rows together when `self.aqe`. A protocol names its results
        "<protocol><suffix>".

        Args:
            distances: the feature's `Distances` (one per feature and
                evaluation: it keeps what the next pair reuses).
            query: [Q] int split positions of the queries.
            gallery: [G] int split positions of the gallery.
            plain: [Q, G] the plain distances, if already computed.
        """
        yield "", distances.plain(query, gallery) if plain is None else plain
        if self.rerank is not None:
            yield (
                results_lib.RERANK_SUFFIX,
                rerank_lib.k_reciprocal_distance(
                    distances.euclidean(query, gallery),
                    distances.euclidean(query),
                    distances.euclidean(gallery),
                    **self.rerank.to_dict(),
                ),
            )
        if self.aqe is not None:
            both = np.concatenate([query, gallery])
            expanded = query_expansion.average_query_expansion(
                distances.value[both], **self.aqe.to_dict()
            )
            yield (
                results_lib.AQE_SUFFIX,
                metrics_lib.negative_inner_product(
                    expanded[: len(query)],
                    expanded[len(query) :],
                    normalize=self.normalize,
                ),
            )


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
        split: the evaluated split (`registry.source_key`).
        features: "model" (the evaluated network's) or "pixels" (the
            normalised pixels: a no-learning floor).
        dataset: the evaluated dataset, which the results files name
            (`registry.dataset_name`).
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
        dataset: str = "",
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
        self.dataset = dataset
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
