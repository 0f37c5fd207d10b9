"""The SYSU-MM01 evaluator: infrared queries against visible galleries.

Query: every infrared image of the test split; gallery per trial and search
mode: the community's seeded single-shot draw (`protocols`), or ours with
`num_shots` > 1. Metrics: `metrics.sysu_metrics` (camera 2 removed for
camera-3 queries). Distances: negative inner products of L2-normalised
features; with re-ranking, k-reciprocal re-ranking of each trial's
Euclidean distances (docs/evaluation.md, "Re-ranking").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from data_pipeline.constants import SYSU_TRIALS
from mclnet_jax import metrics as metrics_lib
from mclnet_jax import rerank as rerank_lib
from mclnet_jax.evaluators import common, protocols
from mclnet_jax.evaluators import results as results_lib


class Sysu(common.Protocol):
    """The SYSU-MM01 protocol on its test (or validation) split.

    Args:
        metadata: the split's `records.SplitMetadata`.
        modes: any of "all", "indoor".
        trials: gallery seeds (community: 0..9).
        num_shots: 1 (single-shot, the community protocol) or e.g. 10.
        max_rank, normalize, rerank: see `common.Protocol`.

    `evaluate` returns protocols "sysu_<mode>_single_shot" (or
    "_multi_shot" for 10 shots, "_<n>_shot" otherwise).
    """

    title = "SYSU-MM01"

    def __init__(
        self,
        metadata,
        *,
        modes: Sequence[str] = ("all", "indoor"),
        trials: Sequence[int] = SYSU_TRIALS,
        num_shots: int = 1,
        **kwargs,
    ):
        super().__init__(metadata, **kwargs)
        for mode in modes:
            protocols.check_mode(mode)
        self.modes = tuple(modes)
        self.trials = tuple(trials)
        self.num_shots = protocols.check_num_shots(num_shots)

    def evaluate(
        self, features: Mapping[str, np.ndarray]
    ) -> results_lib.EvaluationResults:
        metadata, normalize, rerank = self.metadata, self.normalize, self.rerank
        common.check_features(features, len(metadata.identity))
        shots = protocols.shots_name(self.num_shots)
        query = protocols.sysu_query_indices(metadata)
        galleries = protocols.sysu_galleries(
            metadata,
            modes=self.modes,
            trials=self.trials,
            num_shots=self.num_shots,
        )
        # Distances from the queries to every image some trial uses, once per
        # feature; each trial then selects its columns.
        union = np.unique(np.concatenate(list(galleries.values())))
        columns = {
            key: np.searchsorted(union, g) for key, g in galleries.items()
        }
        query_ids, query_cams = metadata.identity[query], metadata.camera[query]

        def metrics(dist, gallery):
            return metrics_lib.sysu_metrics(
                dist,
                query_ids=query_ids,
                gallery_ids=metadata.identity[gallery],
                query_cams=query_cams,
                gallery_cams=metadata.camera[gallery],
                max_rank=self.max_rank,
            )

        per_trial = {}
        for name, value in features.items():
            dist = metrics_lib.negative_inner_product(
                np.asarray(value)[query],
                np.asarray(value)[union],
                normalize=normalize,
            )
            for (mode, t), gallery in galleries.items():
                per_trial.setdefault(f"sysu_{mode}_{shots}", {}).setdefault(
                    name, {}
                )[t] = metrics(dist[:, columns[mode, t]], gallery)
            if rerank is None:
                continue
            value = common.rerank_features(value, normalize)
            logging.info(
                "Re-ranking %d SYSU galleries (%s), %d queries.",
                len(galleries),
                name,
                query.size,
            )
            q_q = rerank_lib.euclidean_distance(value[query])
            for (mode, t), gallery in galleries.items():
                dist = rerank_lib.k_reciprocal_distance(
                    rerank_lib.euclidean_distance(value[query], value[gallery]),
                    q_q,
                    rerank_lib.euclidean_distance(value[gallery]),
                    **rerank.to_dict(),
                )
                protocol = f"sysu_{mode}_{shots}{results_lib.RERANK_SUFFIX}"
                per_trial.setdefault(protocol, {}).setdefault(name, {})[t] = (
                    metrics(dist, gallery)
                )
        reasons = {
            f"sysu_{mode}_{shots}": skip_reason(metadata, query, mode=mode)
            for mode in self.modes
        }
        return results_lib.EvaluationResults(
            per_trial,
            rerank=rerank,
            skip_reasons={p: r for p, r in reasons.items() if r},
        )

    def rank_list_views(self) -> list[protocols.RankListView]:
        """All-search, the gallery of trial 0."""
        metadata = self.metadata
        return [
            protocols.RankListView(
                name="rank_list_sysu_all",
                title=(
                    "SYSU-MM01 all-search, gallery of trial 0: infrared "
                    "query, top-10 visible"
                ),
                query=protocols.sysu_query_indices(metadata),
                gallery=protocols.sysu_gallery_indices(
                    metadata, mode="all", trial=0
                ),
                flavour="sysu",
            )
        ]


def skip_reason(metadata, query: np.ndarray, *, mode: str) -> str:
    """Why queries have no correct match in a mode's galleries ("": none).

    Trial-independent: every draw takes an image of each (identity, camera)
    folder. Two causes: the identity has no image in the mode's cameras
    (SYSU-MM01's indoor search covers a subset of its test ids), or the query
    is from camera 3 and its identity's only gallery camera is camera 2,
    which the protocol removes for camera-3 queries (same location).
    """
    cameras = protocols.check_mode(mode)
    in_gallery = np.isin(metadata.camera, cameras)
    seen = {}
    for identity, camera in zip(
        metadata.identity[in_gallery], metadata.camera[in_gallery], strict=True
    ):
        seen.setdefault(int(identity), set()).add(int(camera))
    absent = set()
    removed = 0
    for i in query:
        cams = seen.get(int(metadata.identity[i]), set())
        if not cams:
            absent.add(int(metadata.identity[i]))
        elif int(metadata.camera[i]) == 3 and cams <= {2}:
            removed += 1
    parts = []
    if absent:
        count = int(np.isin(metadata.identity[query], list(absent)).sum())
        who = "identity" if len(absent) == 1 else "identities"
        parts.append(
            f"{count} queries of {len(absent)} {who} without an image in "
            f"{'/'.join(f'cam{c}' for c in cameras)} (e.g. id {min(absent)})"
        )
    if removed:
        parts.append(
            f"{removed} camera-3 queries whose identity is in camera 2 "
            "only, which the protocol removes for camera-3 queries"
        )
    return "; ".join(parts)
