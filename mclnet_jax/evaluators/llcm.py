"""The LLCM evaluator: both directions, ten single-shot gallery draws each.

Infrared->visible: every infrared test image queries the visible gallery of
each trial; visible->infrared the other way round. A gallery is one image
per (identity, camera) folder of the other modality, drawn as the reference
code draws it (`protocols.llcm_galleries`). Metrics: `metrics.llcm_metrics`
(gallery images of the query's identity and camera removed, cameras numbered
across modalities; CMC over de-duplicated identities). docs/evaluation.md
"What is evaluated" has the details and the reference code's transposed
visible->infrared figure (`transposed_vis_to_ir`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline.constants import (
    INFRARED,
    LLCM_DIRECTIONS,
    LLCM_TRIALS,
    MODALITY_NAMES,
    VISIBLE,
)
from mclnet_jax import metrics as metrics_lib
from mclnet_jax.evaluators import common, protocols
from mclnet_jax.evaluators import results as results_lib

# The query and gallery modality of each direction.
_MODALITIES = {
    "infrared_to_visible": (INFRARED, VISIBLE),
    "visible_to_infrared": (VISIBLE, INFRARED),
}
# The protocol name of the reference code's transposed visible->infrared.
TRANSPOSED_SUFFIX = "_transposed"


class Llcm(common.Protocol):
    """Both LLCM directions on its test split.

    Per direction: the query is every test image of the query modality
    (identities, cameras, file names ascending); the gallery of trial t is
    one image per (identity, camera) folder of the other modality, drawn
    with `random.Random(t)` (identities ascending, cameras ascending, one
    choice from the file-name-sorted folder). Gallery images with the
    query's identity and camera number are removed (LLCM numbers a camera
    the same in both modalities), CMC counts de-duplicated identities, and
    mAP / mINP the image ranking (`metrics.llcm_metrics`).

    `transposed_vis_to_ir=True` reproduces the LLCM reference code's
    visible->infrared figure, which evaluates the transposed distance
    matrix of its infrared->visible set-up with the roles of the modalities
    swapped: the queries are the per-trial sampled INFRARED images (one per
    identity and camera) and the gallery is ALL visible test images. Its
    protocol is named "llcm_visible_to_infrared_transposed", so it is never
    mistaken for the visible->infrared protocol above (the default).

    Args:
        metadata: the test split's `records.SplitMetadata`.
        trials: gallery seeds (the reference: 0..9).
        transposed_vis_to_ir: evaluate visible->infrared as the reference
            code does (see above) instead of with visible queries.
        max_rank, normalize, rerank, aqe: see `common.Protocol`.

    `evaluate` returns protocols "llcm_infrared_to_visible" and
    "llcm_visible_to_infrared" (or "llcm_visible_to_infrared_transposed").
    """

    title = "LLCM"

    def __init__(
        self,
        metadata,
        *,
        trials: Sequence[int] = LLCM_TRIALS,
        transposed_vis_to_ir: bool = False,
        **kwargs,
    ):
        super().__init__(metadata, **kwargs)
        if not isinstance(transposed_vis_to_ir, bool):
            raise ValueError(
                "transposed_vis_to_ir must be True or False, got "
                f"{transposed_vis_to_ir!r}."
            )
        self.trials = tuple(trials)
        if not self.trials:
            raise ValueError("trials is empty: give at least one seed.")
        # Results are keyed by seed: a repeated or non-integer seed would
        # silently merge or change the draws.
        if len(set(self.trials)) != len(self.trials) or not all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool)
            for t in self.trials
        ):
            raise ValueError(
                f"trials must be distinct integer seeds, got {self.trials!r}."
            )
        self.transposed_vis_to_ir = transposed_vis_to_ir

    def _sets(self) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
        """{protocol: {trial: (query, gallery) split indices}}."""
        meta, trials = self.metadata, self.trials
        every = {
            m: protocols.llcm_query_indices(meta, modality=m)
            for m in (VISIBLE, INFRARED)
        }
        drawn = {
            m: protocols.llcm_galleries(meta, modality=m, trials=trials)
            for m in (VISIBLE, INFRARED)
        }
        out = {}
        for direction in LLCM_DIRECTIONS:
            query_m, gallery_m = _MODALITIES[direction]
            if direction == "visible_to_infrared" and self.transposed_vis_to_ir:
                out[f"llcm_{direction}{TRANSPOSED_SUFFIX}"] = {
                    t: (drawn[INFRARED][t], every[VISIBLE]) for t in trials
                }
            else:
                out[f"llcm_{direction}"] = {
                    t: (every[query_m], drawn[gallery_m][t]) for t in trials
                }
        return out

    def evaluate(
        self, features: Mapping[str, np.ndarray]
    ) -> results_lib.EvaluationResults:
        meta = self.metadata
        common.check_features(features, len(meta.identity))
        sets = self._sets()
        visible = protocols.llcm_query_indices(meta, modality=VISIBLE)
        infrared = protocols.llcm_query_indices(meta, modality=INFRARED)
        # Row of each image in the visible x infrared distance matrix.
        row = np.full(len(meta.identity), -1, np.int64)
        row[visible] = np.arange(visible.size)
        row[infrared] = np.arange(infrared.size)

        def metrics(dist, query, gallery):
            return metrics_lib.llcm_metrics(
                dist,
                query_ids=meta.identity[query],
                gallery_ids=meta.identity[gallery],
                query_cams=meta.camera[query],
                gallery_cams=meta.camera[gallery],
                max_rank=self.max_rank,
            )

        def select(vis_ir, query, gallery):
            """The [Q, G] block of a visible x infrared matrix."""
            if meta.modality[query[0]] == VISIBLE:
                return vis_ir[np.ix_(row[query], row[gallery])]
            return vis_ir.T[np.ix_(row[query], row[gallery])]

        per_trial = {}
        for name, value in features.items():
            distances = common.Distances(value, normalize=self.normalize)
            # One matrix serves every direction and trial.
            vis_ir = distances.plain(visible, infrared)
            for protocol, by_trial in sets.items():
                for t, (q, g) in by_trial.items():
                    for suffix, dist in self.distance_variants(
                        distances, q, g, plain=select(vis_ir, q, g)
                    ):
                        per_trial.setdefault(protocol + suffix, {}).setdefault(
                            name, {}
                        )[t] = metrics(dist, q, g)
        reasons = {p: skip_reason(meta, s) for p, s in sets.items()}
        return results_lib.EvaluationResults(
            per_trial,
            rerank=self.rerank,
            aqe=self.aqe,
            skip_reasons={p: r for p, r in reasons.items() if r},
        )

    def rank_list_views(self) -> list[protocols.RankListView]:
        """Both directions, the sets of trial 0 (the first trial)."""
        views = []
        for protocol, by_trial in self._sets().items():
            query, gallery = by_trial[self.trials[0]]
            q_name = MODALITY_NAMES[int(self.metadata.modality[query[0]])]
            g_name = MODALITY_NAMES[int(self.metadata.modality[gallery[0]])]
            views.append(
                protocols.RankListView(
                    name=f"rank_list_{protocol}",
                    title=(
                        f"LLCM {protocol[len('llcm_') :].replace('_', ' ')}, "
                        f"trial {self.trials[0]}: {q_name} query, top-10 "
                        f"{g_name}"
                    ),
                    query=query,
                    gallery=gallery,
                    # LLCM removes what the standard rule removes: the
                    # query's identity in the query's camera.
                    flavour="standard",
                )
            )
        return views


def skip_reason(meta, by_trial: Mapping[int, tuple]) -> str:
    """Why queries of one protocol have no correct match ("": none).

    Every draw takes an image of each (identity, camera) folder, so the
    count is the same in every trial; it is read from the first. A query
    has no match when its identity has no image in the gallery's modality,
    or only images from the query's own camera, which the protocol removes.
    """
    query, gallery = next(iter(by_trial.values()))
    seen = {}
    for identity, camera in zip(
        meta.identity[gallery], meta.camera[gallery], strict=True
    ):
        seen.setdefault(int(identity), set()).add(int(camera))
    absent, removed = 0, 0
    for i in query:
        cams = seen.get(int(meta.identity[i]), set())
        if not cams:
            absent += 1
        elif cams <= {int(meta.camera[i])}:
            removed += 1
    other = MODALITY_NAMES[int(meta.modality[gallery[0]])]
    parts = []
    if absent:
        parts.append(f"{absent} queries whose identity has no {other} image")
    if removed:
        parts.append(
            f"{removed} queries whose identity's {other} images are all from "
            "the query's own camera, which the protocol removes"
        )
    return "; ".join(parts)
