"""The evaluators of a run, built once from `config.evals`.

`config.evals` maps a name to an entry: `type` ("sysu", "regdb" or
"figures"), `split`, `every_steps` and `at_end`; protocol entries add
`features` ("model" or "pixels"), `num_trials`, re-ranking and (SYSU)
`modes` and `num_shots`; a figures entry names the protocol entry it draws
(`of`) and a raw-pixel entry to overlay (`baseline`, or ""). Every evaluator
reads its features from one `features.FeatureStore`, so a split is embedded
once per evaluated state however many evaluators read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import ml_collections

from mclnet_jax import analysis, config_checks
from mclnet_jax.evaluators import common, regdb, sysu
from mclnet_jax.evaluators import features as features_lib
from mclnet_jax.evaluators.figures import FiguresEvaluator

# The evaluator types, named once where configs are checked.
PROTOCOL_TYPES = config_checks.PROTOCOLS
TYPES = config_checks.EVAL_TYPES


def splits(evals: ml_collections.ConfigDict) -> list[str]:
    """The splits the evaluators of `evals` read, in order, once each."""
    return list(dict.fromkeys(entry.split for entry in evals.values()))


def _protocol(
    entry: ml_collections.ConfigDict, metadata, *, builder_config: str | None
) -> common.Protocol:
    rerank = common.rerank_params(entry)
    if entry.type == "sysu":
        return sysu.Sysu(
            metadata,
            modes=tuple(entry.modes),
            trials=tuple(range(entry.num_trials)),
            num_shots=entry.num_shots,
            rerank=rerank,
        )
    if entry.type == "regdb":
        return regdb.Regdb(
            metadata, trial=regdb.trial_of(builder_config), rerank=rerank
        )
    raise ValueError(f"Unknown evaluator type {entry.type!r}; one of {TYPES}.")


def build(
    evals: ml_collections.ConfigDict,
    *,
    store: features_lib.FeatureStore,
    sources: Mapping[str, Sequence[bytes]],
    image_size: tuple[int, int],
    batch_size: int,
    builder_config: str | None,
    workdir: str,
    label: str = "final",
) -> dict[str, common.Evaluator]:
    """{name: evaluator} of `evals` (a ConfigDict: sorted by name).

    Args:
        evals: `config.evals`.
        store: the run's feature store over (at least) `splits(evals)`.
        sources: {split: serialized records}: the figures' images.
        image_size, batch_size: of the evaluation pipeline.
        builder_config: the dataset's builder config (RegDB: the trial).
        workdir: the figures go to `workdir/figures`.
        label: what the evaluated states are, for the figures ("final",
            "latest", "best").
    """
    built: dict[str, common.Evaluator] = {}
    for name, entry in evals.items():
        if entry.type in PROTOCOL_TYPES:
            built[name] = common.ProtocolEvaluator(
                name,
                _protocol(
                    entry,
                    store.metadata(entry.split),
                    builder_config=builder_config,
                ),
                store=store,
                split=entry.split,
                features=entry.features,
                every_steps=entry.every_steps,
                at_end=entry.at_end,
            )
        elif entry.type != "figures":
            raise ValueError(
                f"config.evals.{name}.type: unknown {entry.type!r}; one of "
                f"{TYPES}."
            )
    for name, entry in evals.items():
        if entry.type == "figures":
            built[name] = FiguresEvaluator(
                name,
                of=built[entry.of],
                baseline=built[entry.baseline] if entry.baseline else None,
                load_images=analysis.display_loader(
                    sources[entry.split],
                    image_size=image_size,
                    batch_size=batch_size,
                ),
                folder=os.path.join(workdir, analysis.FIGURES_DIR),
                label=label,
                every_steps=entry.every_steps,
                at_end=entry.at_end,
            )
    return {name: built[name] for name in evals}
