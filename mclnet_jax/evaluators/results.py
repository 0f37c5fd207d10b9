"""Evaluation results: per-trial metrics, their mean and std, JSON, a table.

`EvaluationResults.per_trial[protocol][feature][trial]` holds
`metrics.RetrievalMetrics`; protocol names are "sysu_<mode>_single_shot",
"sysu_<mode>_multi_shot" (10 shots; "sysu_<mode>_<n>_shot" otherwise),
"regdb_visible_to_infrared", "regdb_infrared_to_visible",
"llcm_infrared_to_visible" and "llcm_visible_to_infrared" (or
"llcm_visible_to_infrared_transposed"), each with
`RERANK_SUFFIX` when computed from re-ranked distances and `AQE_SUFFIX`
from distances after average query expansion. SYSU results also say how
each gallery was drawn (`gallery_draws`: `GALLERY_DRAWS`).

Queries without a correct match in their gallery are skipped by the metrics
(as the community's code does); the table and the JSON say how many and,
where the evaluator knows it (`skip_reasons`), why.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from mclnet_jax import metrics as metrics_lib
from mclnet_jax import query_expansion
from mclnet_jax import rerank as rerank_lib

SUMMARY_RANKS = (1, 5, 10, 20)
# Appended to the protocol name of re-ranked results.
RERANK_SUFFIX = "+rerank"
# Appended to the protocol name of results after average query expansion.
AQE_SUFFIX = "+aqe"
# How a protocol's galleries were drawn (`EvaluationResults.gallery_draws`).
GALLERY_DRAWS = {
    "official": (
        "the SYSU-MM01 evaluation kit's fixed permutations "
        "(rand_perm_cam.mat), as its get_testing_set"
    ),
    "community": "random.seed(trial), one random.choice per id and camera",
    "ours": "random.sample per id and camera (ours, not the kit's)",
}


def base_protocol(protocol: str) -> str:
    """The protocol without `RERANK_SUFFIX` / `AQE_SUFFIX`."""
    for suffix in (RERANK_SUFFIX, AQE_SUFFIX):
        protocol = protocol.removesuffix(suffix)
    return protocol


def _summary(
    per_trial: Sequence[metrics_lib.RetrievalMetrics],
) -> tuple[dict[str, float], dict[str, float]]:
    table = {}
    for k in SUMMARY_RANKS:
        if k <= len(per_trial[0].cmc):
            table[f"rank{k}"] = [m.rank(k) for m in per_trial]
    table["mAP"] = [m.mAP for m in per_trial]
    table["mINP"] = [m.mINP for m in per_trial]
    mean = {k: float(np.mean(v)) for k, v in table.items()}
    std = {k: float(np.std(v)) for k, v in table.items()}
    return mean, std


@dataclasses.dataclass
class EvaluationResults:
    """Per-trial metrics: `per_trial[protocol][feature][trial]`.

    `rerank` holds the parameters of the `RERANK_SUFFIX` protocols, `aqe`
    those of the `AQE_SUFFIX` ones; `gallery_draws` {protocol (without
    suffix): a key of `GALLERY_DRAWS`} says how galleries were drawn. Means and
    standard deviations (population, ddof=0) are over trials, and over the
    queries that have a correct match in the gallery; `skip_reasons`
    {protocol (without `RERANK_SUFFIX`): text} says why the others have
    none (`skipped_queries`).
    """

    per_trial: dict[str, dict[str, dict[int, metrics_lib.RetrievalMetrics]]]
    rerank: rerank_lib.RerankParams | None = None
    skip_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    aqe: query_expansion.AqeParams | None = None
    gallery_draws: dict[str, str] = dataclasses.field(default_factory=dict)

    def skipped_queries(self) -> dict[str, dict[str, Any]]:
        """{protocol: {"skipped": [min, max] over trials, "queries": Q,
        "reason": text}} for each protocol where some query was skipped."""
        out = {}
        for p, fs in self.per_trial.items():
            counts = [
                (m.num_queries - m.num_valid_queries, m.num_queries)
                for trials in fs.values()
                for m in trials.values()
            ]
            skipped = [c for c, _ in counts]
            if not counts or max(skipped) == 0:
                continue
            base = base_protocol(p)
            out[p] = {
                "skipped": [min(skipped), max(skipped)],
                "queries": max(q for _, q in counts),
                "reason": self.skip_reasons.get(
                    base,
                    "no image of their identity in the gallery (after the "
                    "protocol's camera removal)",
                ),
            }
        return out

    def merge(self, other: EvaluationResults) -> EvaluationResults:
        """Union of two results (e.g. RegDB trials evaluated one by one)."""
        if self.rerank and other.rerank and self.rerank != other.rerank:
            raise ValueError(
                f"cannot merge results re-ranked with different parameters: "
                f"{self.rerank.describe()} vs {other.rerank.describe()}."
            )
        if self.aqe and other.aqe and self.aqe != other.aqe:
            raise ValueError(
                f"cannot merge results with different query expansions: "
                f"{self.aqe.describe()} vs {other.aqe.describe()}."
            )
        for p in set(self.gallery_draws) & set(other.gallery_draws):
            if self.gallery_draws[p] != other.gallery_draws[p]:
                raise ValueError(
                    f"cannot merge {p} results of galleries drawn "
                    f"differently: {self.gallery_draws[p]!r} vs "
                    f"{other.gallery_draws[p]!r}."
                )
        merged = {
            p: {f: dict(t) for f, t in fs.items()}
            for p, fs in self.per_trial.items()
        }
        for p, fs in other.per_trial.items():
            for f, trials in fs.items():
                dest = merged.setdefault(p, {}).setdefault(f, {})
                clash = set(dest) & set(trials)
                if clash:
                    raise ValueError(
                        f"{p}/{f}: trials {sorted(clash)} are in both results."
                    )
                dest.update(trials)
        return EvaluationResults(
            merged,
            rerank=self.rerank or other.rerank,
            skip_reasons={**self.skip_reasons, **other.skip_reasons},
            aqe=self.aqe or other.aqe,
            gallery_draws={**self.gallery_draws, **other.gallery_draws},
        )

    def summary(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """{protocol: {feature: {"mean": {...}, "std": {...}}}} fractions."""
        out = {}
        for p, fs in self.per_trial.items():
            for f, trials in fs.items():
                mean, std = _summary([trials[t] for t in sorted(trials)])
                out.setdefault(p, {})[f] = {"mean": mean, "std": std}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: per-trial metrics, mean and std (fractions).

        Entries of re-ranked protocols also hold "rerank": {"k1", "k2",
        "lambda_value"}, those after query expansion "aqe": {"k", "alpha"},
        and SYSU entries "gallery_draw" (a key of `GALLERY_DRAWS`).
        """
        summary = self.summary()
        skipped = self.skipped_queries()
        out = {}
        for p, fs in self.per_trial.items():
            for f, trials in fs.items():
                entry = out.setdefault(p, {})[f] = {
                    "trials": {
                        str(t): trials[t].to_dict() for t in sorted(trials)
                    },
                    "num_trials": len(trials),
                    **summary[p][f],
                }
                if p.endswith(RERANK_SUFFIX) and self.rerank is not None:
                    entry["rerank"] = self.rerank.to_dict()
                if p.endswith(AQE_SUFFIX) and self.aqe is not None:
                    entry["aqe"] = self.aqe.to_dict()
                if base_protocol(p) in self.gallery_draws:
                    entry["gallery_draw"] = self.gallery_draws[base_protocol(p)]
                if p in skipped:
                    entry["skipped_queries"] = skipped[p]
        return out

    def write_json(self, path: str) -> None:
        """Writes `to_dict()` to `path` (local, or a tf.io.gfile URL)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if "://" in path:  # e.g. gs://: TensorFlow only where needed
            from data_pipeline.tf_setup import tf

            with tf.io.gfile.GFile(path, "w") as f:
                f.write(text)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)

    def table(self) -> str:
        """Mean +- std over trials in percent, one row per protocol/feature."""
        summary = self.summary()
        columns = [f"rank{k}" for k in SUMMARY_RANKS] + ["mAP", "mINP"]
        width = max([28] + [len(p) for p in summary])
        header = (
            f"{'protocol':<{width}} {'feature':<7} {'trials':>6}  "
            + "  ".join(f"{c:>14}" for c in columns)
        )
        lines = [header, "-" * len(header)]
        for p in sorted(summary):
            for f in sorted(summary[p]):
                mean, std = summary[p][f]["mean"], summary[p][f]["std"]
                cells = [
                    f"{100 * mean[c]:6.2f} +-{100 * std[c]:5.2f}"
                    if c in mean
                    else f"{'-':>14}"
                    for c in columns
                ]
                lines.append(
                    f"{p:<{width}} {f:<7} {len(self.per_trial[p][f]):>6}  "
                    + "  ".join(cells)
                )
        for p, info in sorted(self.skipped_queries().items()):
            low, high = info["skipped"]
            count = f"{low}" if low == high else f"{low} to {high}"
            lines.append(
                f"{p}: {count} of {info['queries']} queries skipped (not in "
                f"its metrics): {info['reason']}."
            )
        if any(p.endswith(RERANK_SUFFIX) for p in summary):
            params = f": {self.rerank.describe()}" if self.rerank else ""
            lines.append(
                f"{RERANK_SUFFIX}: k-reciprocal re-ranking (Zhong "
                f"et al., CVPR 2017){params}"
            )
        if any(p.endswith(AQE_SUFFIX) for p in summary):
            params = f": {self.aqe.describe()}" if self.aqe else ""
            lines.append(
                f"{AQE_SUFFIX}: average query expansion (fast-reid's AQE, "
                f"one round){params}"
            )
        for p, draw in sorted(self.gallery_draws.items()):
            if p in summary:
                lines.append(f"{p}: gallery drawn by {GALLERY_DRAWS[draw]}.")
        return "\n".join(lines)


def write(
    workdir: str,
    results,
    *,
    step: int,
    name: str = "results",
    train_metrics: Mapping[str, float] | None = None,
    dataset: str = "",
    trained_on: str = "",
) -> dict[str, Any]:
    """Writes `<name>.json` (per trial, mean, std) and `<name>.txt` (table).

    Args:
      workdir: output folder.
      results: `EvaluationResults`.
      step: the training step the model was taken at.
      name: file stem.
      train_metrics: the last logged training metrics of this process's run
        (empty when it resumed at the end).
      dataset: the evaluated dataset (e.g. "regdb/trial_1").
      trained_on: the dataset the model was trained on (cross-dataset
        evaluation when it differs from `dataset`).

    Returns:
      The JSON dict: {"step", "dataset", "trained_on", "summary": {protocol:
      {feature: {"mean", "std"}}}, "results": per-trial details,
      "train_metrics"}.
    """
    out = {
        "step": step,
        "dataset": dataset,
        "trained_on": trained_on,
        "summary": results.summary(),
        "results": results.to_dict(),
        "train_metrics": dict(train_metrics or {}),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"{name}.json"), "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        with open(os.path.join(workdir, f"{name}.txt"), "w") as f:
            where = f", {dataset}" if dataset else ""
            if trained_on and trained_on != dataset:
                where += f" (trained on {trained_on})"
            f.write(f"step {step}{where}\n{results.table()}\n")
    logging.info(
        "Results at step %d written to %s",
        step,
        os.path.join(workdir, name + ".{json,txt}"),
    )
    return out
