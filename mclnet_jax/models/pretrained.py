"""ImageNet ResNet weights from (and to) torchvision-named `.safetensors`.

Copies a torchvision ResNet state dict into `mclnet.MCLNet` (both stems from
conv1/bn1) or `resnet.ResNet` variables and back, converting layouts (OIHW
<-> HWIO, [out, in] <-> [in, out]); a missing, unexpected or misshapen key
is a ValueError naming it. Files are read with `safetensors.numpy` (no
pickle). docs/checkpoints.md "ImageNet weights".
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.core
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

Variables = Mapping[str, Any]

MCLNET_STEMS = ("visible_stem", "infrared_stem")
RESNET_STEM = "stem"
DEFAULT_IGNORE_PREFIXES = ("fc.",)

# Flax leaf name -> torch parameter/buffer name, per collection.
LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_SUBMODULE_NAMES = {
    "downsample_conv": "downsample.0",
    "downsample_bn": "downsample.1",
}


def _model_kind(params: Mapping[str, Any]) -> str:
    if all(s in params for s in MCLNET_STEMS):
        return "mclnet"
    if RESNET_STEM in params:
        return "resnet"
    raise ValueError(
        f"Variables are neither an MCLNet (params {MCLNET_STEMS}) nor a "
        f"ResNet (params {RESNET_STEM!r}); got top-level params "
        f"{sorted(params)}. Pass model.init(...)'s variables."
    )


def torch_key(path: tuple[str, ...], kind: str) -> tuple[str, str] | None:
    """The torchvision key of a flattened variable path, and its stem.

    Args:
      path: (collection, *modules, leaf), as `flat_variables` gives it.
      kind: "mclnet" or "resnet".

    Returns:
      (torch key, stem name or "" for the shared stages), or None if the
      variable is not part of the torchvision backbone.
    """
    collection, *modules, leaf = path
    if (collection, leaf) not in LEAF_NAMES or not modules:
        return None
    torch_leaf = LEAF_NAMES[(collection, leaf)]
    top = modules[0]
    stem = ""
    if (kind == "mclnet" and top in MCLNET_STEMS) or (
        kind == "resnet" and top == RESNET_STEM
    ):
        stem = top
        parts = modules[1:]  # conv1 / bn1
    elif (
        top.startswith("layer")
        and len(modules) == 3
        and (modules[1].startswith("block"))
    ):
        parts = [
            top,
            modules[1][len("block") :],
            _SUBMODULE_NAMES.get(modules[2], modules[2]),
        ]
    elif top == "fc" and kind == "resnet" and len(modules) == 1:
        parts = ["fc"]
    else:  # non-local, heads
        return None
    return ".".join([*parts, torch_leaf]), stem


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    """HWIO kernels -> OIHW, [in, out] matrices -> [out, in]; else as is."""
    if value.ndim == 4:  # HWIO -> OIHW
        return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:  # [in, out] -> [out, in]
        return value.T
    return value


def from_torch_layout(value: np.ndarray) -> np.ndarray:
    """The inverse of `to_torch_layout`."""
    if value.ndim == 4:  # OIHW -> HWIO
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
        return value.T
    return value


def flat_variables(variables: Variables) -> dict[tuple[str, ...], Any]:
    """{(collection, *modules, leaf): array} of model variables."""
    if "params" not in variables:
        raise ValueError(
            f"variables must hold 'params' (and 'batch_stats'); got "
            f"collections {sorted(variables)}."
        )
    return traverse_util.flatten_dict(flax.core.unfreeze(variables))


def format_keys(keys: Sequence[str], limit: int = 20) -> str:
    """The sorted keys, comma-separated, at most `limit` of them shown."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return shown + more


def load_state_dict(
    variables: Variables,
    state_dict: Mapping[str, np.ndarray],
    *,
    ignore_prefixes: Sequence[str] = DEFAULT_IGNORE_PREFIXES,
) -> dict:
    """Copies a torchvision ResNet state dict into MCLNet or ResNet variables.

    Args:
      variables: {"params", "batch_stats", ...} of an `MCLNet` or `ResNet`
        (e.g. from `model.init`); the structure to fill. Not modified.
      state_dict: torchvision names -> numpy arrays in torch layout.
      ignore_prefixes: keys starting with these are skipped when the model has
        no variable for them (default: the ImageNet classifier "fc.").
        "*.num_batches_tracked" is always skipped.

    Returns:
      New variables (same structure and dtypes) with every backbone variable
      replaced; for an MCLNet both stems get conv1/bn1.

    Raises:
      ValueError: a backbone key is missing from `state_dict`, `state_dict`
        has a key the backbone lacks, or a shape differs; the message names
        the keys.
    """
    flat = flat_variables(variables)
    kind = _model_kind(variables["params"])
    expected: dict[str, list[tuple[str, ...]]] = {}
    for path in flat:
        mapped = torch_key(path, kind)
        if mapped is not None:
            expected.setdefault(mapped[0], []).append(path)

    given = {k for k in state_dict if not k.endswith(".num_batches_tracked")}
    missing = sorted(set(expected) - given)
    unexpected = sorted(
        k
        for k in given - set(expected)
        if not any(k.startswith(p) for p in ignore_prefixes)
    )
    if missing:
        raise ValueError(
            f"Checkpoint lacks {len(missing)} key(s) the {kind} backbone "
            f"needs: {format_keys(missing)}. Is it a torchvision ResNet of "
            f"the same depth?"
        )
    if unexpected:
        raise ValueError(
            f"Checkpoint has {len(unexpected)} key(s) the {kind} backbone "
            f"does not: {format_keys(unexpected)}. Check the depth, or pass "
            f"ignore_prefixes to skip them."
        )

    new_flat = dict(flat)
    for key, paths in expected.items():
        value = from_torch_layout(np.asarray(state_dict[key]))
        for path in paths:
            target = flat[path]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"Shape mismatch for checkpoint key {key!r}: file has "
                    f"{tuple(np.shape(state_dict[key]))}, the model needs "
                    f"{tuple(to_torch_layout(np.zeros(target.shape)).shape)}"
                    f" (torch layout). Check depth and width_multiplier."
                )
            new_flat[path] = jnp.asarray(value, dtype=target.dtype)
    return traverse_util.unflatten_dict(new_flat)


