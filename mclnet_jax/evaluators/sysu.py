"""The SYSU-MM01 evaluator: infrared queries against visible galleries.

Query: every infrared image of the test split; gallery per trial and search
mode: with the evaluation kit's rand_perm_cam.mat, the kit's own draw
(`protocols.sysu_official_galleries`, any number of shots); without it the
community's seeded single-shot draw, or ours with `num_shots` > 1
(`protocols.sysu_galleries`). Metrics: `metrics.sysu_metrics` (camera 2
removed for camera-3 queries, as the kit's get_cmc_multi_cam). Distances:
negative inner products of L2-normalised features, and the variants of
`common.Protocol.distance_variants` (re-ranking, query expansion;
docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from data_pipeline.constants import SYSU_TRIALS
from mclnet_jax import metrics as metrics_lib
from mclnet_jax.evaluators import common, protocols
from mclnet_jax.evaluators import results as results_lib


class Sysu(common.Protocol):
    """The SYSU-MM01 protocol on its test (or validation) split.

    Args:
        metadata: the split's `records.SplitMetadata`.
        modes: any of "all", "indoor".
        trials: gallery seeds (community: 0..9).
        num_shots: 1 (single-shot, the community protocol) or e.g. 10.
        rand_perm: the kit's permutations (`protocols.load_sysu_rand_perm`):
            draw the galleries as the kit does; None: the community's draw
            (single-shot) or ours.
        max_rank, normalize, rerank, aqe: see `common.Protocol`.

    `evaluate` returns protocols "sysu_<mode>_single_shot" (or
    "_multi_shot" for 10 shots, "_<n>_shot" otherwise); its
    `gallery_draws` says which draw ("official", "community", "ours").
    """

    title = "SYSU-MM01"

    def __init__(
        self,
        metadata,
        *,
        modes: Sequence[str] = ("all", "indoor"),
        trials: Sequence[int] = SYSU_TRIALS,
        num_shots: int = 1,
        rand_perm: protocols.SysuRandPerm | None = None,
        **kwargs,
    ):
        super().__init__(metadata, **kwargs)
        for mode in modes:
            protocols.check_mode(mode)
        self.modes = tuple(modes)
        self.trials = tuple(trials)
        self.num_shots = protocols.check_num_shots(num_shots)
        self.rand_perm = rand_perm
        if rand_perm is not None:  # A mismatch fails when built, not later.
            self._galleries = protocols.sysu_official_galleries(
                metadata,
                rand_perm,
                modes=self.modes,
                trials=self.trials,
                num_shots=self.num_shots,
            )

    @property
    def draw(self) -> str:
        """How the galleries are drawn: a key of `results.GALLERY_DRAWS`."""
        if self.rand_perm is not None:
            return "official"
        return "community" if self.num_shots == 1 else "ours"

    def galleries(self) -> dict[tuple[str, int], np.ndarray]:
        """{(mode, trial): [G] int64 split positions of the gallery}."""
        if self.rand_perm is not None:
            return self._galleries
        return protocols.sysu_galleries(
            self.metadata,
            modes=self.modes,
            trials=self.trials,
            num_shots=self.num_shots,
        )

    def evaluate(
        self, features: Mapping[str, np.ndarray]
    ) -> results_lib.EvaluationResults:
        metadata, normalize = self.metadata, self.normalize
        common.check_features(features, len(metadata.identity))
        shots = protocols.shots_name(self.num_shots)
        query = protocols.sysu_query_indices(metadata)
        galleries = self.galleries()
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
            value = np.asarray(value)
            dist = metrics_lib.negative_inner_product(
                value[query], value[union], normalize=normalize
            )
            distances = common.Distances(value, normalize=normalize)
            if self.rerank is not None or self.aqe is not None:
                logging.info(
                    "Re-ranking / expanding %d SYSU galleries (%s), %d "
                    "queries.",
                    len(galleries),
                    name,
                    query.size,
                )
            for (mode, t), gallery in galleries.items():
                for suffix, d in self.distance_variants(
                    distances, query, gallery, plain=dist[:, columns[mode, t]]
                ):
                    per_trial.setdefault(
                        f"sysu_{mode}_{shots}{suffix}", {}
                    ).setdefault(name, {})[t] = metrics(d, gallery)
        reasons = {
            f"sysu_{mode}_{shots}": skip_reason(metadata, query, mode=mode)
            for mode in self.modes
        }
        return results_lib.EvaluationResults(
            per_trial,
            rerank=self.rerank,
            skip_reasons={p: r for p, r in reasons.items() if r},
            aqe=self.aqe,
            gallery_draws={
                f"sysu_{mode}_{shots}": self.draw for mode in self.modes
            },
        )

    def rank_list_views(self) -> list[protocols.RankListView]:
        """All-search, the single-shot gallery of trial 0 (the kit's with
        `rand_perm`)."""
        metadata = self.metadata
        if self.rand_perm is not None:
            gallery = protocols.sysu_official_galleries(
                metadata, self.rand_perm, modes=("all",), trials=(0,)
            )["all", 0]
        else:
            gallery = protocols.sysu_gallery_indices(
                metadata, mode="all", trial=0
            )
        return [
            protocols.RankListView(
                name="rank_list_sysu_all",
                title=(
                    "SYSU-MM01 all-search, gallery of trial 0: infrared "
                    "query, top-10 visible"
                ),
                query=protocols.sysu_query_indices(metadata),
                gallery=gallery,
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
