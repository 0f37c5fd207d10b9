r"""Converts a checkpoint of the authors' PyTorch release to `.safetensors`.

  python -m mclnet_jax.tools.convert_release --input=sysu_best.t \
      --output=sysu_release.safetensors

Writes the embed_net of a release `torch.save` file for
`models.release.load_embed_net`, its scalar entries (epoch, mAP, ...) as
metadata, and optionally the modality classifier. The one place a pickle is
read, with `torch.load(weights_only=True)`. Needs PyTorch; exit code 2 with
the reason on any error. docs/checkpoints.md "Converting a release checkpoint".
"""

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import app, flags, logging
from safetensors import numpy as safetensors_numpy

from mclnet_jax.models import release

_INPUT = flags.DEFINE_string(
    "input", None, "The release's checkpoint (.t / .pth, a torch.save file)."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "The embed_net as a .safetensors file."
)
_NET_KEY = flags.DEFINE_string(
    "net_key",
    "net",
    "Key of the embed_net state dict in the checkpoint; a checkpoint without "
    "it must be a bare state dict.",
)
_MCM_KEY = flags.DEFINE_string(
    "modality_classifier_key",
    None,
    "Key of the modality classifier's state dict in the checkpoint, if it "
    "has one (the release's own script does not save it).",
)
_MCM_OUTPUT = flags.DEFINE_string(
    "modality_classifier_output",
    None,
    "Where the modality classifier goes; default: OUTPUT with "
    ".modality_classifier.safetensors.",
)


class ConversionError(ValueError):
    """The input cannot be converted; the message says why and what to do."""


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            "Reading a release checkpoint needs PyTorch: pip install torch "
            "(the CPU build is enough). Nothing else in mclnet_jax needs it."
        ) from e
    return torch


def _numpy_globals() -> list[Any]:
    """numpy's array/scalar reconstructors, under old and new module names.

    Files written with numpy 1.x name `numpy.core.multiarray`, numpy 2.x
    `numpy._core.multiarray`; both resolve to the installed functions.
    """
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed = [np.ndarray, np.dtype]
    # numpy >= 1.25 rebuilds dtypes as instances of per-type classes; only
    # plain numeric ones (no object or structured dtypes) are allowed.
    allowed += sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdFD"}, key=str)
    for name in ("_reconstruct", "scalar"):
        fn = getattr(multiarray, name)
        allowed += [
            (fn, f"numpy.core.multiarray.{name}"),
            (fn, f"numpy._core.multiarray.{name}"),
        ]
    return allowed


def read_checkpoint(path: str) -> Any:
    """The object in a torch.save file, via torch's weights-only loader.

    Beyond tensors and containers only numpy arrays and scalars are rebuilt:
    the release stores its CMC curve and mAP as numpy values next to the
    weights.
    """
    torch = _import_torch()
    if not os.path.isfile(path):
        raise ConversionError(f"--input {path!r} does not exist.")
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe_globals is None:  # torch < 2.5: no allow-list context.
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch raises UnpicklingError, RuntimeError, ... depending on the
        # file; all mean the same for the user.
        raise ConversionError(
            f"torch.load(weights_only=True) cannot read {path!r}: {e}\n"
            f"Objects other than tensors, containers and numpy values are "
            f"refused on purpose (no arbitrary pickle is run). Re-save "
            f"the state dict alone from PyTorch: torch.save("
            f"checkpoint['net'], 'net.t')."
        ) from e


def _is_tensor(value: Any) -> bool:
    """A torch.Tensor (duck-typed: torch is imported lazily)."""
    return all(hasattr(value, a) for a in ("detach", "numpy", "numel"))


def _to_numpy(
    state_dict: Mapping[str, Any], what: str
) -> dict[str, np.ndarray]:
    """Tensors -> contiguous numpy (float16/bfloat16 widened to float32)."""
    out = {}
    for key, value in state_dict.items():
        if not _is_tensor(value):
            raise ConversionError(
                f"{what} entry {key!r} is a {type(value).__name__}, not a "
                f"tensor; is this a state dict?"
            )
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype.itemsize < 4:
            t = t.float()
        out[str(key)] = np.ascontiguousarray(t.numpy())
    keys = list(out)
    if keys and all(k.startswith("module.") for k in keys):
        logging.info("Stripping the 'module.' prefix of DataParallel.")
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _metadata(checkpoint: Mapping[str, Any], skip: set[str]) -> dict[str, str]:
    """Scalar entries (epoch, mAP, ...) as strings, for the file header."""
    meta = {}
    for key, value in checkpoint.items():
        if key in skip:
            continue
        if isinstance(value, (int, float, str, np.generic)) or (
            _is_tensor(value) and value.numel() == 1
        ):
            meta[str(key)] = str(
                value.item() if hasattr(value, "item") else value
            )
    return meta


