"""The RegDB evaluator: both directions of one trial's test split.

Visible->infrared: every visible image queries every thermal image;
infrared->visible the other way round (`protocols.regdb_indices`). Metrics:
`metrics.standard_metrics` with the query / gallery cameras (1 / 2), so
nothing is removed. Each trial (TFDS config "trial_<t>") is its own split
and evaluator; `EvaluationResults.merge` joins them (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from data_pipeline.constants import REGDB_DIRECTIONS, REGDB_TRIALS
from mclnet_jax import metrics as metrics_lib
from mclnet_jax.evaluators import common, protocols
from mclnet_jax.evaluators import results as results_lib


def trial_of(builder_config: str | None) -> int:
    """The trial number of a RegDB builder config ("trial_<t>"; None is the
    builder's default, "trial_1")."""
    name = builder_config or "trial_1"
    trials = {f"trial_{t}": t for t in REGDB_TRIALS}
    if name not in trials:
        raise ValueError(
            "config.data.builder_config must name the RegDB trial, "
            f"'trial_1' .. 'trial_{REGDB_TRIALS[-1]}', got {name!r}."
        )
    return trials[name]


class Regdb(common.Protocol):
    """Both RegDB directions on one trial's test split.

    Args:
        metadata: that trial's test split (`records.SplitMetadata`).
        trial: the trial number (1..10), the key of the results
            (`trial_of`); `EvaluationResults.merge` joins trials.
        max_rank, normalize, rerank, aqe: see `common.Protocol`.

    `evaluate` returns protocols "regdb_visible_to_infrared" and
    "regdb_infrared_to_visible".
    """

    title = "RegDB"

    def __init__(self, metadata, *, trial: int, **kwargs):
        super().__init__(metadata, **kwargs)
        self.trial = int(trial)

    def evaluate(
        self, features: Mapping[str, np.ndarray]
    ) -> results_lib.EvaluationResults:
        metadata, trial, max_rank = self.metadata, self.trial, self.max_rank
        common.check_features(features, len(metadata.identity))
        visible, infrared = protocols.regdb_indices(
            metadata, direction="visible_to_infrared"
        )

        def metrics(dist, query, gallery):
            return {
                trial: metrics_lib.standard_metrics(
                    dist,
                    query_ids=metadata.identity[query],
                    gallery_ids=metadata.identity[gallery],
                    query_cams=metadata.camera[query],
                    gallery_cams=metadata.camera[gallery],
                    max_rank=max_rank,
                )
            }

        per_trial = {}
        for name, value in features.items():
            # One matrix of each kind serves both directions (transposed).
            distances = common.Distances(value, normalize=self.normalize)
            for direction, (q, g) in {
                "visible_to_infrared": (visible, infrared),
                "infrared_to_visible": (infrared, visible),
            }.items():
                for suffix, dist in self.distance_variants(distances, q, g):
                    per_trial.setdefault(f"regdb_{direction}{suffix}", {})[
                        name
                    ] = metrics(dist, q, g)
        return results_lib.EvaluationResults(
            per_trial, rerank=self.rerank, aqe=self.aqe
        )

    def rank_list_views(self) -> list[protocols.RankListView]:
        """Both directions."""
        views = []
        for direction in REGDB_DIRECTIONS:
            q, g = protocols.regdb_indices(self.metadata, direction=direction)
            views.append(
                protocols.RankListView(
                    name=f"rank_list_regdb_{direction}",
                    title=f"RegDB {direction.replace('_', ' ')}",
                    query=q,
                    gallery=g,
                    flavour="standard",
                )
            )
        return views
