"""The evaluators of a run, built once from `config.evals`.

`config.evals` maps a name to an entry: `type` ("sysu", "regdb", "llcm" or
"figures"), `split`, `every_steps` and `at_end`; protocol entries add
`features` ("model" or "pixels"), re-ranking, (SYSU, LLCM) `num_trials`,
(SYSU) `modes` and `num_shots` and (LLCM) `llcm_transposed_vis_to_ir`; a
figures entry names the protocol entry it draws (`of`) and a raw-pixel entry
to overlay (`baseline`, or ""). Every evaluator reads its features from one
`features.FeatureStore`, so a split is embedded once per evaluated state
however many evaluators read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import ml_collections

from mclnet_jax import analysis, config_checks, query_expansion
from mclnet_jax.evaluators import common, llcm, protocols, regdb, sysu
from mclnet_jax.evaluators import features as features_lib
from mclnet_jax.evaluators.figures import FiguresEvaluator

# The evaluator types, named once where configs are checked.
PROTOCOL_TYPES = config_checks.PROTOCOLS
TYPES = config_checks.EVAL_TYPES


def source_key(entry: ml_collections.ConfigDict) -> str:
    """The feature store's key of what an entry reads: its split, or for
    another dataset's (`entry.data`) "<dataset>:<builder config>:<split>"."""
    if "data" not in entry:
        return entry.split
    data = entry.data
    return f"{data.dataset}:{data.builder_config or 'default'}:{entry.split}"


def splits(evals: ml_collections.ConfigDict) -> list[str]:
    """The `source_key`s the evaluators of `evals` read, in order, once
    each (the split names when every entry reads the run's dataset)."""
    return list(dict.fromkeys(source_key(entry) for entry in evals.values()))


def entry_data(
    entry: ml_collections.ConfigDict, run_data: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """The data config an entry evaluates: the run's `config.data`, or with
    `entry.data` (cross-dataset evaluation) another dataset's: its dataset
    fields (`config_checks.DATASET_FIELDS`) from `entry.data`, unset ones
    None; the evaluation pipeline's (image size, batch size) the run's."""
    if "data" not in entry:
        return run_data
    fields = run_data.to_dict()
    fields.update(dict.fromkeys(config_checks.DATASET_FIELDS))
    fields.update(entry.data.to_dict())
    return ml_collections.ConfigDict(fields)


def dataset_name(data: ml_collections.ConfigDict) -> str:
    """ "regdb/trial_1", "sysu_mm01/original", "llcm": what results name."""
    if data.builder_config:
        return f"{data.dataset}/{data.builder_config}"
    return data.dataset


def _protocol(
    entry: ml_collections.ConfigDict,
    metadata,
    *,
    builder_config: str | None,
    aqe=None,
    sysu_rand_perm=None,
) -> common.Protocol:
    rerank = common.rerank_params(entry)
    if entry.type == "sysu":
        return sysu.Sysu(
            metadata,
            modes=tuple(entry.modes),
            trials=tuple(range(entry.num_trials)),
            num_shots=entry.num_shots,
            rand_perm=sysu_rand_perm,
            rerank=rerank,
            aqe=aqe,
        )
    if entry.type == "regdb":
        return regdb.Regdb(
            metadata,
            trial=regdb.trial_of(builder_config),
            rerank=rerank,
            aqe=aqe,
        )
    if entry.type == "llcm":
        return llcm.Llcm(
            metadata,
            trials=tuple(range(entry.num_trials)),
            transposed_vis_to_ir=entry.llcm_transposed_vis_to_ir,
            rerank=rerank,
            aqe=aqe,
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
    aqe: query_expansion.AqeParams | None = None,
    sysu_rand_perm: str | None = None,
    dataset: str = "",
) -> dict[str, common.Evaluator]:
    """{name: evaluator} of `evals` (a ConfigDict: sorted by name).

    Args:
        evals: `config.evals`.
        store: the run's feature store over (at least) `splits(evals)`.
        sources: {source key: serialized records}: the figures' images.
        image_size, batch_size: of the evaluation pipeline.
        builder_config: the run's dataset's builder config (RegDB: the
            trial); an entry with `data` evaluates that dataset's.
        workdir: the figures go to `workdir/figures`.
        label: what the evaluated states are, for the figures ("final",
            "latest", "best").
        aqe: `config.eval`'s average query expansion (`common.aqe_params`):
            every protocol also reports "<protocol>+aqe".
        sysu_rand_perm: `config.eval.sysu_rand_perm`, the SYSU-MM01 kit's
            rand_perm_cam.mat: the galleries of SYSU entries on the test
            split (`config_checks.SYSU_KIT_SPLIT`, the kit's test ids) drawn
            as the kit draws them (read once here); None, and entries on
            other splits (validation): the community's / our draw.
        dataset: the run's dataset (`dataset_name`), which the results of
            entries without `data` name.
    """

    rand_perm = None
    if sysu_rand_perm and any(
        config_checks.uses_sysu_kit(e) for e in evals.values()
    ):
        rand_perm = protocols.load_sysu_rand_perm(sysu_rand_perm)
    built: dict[str, common.Evaluator] = {}
    for name, entry in evals.items():
        if entry.type in PROTOCOL_TYPES:
            key = source_key(entry)
            other = entry.data if "data" in entry else None
            built[name] = common.ProtocolEvaluator(
                name,
                _protocol(
                    entry,
                    store.metadata(key),
                    builder_config=(
                        other.builder_config if other else builder_config
                    ),
                    aqe=aqe,
                    sysu_rand_perm=rand_perm
                    if config_checks.uses_sysu_kit(entry)
                    else None,
                ),
                store=store,
                split=key,
                dataset=dataset_name(other) if other else dataset,
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
                    sources[source_key(evals[entry.of])],
                    image_size=image_size,
                    batch_size=batch_size,
                ),
                folder=os.path.join(workdir, analysis.FIGURES_DIR),
                label=label,
                every_steps=entry.every_steps,
                at_end=entry.at_end,
            )
    return {name: built[name] for name in evals}
