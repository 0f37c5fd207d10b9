"""Checkpoints of the authors' PyTorch release <-> MCLNet variables.

Reads and writes the release's `embed_net` and modality classifier
(`Discriminator_ModalityClassifier`) state dicts as `.safetensors` files in
torch layout under the release's names, checks their keys and reads the
model settings from them. Name table, ignored keys and how exports fill the
release's unused copies: docs/checkpoints.md, "Checkpoints of the authors'
release".
"""

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

from mclnet_jax.models import _release_names as names
from mclnet_jax.models import pretrained, resnet

Variables = Mapping[str, Any]
Source = str | os.PathLike | Mapping[str, Any]

# The torchvision ResNet's ImageNet head, stored (unused) in every copy.
IMAGENET_CLASSES = 1000
BNNECK_BIAS = names.BNNECK_BIAS
CONVERTER = "python -m mclnet_jax.tools.convert_release"


# -------------------------------------------------------------- reading --


def read(source: Source) -> dict[str, np.ndarray]:
    """A state dict from a `.safetensors` path or a mapping name -> array.

    Raises:
      FileNotFoundError: the path does not exist.
      ValueError: the path is not a `.safetensors` file (e.g. the release's
        pickled `.t`: convert it first).
      TypeError: `source` is neither a path nor a mapping.
    """
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a .safetensors path or a dict name -> array, "
            f"got {type(source).__name__}."
        )
    path = os.fspath(source)
    if not path.endswith(".safetensors"):
        raise ValueError(
            f"Release checkpoint {path!r} is not a .safetensors file. "
            f"Pickled checkpoints (.t, .pth) are not read here; convert "
            f"once with: {CONVERTER} --input={path} "
            f"--output=OUT.safetensors"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Release checkpoint {path!r} not found. Make it from the "
            f"release's .t file with: {CONVERTER} --input=X.t "
            f"--output={path}"
        )
    return safetensors_numpy.load_file(path)


