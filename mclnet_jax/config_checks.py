"""Checks of a config before any work: ranges, names, and resume agreement.

`check(config, mode=...)` runs once, before the workdir is touched: every
numeric field with a valid range, every name chosen from a list (variant,
dataset, model and loss options), the evaluators of `config.evals` and what
they refer to, and the image size against the network's stride; all problems at
once, one line each (a `ConfigurationError`, exit 2). `check_resume(config,
workdir)` compares a resumed run's config with the `config.json` its
checkpoints were trained with (docs/training.md "Outputs, checkpoints and
resume": what may change on resume).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

from mclnet_jax import errors
from mclnet_jax import workdir as workdir_lib

# The release's learning rate diverges from random initialisation for these.
PRETRAINED_REQUIRED_DEPTH = 50
#  Fields a resumed run may change (docs/training.md "Outputs, checkpoints and
# resume"): how long it runs, how it logs, evaluates and checkpoints, where the
# data lives and how the computation is laid out. A field is named, or a prefix
# ending in "." names a section. Every other field changes the state's shapes
# or what a step computes, and must match config.json.
MAY_CHANGE_ON_RESUME = (
    "max_steps",
    "num_epochs",
    "log_every_steps",
    "eval.",
    "evals.",
    "checkpoint.",
    "distributed.",
    "init.",
    "data.manual_dir",
    "data.data_dir",
    "data.eval_batch_size",
    "model.kernels",
    "model.remat",
)
CONFIG_FILE = workdir_lib.CONFIG_FILE


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _in_range(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: low <= v <= high


# (field, test, what the field must be). Optional fields (None) are skipped.
_RANGES = (
    ("num_epochs", _at_least(1), "an integer >= 1"),
    ("max_steps", _at_least(1), "unset or an integer >= 1"),
    ("log_every_steps", _at_least(1), "an integer >= 1"),
    ("data.num_identities", _at_least(1), "an integer >= 1"),
    ("data.num_instances", _at_least(1), "an integer >= 1"),
    ("data.steps_per_epoch", _at_least(1), "unset or an integer >= 1"),
    ("data.eval_batch_size", _at_least(1), "an integer >= 1"),
    ("data.pad", _at_least(0), "an integer >= 0"),
    ("data.random_erasing", _in_range(0, 1), "a probability in [0, 1]"),
    ("data.random_grey", _in_range(0, 1), "a probability in [0, 1]"),
    ("data.random_remap", _in_range(0, 1), "a probability in [0, 1]"),
    ("data.channel_adaptive_grey", _in_range(0, 1), "a probability in [0, 1]"),
    ("data.channel_erasing", _in_range(0, 1), "a probability in [0, 1]"),
    ("model.width_multiplier", lambda v: v > 0, "a number > 0"),
    ("loss.triplet_margin", _at_least(0), "a number >= 0"),
    ("loss.label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("loss.confusion_weight", _at_least(0), "a number >= 0"),
    ("loss.center_weight", _at_least(0), "a number >= 0"),
    ("loss.sigma", _at_least(0), "a number >= 0"),
    ("loss.rho", _at_least(0), "a number >= 0"),
    ("optimizer.lr", lambda v: v > 0, "a number > 0"),
    ("optimizer.momentum", _in_range(0, 1), "a number in [0, 1]"),
    ("optimizer.weight_decay", _at_least(0), "a number >= 0"),
    ("optimizer.schedule.warmup_epochs", _at_least(0), "a number >= 0"),
    ("mcm_optimizer.lr", lambda v: v > 0, "a number > 0"),
    ("mcm_optimizer.momentum", _in_range(0, 1), "a number in [0, 1]"),
    ("mcm_optimizer.weight_decay", _at_least(0), "a number >= 0"),
    ("checkpoint.every_steps", _at_least(1), "an integer >= 1"),
    ("checkpoint.keep", _at_least(1), "an integer >= 1"),
    ("eval.precise_bn_batches", _at_least(0), "an integer >= 0 (0: off)"),
    ("eval.aqe_k", _at_least(1), "an integer >= 1"),
    ("eval.aqe_alpha", _at_least(0), "a number >= 0"),
)
# The same for every entry of config.evals with the field.
_ENTRY_RANGES = (
    ("every_steps", _at_least(0), "an integer >= 0 (0: never)"),
    ("num_trials", _at_least(1), "an integer >= 1"),
    ("num_shots", _at_least(1), "an integer >= 1"),
    ("rerank_k1", _at_least(1), "an integer >= 1"),
    ("rerank_k2", _at_least(1), "an integer >= 1"),
    ("rerank_lambda", _in_range(0, 1), "a number in [0, 1]"),
)

# Evaluator types of config.evals: the protocols and the figures of one.
PROTOCOLS = ("sysu", "regdb", "llcm")
EVAL_TYPES = (*PROTOCOLS, "figures")
# The fields of each type's entries.
_COMMON_FIELDS = ("type", "split", "every_steps", "at_end")
_PROTOCOL_FIELDS = (
    *_COMMON_FIELDS,
    "features",
    "rerank",
    "rerank_k1",
    "rerank_k2",
    "rerank_lambda",
)
# Which features a protocol entry evaluates: the network's or raw pixels.
FEATURES = ("model", "pixels")
# The fields of config.data that name a dataset; a protocol entry may add
# `data` with some of them (`dataset` required) to evaluate another dataset
# than the run's (cross-dataset evaluation; registry.entry_data).
DATASET_FIELDS = (
    "dataset",
    "builder_config",
    "image_format",
    "manual_dir",
    "data_dir",
    "synthetic",
)
# The dataset each protocol evaluates.
PROTOCOL_DATASETS = {"sysu": "sysu_mm01", "regdb": "regdb", "llcm": "llcm"}
# The split whose galleries the SYSU-MM01 kit's rand_perm_cam.mat draws (its
# test ids); a validation split keeps the community's draw.
SYSU_KIT_SPLIT = "test"


def uses_sysu_kit(entry: Any) -> bool:
    """Whether an entry of config.evals draws its galleries with the kit's
    rand_perm_cam.mat when config.eval.sysu_rand_perm is set."""
    return entry.type == "sysu" and entry.split == SYSU_KIT_SPLIT


ENTRY_FIELDS = {
    "sysu": (*_PROTOCOL_FIELDS, "modes", "num_trials", "num_shots"),
    "regdb": _PROTOCOL_FIELDS,
    "llcm": (*_PROTOCOL_FIELDS, "num_trials", "llcm_transposed_vis_to_ir"),
    "figures": (*_COMMON_FIELDS, "of", "baseline"),
}


def _get(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
    """(present, value) of a dotted field."""
    node = config
    for key in path.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or (
            key not in node
        ):
            return False, None
        node = node[key]
    return True, node


def _is_number(value: Any, *, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _range_problem(path: str, value: Any, ok, what: str) -> str | None:
    # The rule says whether the field is an integer ("an integer >= 1").
    if not _is_number(value, integer="integer" in what) or not ok(value):
        return f"config.{path} must be {what}, got {value!r}."
    return None


def _range_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
    for path, ok, what in _RANGES:
        present, value = _get(config, path)
        if not present or value is None:
            continue
        problem = _range_problem(path, value, ok, what)
        if problem:
            yield problem
    for section in ("optimizer", "mcm_optimizer"):
        for rules in ("lr_mults", "wd_mults"):
            present, value = _get(config, f"{section}.{rules}")
            if not present or value is None:
                continue
            for rule in value:
                if len(rule) != 2 or not _is_number(rule[1], integer=False):
                    yield (
                        f"config.{section}.{rules}: each rule must be "
                        f"(regex, number), got {rule!r}."
                    )
                elif rule[1] < 0:
                    yield (
                        f"config.{section}.{rules}: multipliers must be >= 0, "
                        f"got {rule[1]!r} for {rule[0]!r}."
                    )


def _eval_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
    """config.eval's switches and the SYSU kit's permutation file."""
    for path in ("eval.flip", "eval.aqe"):
        present, value = _get(config, path)
        if present and not isinstance(value, bool):
            yield f"config.{path} must be True or False, got {value!r}."
    present, path = _get(config, "eval.sysu_rand_perm")
    if not present or path is None:
        return
    if not (isinstance(path, str) and path):
        yield (
            "config.eval.sysu_rand_perm must be unset or the path of the "
            f"SYSU-MM01 kit's rand_perm_cam.mat, got {path!r}."
        )
    elif not os.path.isfile(path):
        yield (
            f"config.eval.sysu_rand_perm: no file {path!r}; pass the "
            "SYSU-MM01 evaluation kit's evaluation/data_split/"
            "rand_perm_cam.mat (github.com/wuancong/SYSU-MM01), or leave it "
            "unset for the community's draw."
        )
    elif not any(uses_sysu_kit(e) for e in _evals(config).values()):
        yield (
            "config.eval.sysu_rand_perm is set, but no entry of "
            "config.evals is a SYSU-MM01 protocol (type 'sysu') on the "
            f"{SYSU_KIT_SPLIT!r} split to use it."
        )


def _choice(
    config: ml_collections.ConfigDict, path: str, choices
) -> Iterator[str]:
    present, value = _get(config, path)
    if present and value not in choices:
        yield (
            f"config.{path} must be one of {sorted(choices)}, got {value!r}."
        )


def _name_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
    # Imported here: main checks a config before JAX or TensorFlow loads.
    from data_pipeline import constants
    from mclnet_jax import losses
    from mclnet_jax.configs import common
    from mclnet_jax.models import mclnet, remat, resnet

    yield from _choice(config, "variant", common.VARIANTS)
    yield from _choice(config, "data.dataset", constants.NUM_CAMERAS)
    yield from _choice(config, "model.depth", resnet.BLOCKS_PER_STAGE)
    yield from _choice(config, "model.last_stride", (1, 2))
    yield from _choice(config, "model.pooling", mclnet.POOLINGS)
    yield from _choice(config, "model.dtype", mclnet.DTYPES)
    yield from _choice(config, "model.kernels", mclnet.KERNELS)
    yield from _choice(config, "model.remat", remat.REMATS)
    yield from _choice(config, "loss.triplet", ("wrt", "hard"))
    yield from _choice(config, "loss.wrt_variant", losses.WRT_VARIANTS)
    yield from _choice(config, "loss.center_variant", ("paper", "release"))
    for section in ("optimizer", "mcm_optimizer"):
        yield from _choice(
            config, f"{section}.schedule.kind", ("constant", "epochs")
        )
    present, counts = _get(config, "model.non_local_counts")
    present_depth, depth = _get(config, "model.depth")
    if present and present_depth and depth in resnet.BLOCKS_PER_STAGE:
        blocks = tuple(resnet.BLOCKS_PER_STAGE[depth])
        if (
            len(counts) != len(blocks)
            or not all(isinstance(c, int) and c >= 0 for c in counts)
            or any(c > b for c, b in zip(counts, blocks, strict=True))
        ):
            yield (
                "config.model.non_local_counts must be 4 counts, each "
                f"between 0 and the blocks of its stage {blocks}, got "
                f"{tuple(counts)!r}."
            )


def network_stride(config: ml_collections.ConfigDict) -> int:
    """How much the network shrinks an image: stem 2, max-pool 2, stages
    2 and 3 by 2 each, stage 4 by `model.last_stride`."""
    return 16 * int(config.model.last_stride)


def _image_size_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
    present, size = _get(config, "data.image_size")
    if not present:
        return
    try:
        height, width = size
    except (TypeError, ValueError):
        yield f"config.data.image_size must be (height, width), got {size!r}."
        return
    if not all(_is_number(v, integer=True) for v in (height, width)):
        yield (
            "config.data.image_size must be two integers (height, width), "
            f"got {size!r}."
        )
        return
    if config.model.last_stride not in (1, 2):
        return  # Reported as a name problem.
    stride = network_stride(config)
    if min(height, width) < stride:
        yield (
            f"config.data.image_size {tuple(size)!r} is too small for the "
            f"network: it shrinks images {stride}x (model.last_stride="
            f"{config.model.last_stride}), so height and width must be at "
            f"least {stride}."
        )


def initialisation_problem(config: ml_collections.ConfigDict) -> str | None:
    """A deep network without ImageNet weights, unless asked for."""
    from mclnet_jax import train_step  # JAX: see _name_problems.

    depth = config.model.depth
    if depth < PRETRAINED_REQUIRED_DEPTH or config.init.pretrained:
        return None
    return (
        f"config.init.pretrained is not set for a ResNet-{depth}. The "
        "release trains from ImageNet weights, and its learning rate "
        "diverges from random initialisation within a few steps. Save "
        "torchvision's ResNet-50 as safetensors once (needs torch and "
        "torchvision):\n"
        '  python -c "import torchvision, safetensors.torch as st; '
        "st.save_file(torchvision.models.resnet50(weights='IMAGENET1K_V1')"
        ".state_dict(), 'resnet50.safetensors')\"\n"
        "then pass --config.init.pretrained=/path/to/resnet50.safetensors. "
        f"To train from scratch anyway, pass "
        f"--config.init.pretrained={train_step.RANDOM_INIT}."
    )


def _entry_problems(name: str, entry: Any) -> Iterator[str]:
    """The problems of `config.evals[name]` on its own."""
    where = f"config.evals.{name}"
    if not isinstance(entry, ml_collections.ConfigDict):
        yield f"{where} must be a ConfigDict of evaluator fields: {entry!r}."
        return
    if "type" not in entry or entry.type not in EVAL_TYPES:
        yield (
            f"{where}.type must be one of {sorted(EVAL_TYPES)}, got "
            f"{entry.type if 'type' in entry else 'none'!r}."
        )
        return
    fields = ENTRY_FIELDS[entry.type]
    if not _well_formed(entry):
        missing = [f for f in fields if f not in entry]
        optional = {"data"} if entry.type in PROTOCOLS else set()
        extra = sorted(set(entry) - set(fields) - optional)
        yield (
            f"{where} ({entry.type}) must have the fields {list(fields)}; "
            f"missing {missing}, unknown {extra}."
        )
        return
    for field, ok, what in _ENTRY_RANGES:
        if field in fields:
            path = f"evals.{name}.{field}"
            problem = _range_problem(path, entry[field], ok, what)
            if problem:
                yield problem
    if not (isinstance(entry.split, str) and entry.split):
        yield f"{where}.split must name a split, got {entry.split!r}."
    for field in ("at_end", "rerank", "llcm_transposed_vis_to_ir"):
        if field in fields and not isinstance(entry[field], bool):
            yield (
                f"{where}.{field} must be True or False, got {entry[field]!r}."
            )
    if "features" in fields and entry.features not in FEATURES:
        yield (
            f"{where}.features must be one of {list(FEATURES)}, got "
            f"{entry.features!r}."
        )
    if "modes" in fields and (
        not isinstance(entry.modes, (tuple, list))
        or not entry.modes
        or any(m not in ("all", "indoor") for m in entry.modes)
    ):
        yield (
            f"{where}.modes must be a non-empty subset of ('all', 'indoor'), "
            f"got {entry.modes!r}."
        )
    if "data" in entry:
        yield from _entry_data_problems(where, entry)


def _entry_data_problems(where: str, entry: Any) -> Iterator[str]:
    """An entry's `data`: another dataset, of the entry's protocol."""
    data = entry.data
    if not isinstance(data, ml_collections.ConfigDict):
        yield (
            f"{where}.data must be a dict of dataset fields "
            f"{list(DATASET_FIELDS)}, got {data!r}."
        )
        return
    unknown = sorted(set(data) - set(DATASET_FIELDS))
    if unknown:
        yield (
            f"{where}.data: unknown fields {unknown}; it names a dataset "
            f"with {list(DATASET_FIELDS)}."
        )
    want = PROTOCOL_DATASETS[entry.type]
    if data.get("dataset") != want:
        yield (
            f"{where}.data.dataset must be {want!r} (the dataset of the "
            f"{entry.type!r} protocol), got {data.get('dataset')!r}."
        )


def _well_formed(entry: Any) -> bool:
    """An entry of a known type with exactly its fields."""
    return (
        isinstance(entry, ml_collections.ConfigDict)
        and "type" in entry
        and entry.type in ENTRY_FIELDS
        and set(entry) - {"data"} == set(ENTRY_FIELDS[entry.type])
        and ("data" not in entry or entry.type in PROTOCOLS)
    )


def _evals(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The well-formed entries of config.evals (the others are reported)."""
    present, evals = _get(config, "evals")
    if not present or not isinstance(evals, ml_collections.ConfigDict):
        return {}
    return {n: e for n, e in evals.items() if _well_formed(e)}