def state_dict(
    variables: Variables, *, stem: str | None = None
) -> dict[str, np.ndarray]:
    """The backbone of MCLNet or ResNet variables as a torchvision state dict.

    Args:
      variables: {"params", "batch_stats"} of an `MCLNet` or `ResNet`.
      stem: MCLNet only: which stem becomes conv1/bn1, "visible" (default)
        or "infrared".

    Returns:
      torchvision key -> float32 numpy array in torch layout (no
      num_batches_tracked; PyTorch's BatchNorm fills it in when loading).
    """
    flat = flat_variables(variables)
    kind = _model_kind(variables["params"])
    if kind == "mclnet":
        stem = "visible" if stem is None else stem
        if stem not in ("visible", "infrared"):
            raise ValueError(
                f"stem must be 'visible' or 'infrared', got {stem!r}."
            )
        chosen = f"{stem}_stem"
    else:
        if stem is not None:
            raise ValueError(
                f"stem={stem!r} only applies to MCLNet "
                f"variables; a ResNet has one stem."
            )
        chosen = RESNET_STEM
    out = {}
    for path, value in flat.items():
        mapped = torch_key(path, kind)
        if mapped is None or mapped[1] not in ("", chosen):
            continue
        out[mapped[0]] = np.ascontiguousarray(
            to_torch_layout(np.asarray(value, dtype=np.float32))
        )
    return out


def _read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"Pretrained weights file {path!r} not found; see "
            f"docs/checkpoints.md 'ImageNet weights' for making one from "
            "torchvision."
        )
    if not path.endswith(".safetensors"):
        raise ValueError(
            f"Pretrained weights must be a .safetensors file, got {path!r} "
            f"(pickled .pth files are not loaded; convert them once with "
            f"safetensors.torch.save_file)."
        )
    return safetensors_numpy.load_file(path)


def load_mclnet_backbone(
    variables: Variables,
    path: str | os.PathLike,
    *,
    ignore_prefixes: Sequence[str] = DEFAULT_IGNORE_PREFIXES,
) -> dict:
    """MCLNet variables with the backbone from a torchvision `.safetensors`.

    Both stems get conv1/bn1; layer1..layer4 get layerK.*; non-local blocks,
    BNNeck and classifier keep their values from `variables`. See
    `load_state_dict` for arguments and errors.
    """
    if _model_kind(variables["params"]) != "mclnet":
        raise ValueError(
            "load_mclnet_backbone needs MCLNet variables; use "
            "load_resnet for a plain ResNet."
        )
    return load_state_dict(
        variables, _read(path), ignore_prefixes=ignore_prefixes
    )


def export_mclnet_backbone(
    variables: Variables, path: str | os.PathLike, *, stem: str = "visible"
) -> None:
    """Writes the MCLNet backbone (one stem) as torchvision-named safetensors.

    Args:
      variables: MCLNet {"params", "batch_stats"}.
      path: output `.safetensors` file.
      stem: "visible" or "infrared": which stem becomes conv1/bn1.
    """
    if _model_kind(variables["params"]) != "mclnet":
        raise ValueError(
            "export_mclnet_backbone needs MCLNet variables; use "
            "export_resnet for a plain ResNet."
        )
    safetensors_numpy.save_file(
        state_dict(variables, stem=stem), os.fspath(path)
    )


def load_resnet(
    variables: Variables,
    path: str | os.PathLike,
    *,
    ignore_prefixes: Sequence[str] = DEFAULT_IGNORE_PREFIXES,
) -> dict:
    """Plain `ResNet` variables from a torchvision `.safetensors` file.

    fc.* is loaded when the model has an "fc" (num_classes given), else
    ignored. See `load_state_dict` for arguments and errors.
    """
    if _model_kind(variables["params"]) != "resnet":
        raise ValueError(
            "load_resnet needs plain ResNet variables; use "
            "load_mclnet_backbone for an MCLNet."
        )
    return load_state_dict(
        variables, _read(path), ignore_prefixes=ignore_prefixes
    )


def export_resnet(variables: Variables, path: str | os.PathLike) -> None:
    """Writes plain `ResNet` variables as torchvision-named safetensors."""
    if _model_kind(variables["params"]) != "resnet":
        raise ValueError(
            "export_resnet needs plain ResNet variables; use "
            "export_mclnet_backbone for an MCLNet."
        )
    safetensors_numpy.save_file(state_dict(variables), os.fspath(path))