def convert(
    input_path: str,
    output_path: str,
    *,
    net_key: str = "net",
    modality_classifier_key: str | None = None,
    modality_classifier_output: str | None = None,
) -> dict[str, Any]:
    """Reads a release checkpoint and writes its embed_net as safetensors.

    Args:
      input_path: a torch.save file: a dict holding the embed_net state dict
        under `net_key`, or the bare state dict.
      output_path: the `.safetensors` file to write.
      net_key: the key of the embed_net state dict.
      modality_classifier_key: if given, the key of the modality
        classifier's state dict, written to `modality_classifier_output`.
      modality_classifier_output: default `output_path` with
        `.modality_classifier.safetensors`.

    Returns:
      `release.describe_embed_net` of the converted state dict, plus
      "metadata" (scalar checkpoint entries) and "outputs" (written paths).

    Raises:
      ConversionError: torch missing, unreadable input, or a state dict
        whose keys are not the release's.
    """
    if not output_path.endswith(".safetensors"):
        raise ConversionError(
            f"--output must end in .safetensors, got {output_path!r}."
        )
    checkpoint = read_checkpoint(input_path)
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(
            f"{input_path!r} holds a {type(checkpoint).__name__}, not a "
            f"dict; expected {{'{net_key}': state_dict, ...}} or a state "
            f"dict."
        )
    if net_key in checkpoint and isinstance(checkpoint[net_key], Mapping):
        net, skip = checkpoint[net_key], {net_key}
    elif checkpoint and all(_is_tensor(v) for v in checkpoint.values()):
        net, skip = checkpoint, set(checkpoint)
    else:
        raise ConversionError(
            f"{input_path!r} has no state dict under {net_key!r} and is not "
            f"a bare state dict; its keys are {sorted(map(str, checkpoint))}"
            f". Pass --net_key=KEY for the embed_net's state dict."
        )
    state = _to_numpy(net, "embed_net")
    try:
        info = release.describe_embed_net(state)
    except ValueError as e:
        raise ConversionError(f"{input_path!r}: {e}") from e

    mcm_state = None
    if modality_classifier_key:
        mcm = checkpoint.get(modality_classifier_key)
        if not isinstance(mcm, Mapping):
            raise ConversionError(
                f"--modality_classifier_key={modality_classifier_key!r} is "
                f"not a state dict in {input_path!r}; its keys are "
                f"{sorted(map(str, checkpoint))}."
            )
        mcm_state = _to_numpy(mcm, "modality classifier")
        try:
            release.check_modality_classifier_keys(mcm_state)
        except ValueError as e:
            raise ConversionError(f"{input_path!r}: {e}") from e
        skip.add(modality_classifier_key)

    metadata = _metadata(checkpoint, skip)
    metadata["source"] = os.path.basename(input_path)
    safetensors_numpy.save_file(
        state, output_path, metadata={**metadata, "format": "release_embed_net"}
    )
    outputs = [output_path]
    if mcm_state is not None:
        mcm_path = modality_classifier_output or (
            output_path[: -len(".safetensors")]
            + ".modality_classifier.safetensors"
        )
        safetensors_numpy.save_file(
            mcm_state,
            mcm_path,
            metadata={**metadata, "format": "release_modality_classifier"},
        )
        outputs.append(mcm_path)
    return {**info, "metadata": metadata, "outputs": outputs}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        info = convert(
            os.path.expanduser(_INPUT.value),
            os.path.expanduser(_OUTPUT.value),
            net_key=_NET_KEY.value,
            modality_classifier_key=_MCM_KEY.value,
            modality_classifier_output=_MCM_OUTPUT.value,
        )
    except ConversionError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 2
    counts = ",".join(str(c) for c in info["non_local_counts"])
    logging.info(
        "Wrote %s (%s). The embed_net is ResNet-%d, width x%g, non-local "
        "blocks (%s) of width %s, %d-d features, %d identities: evaluate "
        "with --mode=evaluate --config.init.release_checkpoint=%s and "
        "--config.model.depth=%d --config.model.non_local_counts='(%s)' "
        "if your config differs.",
        ", ".join(info["outputs"]),
        info["metadata"],
        info["depth"],
        info["width_multiplier"],
        counts,
        info["non_local_inter"],
        info["feature_dim"],
        info["num_classes"],
        info["outputs"][0],
        info["depth"],
        counts,
    )
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["input", "output"])
    app.run(main)