def _load(
    variables: Variables,
    source: Source,
    *,
    key_of: Callable[[tuple[str, ...]], str],
    ignored: re.Pattern,
    extra: Mapping[str, tuple[int, ...]],
    what: str,
    hint: str,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Fills `variables` from `source`; returns (variables, state dict)."""
    flat = pretrained.flat_variables(variables)
    keys = {path: key_of(path) for path in flat}
    state_dict = read(source)
    names.check_keys(
        state_dict,
        [*keys.values(), *extra],
        ignored=ignored,
        what=what,
        hint=hint,
    )
    new_flat, wrong = {}, []
    for path, key in keys.items():
        target = flat[path]
        value = pretrained.from_torch_layout(np.asarray(state_dict[key]))
        if tuple(value.shape) != tuple(target.shape):
            torch_shape = pretrained.to_torch_layout(
                np.zeros(target.shape, np.int8)
            ).shape
            wrong.append(
                f"{key}: file {tuple(np.shape(state_dict[key]))}, "
                f"model {tuple(torch_shape)}"
            )
            continue
        new_flat[path] = jnp.asarray(value, dtype=target.dtype)
    for key, shape in extra.items():
        if tuple(np.shape(state_dict[key])) != shape:
            wrong.append(
                f"{key}: file {tuple(np.shape(state_dict[key]))}, model {shape}"
            )
    if wrong:
        raise ValueError(
            f"Shape mismatch in the {what} state dict (torch layout) for "
            f"{len(wrong)} key(s): {'; '.join(sorted(wrong)[:20])}. {hint}"
        )
    return traverse_util.unflatten_dict(new_flat), state_dict


# ------------------------------------------------------------ embed net --

_EMBED_HINT = (
    "Set config.model.depth, width_multiplier, non_local_counts and "
    "non_local_inter to the release model's (release.describe_embed_net "
    "reads them from the state dict), and use the dataset it was trained on "
    "(the classifier's identities)."
)


def load_embed_net(variables: Variables, source: Source) -> dict:
    """MCLNet variables filled from a release `embed_net` state dict.

    Args:
      variables: {"params", "batch_stats"} of an `mclnet.MCLNet` (e.g. from
        `model.init`, or its `jax.eval_shape`): the structure, shapes and
        dtypes to fill. Not modified.
      source: a `.safetensors` path or a dict name -> numpy array, torch
        layout, release names.

    Returns:
      New variables, same structure and dtypes, every leaf from `source`.

    Raises:
      ValueError: a key is missing, unknown (other than the release's unused
        copies), has the wrong shape, or `bottleneck.bias` is not all zeros
        (the release freezes it at 0); the message names the keys.
    """
    d = tuple(variables["params"]["bnneck"]["scale"].shape)
    loaded, state_dict = _load(
        variables,
        source,
        key_of=names.embed_key,
        ignored=names.EMBED_IGNORED,
        extra={BNNECK_BIAS: d},
        what="embed_net",
        hint=_EMBED_HINT,
    )
    bias = np.asarray(state_dict[BNNECK_BIAS])
    if np.any(bias != 0):
        raise ValueError(
            f"{BNNECK_BIAS!r} must be all zeros (the release freezes the "
            f"BNNeck shift at 0 and MCLNet has no shift parameter); got "
            f"max |bias| = {float(np.max(np.abs(bias))):.3g}. This "
            f"checkpoint was not trained with the release's BNNeck."
        )
    return loaded


def _torch_array(value: Any) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype not in (np.float32, np.float64):
        value = value.astype(np.float32)
    # A copy: the caller may hand it to torch.from_numpy, which must not
    # share (read-only) memory with JAX's buffers.
    return np.array(pretrained.to_torch_layout(value), order="C", copy=True)


def _add_num_batches_tracked(state: dict[str, np.ndarray]) -> None:
    for key in list(state):
        if key.endswith(".running_mean"):
            prefix = key[: -len("running_mean")]
            state[prefix + "num_batches_tracked"] = np.zeros((), np.int64)


def embed_net_state_dict(variables: Variables) -> dict[str, np.ndarray]:
    """MCLNet variables as a complete release `embed_net` state dict.

    Args:
      variables: {"params", "batch_stats"} of an `mclnet.MCLNet`.

    Returns:
      Release key -> numpy array in torch layout and the variables' dtype
      (float32 or float64; `num_batches_tracked` int64 0). The release's
      unused copies are filled (each stem's layer1..4 with the shared
      layers, the base's conv1/bn1 with the visible stem, every ImageNet
      `fc` with zeros), so its module loads it with `strict=True`.
    """
    flat = pretrained.flat_variables(variables)
    state = {names.embed_key(path): _torch_array(v) for path, v in flat.items()}
    scale = state["bottleneck.weight"]
    state[BNNECK_BIAS] = np.zeros_like(scale)
    base, stems = names.BASE_PREFIX, names.STEM_PREFIXES
    for key in list(state):
        # Unused copies: shared layers into each stem's copy, the visible
        # stem into the base's conv1/bn1.
        if key.startswith(base):
            for prefix in stems.values():
                state[prefix + key[len(base) :]] = state[key].copy()
        elif key.startswith(stems["visible_stem"]):
            rest = key[len(stems["visible_stem"]) :]
            state[base + rest] = state[key].copy()
    for prefix in (*stems.values(), base):
        state[prefix + "fc.weight"] = np.zeros(
            (IMAGENET_CLASSES, scale.shape[0]), scale.dtype
        )
        state[prefix + "fc.bias"] = np.zeros((IMAGENET_CLASSES,), scale.dtype)
    _add_num_batches_tracked(state)
    return state


def export_embed_net(variables: Variables, path: str | os.PathLike) -> None:
    """Writes `embed_net_state_dict(variables)` to a `.safetensors` file."""
    safetensors_numpy.save_file(
        embed_net_state_dict(variables), os.fspath(path)
    )


# ------------------------------------------------- modality classifier --

_MCM_HINT = (
    "Pass the state dict of the release's "
    "Discriminator_ModalityClassifier (map1, map2, map3, bn) for a "
    "feature dimension equal to the model's."
)


def load_modality_classifier(mcm_variables: Variables, source: Source) -> dict:
    """`mclnet.ModalityClassifier` variables from a release state dict.

    Args:
      mcm_variables: {"params", "batch_stats"} of a `ModalityClassifier`
        (arrays or `jax.ShapeDtypeStruct`s).
      source: a `.safetensors` path or a dict name -> numpy array with the
        release's `Discriminator_ModalityClassifier` names.

    Returns:
      New variables, same structure and dtypes.

    Raises:
      ValueError: missing, unknown (other than `map2.*` and
        `num_batches_tracked`) or wrongly shaped keys, named.
    """
    loaded, _ = _load(
        mcm_variables,
        source,
        key_of=names.mcm_key,
        ignored=names.MCM_IGNORED,
        extra={},
        what="modality classifier",
        hint=_MCM_HINT,
    )
    return loaded


def modality_classifier_state_dict(
    mcm_variables: Variables,
) -> dict[str, np.ndarray]:
    """ModalityClassifier variables as a complete release state dict.

    `map2` (unused by the release) is written as the identity with zero
    bias, `bn.num_batches_tracked` as 0, so `strict=True` loading works.
    """
    flat = pretrained.flat_variables(mcm_variables)
    state = {names.mcm_key(path): _torch_array(v) for path, v in flat.items()}
    hidden = state["map1.bias"].shape[0]
    dtype = state["map1.bias"].dtype
    state["map2.weight"] = np.eye(hidden, dtype=dtype)
    state["map2.bias"] = np.zeros((hidden,), dtype)
    _add_num_batches_tracked(state)
    return state


def export_modality_classifier(
    mcm_variables: Variables, path: str | os.PathLike
) -> None:
    """Writes `modality_classifier_state_dict` to a `.safetensors` file."""
    safetensors_numpy.save_file(
        modality_classifier_state_dict(mcm_variables), os.fspath(path)
    )


# ------------------------------------------- checks without a model --


def check_embed_net_keys(keys: Iterable[str]) -> None:
    """Raises ValueError unless `keys` look like a release embed_net's.

    Every key must be one the release's embed_net can hold, and the stems,
    the four stages, the BNNeck and the classifier must be present. Shapes
    and counts are checked later, against a model, by `load_embed_net`.
    """
    keys = set(keys)
    unknown = sorted(
        k
        for k in keys
        if not names.EMBED_KNOWN.search(k) and not names.EMBED_IGNORED.search(k)
    )
    missing = sorted(set(names.EMBED_REQUIRED) - keys)
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown key(s) {pretrained.format_keys(unknown)}")
        if missing:
            problems.append(f"missing key(s) {pretrained.format_keys(missing)}")
        raise ValueError(
            "This does not look like the release's embed_net state dict: "
            + "; ".join(problems)
            + ". Expected names such as visible_module.visible.conv1.weight"
            ", base_resnet.base.layer1.0.conv1.weight, NL_2.0.theta.weight"
            ", bottleneck.weight and classifier.weight."
        )


def check_modality_classifier_keys(keys: Iterable[str]) -> None:
    """Raises ValueError unless `keys` are a release modality classifier's."""
    keys = set(keys)
    required = names.MCM_REQUIRED
    unknown = sorted(
        k for k in keys - required if not names.MCM_IGNORED.search(k)
    )
    missing = sorted(required - keys)
    if unknown or missing:
        raise ValueError(
            "This does not look like the release's "
            "Discriminator_ModalityClassifier state dict (map1, map2, map3, "
            f"bn): unknown key(s) [{pretrained.format_keys(unknown)}], "
            f"missing key(s) [{pretrained.format_keys(missing)}]."
        )


def describe_embed_net(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The model settings a release embed_net state dict was made with.

    Args:
      state_dict: release key -> array (torch layout).

    Returns:
      {"depth", "width_multiplier", "non_local_counts", "non_local_inter",
      "feature_dim", "num_classes"}, the `config.model` values (and the
      number of training identities) that `load_embed_net` needs. The width
      multiplier is the stem's width / 64; "non_local_inter" is None when
      there are no non-local blocks.

    Raises:
      ValueError: the keys do not look like an embed_net (see
        `check_embed_net_keys`) or the stage depths match no ResNet.
    """
    check_embed_net_keys(state_dict)
    blocks = []
    for k in range(1, 5):
        pattern = re.compile(rf"^base_resnet\.base\.layer{k}\.(\d+)\.")
        indices = {int(m.group(1)) for m in map(pattern.match, state_dict) if m}
        blocks.append(max(indices) + 1)
    bottleneck = any(
        k.startswith("base_resnet.base.layer1.0.conv3.") for k in state_dict
    )
    depths = [
        d
        for d, b in resnet.BLOCKS_PER_STAGE.items()
        if b == tuple(blocks) and (d >= 50) == bottleneck
    ]
    if not depths:
        raise ValueError(
            f"The embed_net's stages have {tuple(blocks)} "
            f"{'bottleneck' if bottleneck else 'basic'} blocks, which is no "
            f"ResNet depth of {sorted(resnet.BLOCKS_PER_STAGE)}."
        )
    counts = []
    for k in range(1, 5):
        pattern = re.compile(rf"^NL_{k}\.(\d+)\.")
        counts.append(
            len({m.group(1) for m in map(pattern.match, state_dict) if m})
        )
    theta = [
        np.shape(v)
        for k, v in state_dict.items()
        if re.match(r"^NL_[1-4]\.\d+\.theta\.weight$", k)
    ]
    classifier = np.shape(state_dict["classifier.weight"])
    stem = np.shape(state_dict["visible_module.visible.conv1.weight"])
    return {
        "depth": depths[0],
        "width_multiplier": stem[0] / resnet.STEM_WIDTH,
        "non_local_counts": tuple(counts),
        "non_local_inter": theta[0][0] if theta else None,
        "feature_dim": classifier[1],
        "num_classes": classifier[0],
    }
