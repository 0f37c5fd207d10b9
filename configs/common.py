r"""What the recipes share: `:ARG` parsing and the paper's ablation rows.

`parse_arg` reads what follows the colon of `--config=sysu:variant=agw`.
`VARIANTS` are the rows of the paper's Tables 1-3 as named overrides
(docs/training.md "Recipes and ablations"); "agw_re" is the paper's AGW*,
"hard" is batch-hard triplet with margin 0.3. Every recipe writes the "mclnet"
row itself and calls `apply_variant` last.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections

# AGW's non-local placement: 2 blocks in layer2, 3 in layer3.
AGW_NON_LOCAL = (0, 2, 3, 0)
# The release's random erasing probability.
RANDOM_ERASING_P = 0.8

_BASE = {
    "loss.triplet": "hard",
    "model.pooling": "avg",
    "model.non_local_counts": (0, 0, 0, 0),
    "data.random_erasing": 0.0,
}
_AGW = {
    "loss.triplet": "wrt",
    "model.pooling": "gem",
    "model.non_local_counts": AGW_NON_LOCAL,
    "data.random_erasing": 0.0,
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