def _evals_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
    present, evals = _get(config, "evals")
    if not present:
        yield "config.evals is missing: the evaluators of the run."
        return
    if not isinstance(evals, ml_collections.ConfigDict):
        yield f"config.evals must be a ConfigDict of evaluators, got {evals!r}."
        return
    for name, entry in evals.items():
        yield from _entry_problems(name, entry)
    valid = _evals(config)
    _, dataset = _get(config, "data.dataset")
    for name, entry in valid.items():
        want = PROTOCOL_DATASETS.get(entry.type)
        # (An unknown config.data.dataset is reported on its own.)
        known = dataset in PROTOCOL_DATASETS.values()
        if known and want and "data" not in entry and dataset != want:
            yield (
                f"config.evals.{name} ({entry.type}) evaluates {want!r} data "
                f"but the run's config.data.dataset is {dataset!r}; give the "
                f"entry its dataset in config.evals.{name}.data (cross-"
                "dataset evaluation, docs/evaluation.md) or change its type."
            )
    # What the figures refer to: a protocol entry's model features, and a
    # pixels entry's CMC, on the same split.
    protocols = {n: e for n, e in valid.items() if e.type in PROTOCOLS}
    for name, entry in valid.items():
        if entry.type != "figures":
            continue
        where = f"config.evals.{name}"
        of = protocols.get(entry.of)
        if of is None or of.features != "model":
            yield (
                f"{where}.of must name a protocol entry of config.evals with "
                f"features 'model' ({sorted(protocols)}), got {entry.of!r}."
            )
        elif of.split != entry.split:
            yield (
                f"{where}.split {entry.split!r} differs from the split of "
                f"config.evals.{entry.of} ({of.split!r}), whose features it "
                "draws."
            )
        if entry.baseline:
            base = protocols.get(entry.baseline)
            if base is None or base.features != "pixels":
                yield (
                    f"{where}.baseline must be '' or name a protocol entry "
                    f"with features 'pixels', got {entry.baseline!r}."
                )
            elif base.split != entry.split:
                yield (
                    f"{where}.baseline {entry.baseline!r} evaluates split "
                    f"{base.split!r}, the figures {entry.split!r}: the CMCs "
                    "must be of one split."
                )


