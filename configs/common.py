r"""What the recipes share: `:ARG` parsing and the paper's ablation rows.

`parse_arg` reads what follows the colon of `--config=sysu:variant=agw`.
`VARIANTS` are the rows of the paper's Tables 1-3 as named overrides
(docs/training.md "Recipes and ablations"); "agw_re" is the paper's AGW*,
"hard" is batch-hard triplet with margin 0.3. "mclnet_caj" is not a row of
the paper: MCLNet with the channel augmentation of CAJ (Ye et al., ICCV
2021) as its release uses it (docs/training.md "Channel augmentation
(CAJ)"). Every recipe writes the "mclnet" row itself and calls
`apply_variant` last. `add_cross_dataset_evals` adds the test evaluators of
other datasets (`eval_on=regdb+llcm`: cross-dataset evaluation).
"""

from collections.abc import Mapping
from typing import Any

import ml_collections

# AGW's non-local placement: 2 blocks in layer2, 3 in layer3.
AGW_NON_LOCAL = (0, 2, 3, 0)
# The release's random erasing probability.
RANDOM_ERASING_P = 0.8

# CAJ's channel augmentation, off; _CAJ is its release's: the exchanged view,
# adaptive grey on every infrared image, its erasing (p 0.5) instead of the
# release's.
_NO_CAJ = {
    "data.channel_exchange": False,
    "data.channel_adaptive_grey": 0.0,
    "data.channel_erasing": 0.0,
}
_CAJ = {
    "data.channel_exchange": True,
    "data.channel_adaptive_grey": 1.0,
    "data.channel_erasing": 0.5,
    "data.random_erasing": 0.0,
}

_BASE = {
    "loss.triplet": "hard",
    "model.pooling": "avg",
    "model.non_local_counts": (0, 0, 0, 0),
    "data.random_erasing": 0.0,
    **_NO_CAJ,
}
_AGW = {
    "loss.triplet": "wrt",
    "model.pooling": "gem",
    "model.non_local_counts": AGW_NON_LOCAL,
    "data.random_erasing": 0.0,
    **_NO_CAJ,
}
# AGW*: AGW with random erasing.
_AGW_RE = {**_AGW, "data.random_erasing": RANDOM_ERASING_P}


def _modules(*, mcm: bool, ica: bool, cca: bool) -> dict[str, bool]:
    return {"loss.mcm": mcm, "loss.ica": ica, "loss.cca": cca}


_NONE = _modules(mcm=False, ica=False, cca=False)
_MCM = _modules(mcm=True, ica=False, cca=False)

# Name -> overrides (dotted field paths). Every variant sets the same fields.
VARIANTS = {
    "base": {**_BASE, **_NONE},
    "base_mcm": {**_BASE, **_MCM},
    "base_ica_cca": {**_BASE, **_modules(mcm=False, ica=True, cca=True)},
    "agw": {**_AGW, **_NONE},
    "agw_mcm": {**_AGW, **_MCM},
    "agw_re": {**_AGW_RE, **_NONE},
    "agw_re_mcm": {**_AGW_RE, **_MCM},
    "agw_re_ica": {**_AGW_RE, **_modules(mcm=False, ica=True, cca=False)},
    "agw_re_cca": {**_AGW_RE, **_modules(mcm=False, ica=False, cca=True)},
    "agw_re_ica_cca": {**_AGW_RE, **_modules(mcm=False, ica=True, cca=True)},
    "mclnet": {**_AGW_RE, **_modules(mcm=True, ica=True, cca=True)},
    "mclnet_caj": {
        **_AGW_RE,
        **_modules(mcm=True, ica=True, cca=True),
        **_CAJ,
    },
}


def override(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Sets existing fields of `config` in place.

    Args:
      config: the config to change.
      overrides: field path -> value; a path is dotted ("loss.triplet") and
        a mapping value given for a ConfigDict field sets its fields in
        turn ({"loss": {"triplet": "wrt"}}).

    Returns:
      `config`.

    Raises:
      ValueError: a path names no existing field.
    """
    for path, value in overrides.items():
        keys = path.split(".")
        node = config
        for depth, key in enumerate(keys):
            where = ".".join(["config", *keys[:depth]])
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(
                    f"Unknown config field {path!r}: {where} has no fields."
                )
            if key not in node:
                raise ValueError(
                    f"Unknown config field {path!r}: {where} has no "
                    f"{key!r}; its fields: {sorted(node.keys())}."
                )
            if depth < len(keys) - 1:
                node = node[key]
        if isinstance(value, Mapping) and isinstance(
            node[keys[-1]], ml_collections.ConfigDict
        ):
            override(config, {f"{path}.{k}": v for k, v in value.items()})
        else:
            node[keys[-1]] = value
    return config


def apply_variant(
    config: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
    """Sets `config.variant` and the overrides of `VARIANTS[name]`."""
    if name not in VARIANTS:
        raise ValueError(
            f"Unknown variant {name!r}; choose one of {sorted(VARIANTS)}."
        )
    config.variant = name
    return override(config, VARIANTS[name])


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """'mclnet' or 'variant=base,trial=3' -> the arguments over `defaults`.

    A bare word is the variant. Values are converted to the type of the
    default (int, bool via 0/1/true/false, str).

    Args:
      arg: what follows the colon of `--config=RECIPE:ARG`, or None.
      **defaults: argument name -> default value.

    Returns:
      `defaults` updated with the arguments given, as attributes.

    Raises:
      ValueError: an unknown argument name or a value of the wrong type.
    """
    out = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            key, value = "variant", item
        else:
            key, value = (s.strip() for s in item.split("=", 1))
        if key not in defaults:
            raise ValueError(
                f"Unknown config argument {key!r} in {arg!r}; known: "
                f"{sorted(defaults)}."
            )
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError(f"{key} must be true/false, got {value!r}.")
            out[key] = value.lower() in ("1", "true")
        elif isinstance(default, int):
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(
                    f"{key} must be an integer, got {value!r}."
                ) from None
        else:
            out[key] = value
    return ml_collections.ConfigDict(out)


# Cross-dataset evaluation: each dataset's TFDS builder, builder config and
# test protocol as its own recipe (configs/<name>.py) writes them.
CROSS_DATASETS = {
    "sysu": (
        "sysu_mm01",
        "288x144",
        dict(type="sysu", modes=("all", "indoor"), num_trials=10, num_shots=1),
    ),
    "regdb": ("regdb", "trial_1", dict(type="regdb")),
    "llcm": (
        "llcm",
        "288x144",
        dict(type="llcm", num_trials=10, llcm_transposed_vis_to_ir=False),
    ),
}


def add_cross_dataset_evals(
    config: ml_collections.ConfigDict,
    eval_on: str,
    *,
    own: str,
    data: Mapping[str, Mapping[str, Any]] | None = None,
    num_trials: int | None = None,
) -> ml_collections.ConfigDict:
    """Adds `config.evals.test_<name>` for each name of `eval_on`.

    Each is the named dataset's test protocol on the final model of a run
    trained on `own` (cross-dataset evaluation): an entry with `data`, which
    the run prepares and opens beside its own dataset; its results file
    (`results_test_<name>.json`) names both datasets.

    Args:
      config: a recipe's config, with `evals`.
      eval_on: "+"-separated names of CROSS_DATASETS ("regdb+llcm"); ""
        adds nothing.
      own: the recipe's dataset (a key of CROSS_DATASETS), refused in
        `eval_on`.
      data: name -> fields of its `data` over the defaults (the synthetic
        recipe's generated layouts); by default `manual_dir` and `data_dir`
        are unset (the dataset's default folder; set them with
        --config.evals.test_<name>.data.manual_dir=...).
      num_trials: the random gallery draws of SYSU and LLCM (default 10).

    Raises:
      ValueError: an unknown name, or the recipe's own dataset.
    """
    names = [n.strip() for n in eval_on.split("+") if n.strip()]
    for name in names:
        if name not in CROSS_DATASETS or name == own:
            others = sorted(set(CROSS_DATASETS) - {own})
            raise ValueError(
                f"eval_on: {name!r} is not another dataset than the "
                f"recipe's ({own!r}); choose from {others}, joined by '+'."
            )
    placeholder = ml_collections.config_dict.placeholder
    for name in names:
        dataset, builder_config, protocol = CROSS_DATASETS[name]
        protocol = dict(protocol)
        if num_trials is not None and "num_trials" in protocol:
            protocol["num_trials"] = num_trials
        fields = dict(
            dataset=dataset,
            builder_config=builder_config,
            image_format=placeholder(str),
            manual_dir=placeholder(str),
            data_dir=placeholder(str),
            synthetic=None,
        )
        fields.update((data or {}).get(name, {}))
        config.evals[f"test_{name}"] = dict(
            **protocol,
            split="test",
            every_steps=0,
            at_end=True,
            features="model",
            rerank=False,
            rerank_k1=20,
            rerank_k2=6,
            rerank_lambda=0.3,
            data=fields,
        )
    return config