def _best_metric_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
    """The best checkpoint: chosen during training, never on test."""
    present, metric = _get(config, "checkpoint.best_metric")
    if not present or metric is None:
        return
    evals = _evals(config)
    name, slash, _ = str(metric).partition("/")
    entry = evals.get(name) if isinstance(metric, str) and slash else None
    if entry is None or entry.type not in PROTOCOLS:
        yield (
            "config.checkpoint.best_metric must be unset or "
            "'<evaluator>/<path into its results>' naming a protocol entry "
            f"of config.evals ({sorted(evals)}), got {metric!r} (e.g. "
            "configs/sysu.py:val=1)."
        )
        return
    if entry.every_steps < 1:
        yield (
            f"config.checkpoint.best_metric {metric!r}: config.evals.{name}"
            ".every_steps must be > 0, to select during training."
        )
    final = {e.split for n, e in evals.items() if n != name and e.at_end}
    if entry.split == "test" or entry.split in final:
        yield (
            f"config.checkpoint.best_metric {metric!r}: config.evals.{name} "
            f"evaluates split {entry.split!r}, which the final results "
            "report; select on a validation split (configs/sysu.py:val=1), "
            "never on test."
        )


def _channel_aug_problems(config: ml_collections.ConfigDict) -> Iterator[str]:
    """CAJ's channel augmentation (data_pipeline/augment.py)."""
    present, exchange = _get(config, "data.channel_exchange")
    if present and not isinstance(exchange, bool):
        yield (
            f"config.data.channel_exchange must be True or False, got "
            f"{exchange!r}."
        )
    _, channel = _get(config, "data.channel_erasing")
    _, release = _get(config, "data.random_erasing")
    if (
        _is_number(channel, integer=False)
        and _is_number(release, integer=False)
        and channel > 0
        and release > 0
    ):
        yield (
            "config.data.channel_erasing (CAJ's random erasing) replaces "
            "config.data.random_erasing (the release's): set one of them to "
            f"0, got {channel!r} and {release!r}."
        )


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every range, name, evaluator and image-size problem of `config`, one
    line each."""
    return [
        *_range_problems(config),
        *_eval_problems(config),
        *_channel_aug_problems(config),
        *_name_problems(config),
        *_evals_problems(config),
        *_best_metric_problems(config),
        *_image_size_problems(config),
    ]


def check(config: ml_collections.ConfigDict, *, mode: str = "train") -> None:
    """Raises ConfigurationError listing every problem of `config`.

    Args:
      config: the run's config.
      mode: the CLI's --mode; "train" also requires an explicit
        initialisation of deep networks (`initialisation_problem`).
    """
    found = problems(config)
    if not found and mode == "train":
        # Alone: its instructions take several lines.
        problem = initialisation_problem(config)
        if problem:
            raise errors.ConfigurationError(problem)
    if found:
        raise errors.ConfigurationError(
            f"{len(found)} problem{'s' * (len(found) > 1)} in the config:\n"
            + "\n".join(f"  {p}" for p in found)
        )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path != "data.synthetic":
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def _may_change(path: str) -> bool:
    return any(
        path == f or (f.endswith(".") and path.startswith(f))
        for f in MAY_CHANGE_ON_RESUME
    )


def _has_checkpoint(workdir: str) -> bool:
    folder = os.path.join(workdir, workdir_lib.LATEST_DIR)
    return os.path.isdir(folder) and any(
        name.isdigit() for name in os.listdir(folder)
    )


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume with fields changed that change the run.

    Compares `config` with WORKDIR/config.json when the workdir holds a
    checkpoint to resume from; fields of `MAY_CHANGE_ON_RESUME`, and fields
    that one of the two configs does not have (written by another version),
    are not compared.

    Raises:
      ConfigChangedError: naming each changed field with both values.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not (os.path.isfile(path) and _has_checkpoint(workdir)):
        return
    try:
        with open(path, encoding="utf-8") as f:
            saved = _flat(json.load(f))
    except (OSError, ValueError) as e:
        raise errors.ConfigChangedError(
            f"Cannot read {path} ({e}), the config of the checkpoints in "
            f"{workdir}: restore it, or train in a new --workdir."
        ) from e
    # The same JSON encoding on both sides: tuples and lists compare equal.
    now = _flat(json.loads(config.to_json_best_effort()))
    changed = [
        f"  config.{k}: {saved[k]!r} in the checkpoints, {now[k]!r} now"
        for k in sorted(now.keys() & saved.keys())
        if not _may_change(k) and now[k] != saved[k]
    ]
    if changed:
        raise errors.ConfigChangedError(
            f"{workdir} holds checkpoints of a run with another config "
            f"({path}); resuming would change what was trained:\n"
            + "\n".join(changed)
            + "\nRerun with the saved values, or train in a new --workdir. "
            "Fields that may change on resume: docs/training.md 'Outputs, "
            "checkpoints and resume'."
        )
