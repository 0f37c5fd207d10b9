"""The names of the authors' release state dicts, and ours for each.

Private to `release`: the key of each MCLNet / modality classifier variable
in the release's state dicts, the keys an `embed_net` can hold, and the
copies the release stores but never uses (ignored on loading).
"""

import re
from collections.abc import Iterable

from mclnet_jax.models import pretrained

BNNECK_BIAS = "bottleneck.bias"

STEM_PREFIXES = {
    "visible_stem": "visible_module.visible.",
    "infrared_stem": "thermal_module.thermal.",
}
BASE_PREFIX = "base_resnet.base."
_NON_LOCAL_PARTS = {
    "g": "g.0",
    "theta": "theta",
    "phi": "phi",
    "W": "W.0",
    "W_bn": "W.1",
}
_MCM_LAYERS = {"fc1": "map1", "fc2": "map3", "bn": "bn"}
_BN_LEAVES = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_STEMS = r"(visible_module\.visible|thermal_module\.thermal)"

# Stored by the release but never used by its forward pass.
EMBED_IGNORED = re.compile(
    rf"^{_STEMS}\.(layer[1-4]|fc)\."
    r"|^base_resnet\.base\.(conv1|bn1|fc)\."
    r"|\.num_batches_tracked$"
)
MCM_IGNORED = re.compile(r"^map2\.|\.num_batches_tracked$")
# Every key a modality classifier state dict must hold.
MCM_REQUIRED = frozenset(
    [f"{m}.{leaf}" for m in ("map1", "map3") for leaf in ("weight", "bias")]
    + [
        f"bn.{leaf}"
        for leaf in ("weight", "bias", "running_mean", "running_var")
    ]
)

# Every key an embed_net state dict can hold (for checks without a model).
EMBED_KNOWN = re.compile(
    rf"^{_STEMS}\.(conv1\.weight|bn1\.{_BN_LEAVES})$"
    r"|^base_resnet\.base\.layer[1-4]\.\d+\.(conv[1-3]\.weight"
    rf"|bn[1-3]\.{_BN_LEAVES}|downsample\.0\.weight"
    rf"|downsample\.1\.{_BN_LEAVES})$"
    r"|^NL_[1-4]\.\d+\.(g\.0|theta|phi|W\.0)\.(weight|bias)$"
    rf"|^NL_[1-4]\.\d+\.W\.1\.{_BN_LEAVES}$"
    rf"|^bottleneck\.{_BN_LEAVES}$|^classifier\.weight$"
)
EMBED_REQUIRED = (
    "visible_module.visible.conv1.weight",
    "thermal_module.thermal.conv1.weight",
    *(f"base_resnet.base.layer{k}.0.conv1.weight" for k in range(1, 5)),
    "bottleneck.weight",
    BNNECK_BIAS,
    "classifier.weight",
)


def _leaf(collection: str, leaf: str) -> str | None:
    return pretrained.LEAF_NAMES.get((collection, leaf))


def _unmapped(path: tuple[str, ...], what: str) -> ValueError:
    return ValueError(
        f"{what} variable {'/'.join(path)!r} has no counterpart in the "
        f"release's state dict; pass variables of the model as built by "
        f"mclnet_jax (model.init(...))."
    )


def embed_key(path: tuple[str, ...]) -> str:
    """The release key of one flattened MCLNet variable path.

    The release's `NL_k.i` follows the i-th of the last `len(NL_k)` blocks
    of stage k: our `layer{k}/non_local{i}`.
    """
    mapped = pretrained.torch_key(path, "mclnet")
    if mapped is not None:
        key, stem = mapped
        return (STEM_PREFIXES[stem] if stem else BASE_PREFIX) + key
    collection, *modules, leaf = path
    torch_leaf = _leaf(collection, leaf)
    if torch_leaf is not None:
        if (
            len(modules) == 3
            and re.fullmatch(r"layer[1-4]", modules[0])
            and re.fullmatch(r"non_local\d+", modules[1])
            and modules[2] in _NON_LOCAL_PARTS
        ):
            stage = modules[0][len("layer") :]
            index = modules[1][len("non_local") :]
            return (
                f"NL_{stage}.{index}.{_NON_LOCAL_PARTS[modules[2]]}."
                f"{torch_leaf}"
            )
        if modules == ["bnneck"] and leaf != "bias":
            return f"bottleneck.{torch_leaf}"
        if modules == ["classifier"] and leaf == "kernel":
            return "classifier.weight"
    raise _unmapped(path, "MCLNet")


def mcm_key(path: tuple[str, ...]) -> str:
    """The release key of one flattened modality-classifier variable path."""
    collection, *modules, leaf = path
    torch_leaf = _leaf(collection, leaf)
    if (
        torch_leaf is None
        or len(modules) != 1
        or (modules[0] not in _MCM_LAYERS)
    ):
        raise _unmapped(path, "Modality classifier")
    return f"{_MCM_LAYERS[modules[0]]}.{torch_leaf}"


def check_keys(
    given: Iterable[str],
    expected: Iterable[str],
    *,
    ignored: re.Pattern,
    what: str,
    hint: str,
) -> None:
    """Raises ValueError naming missing and unknown (not ignored) keys."""
    given, expected = set(given), set(expected)
    missing = sorted(expected - given)
    unknown = sorted(k for k in given - expected if not ignored.search(k))
    problems = []
    if missing:
        problems.append(
            f"lacks {len(missing)} key(s) the model needs: "
            f"{pretrained.format_keys(missing)}"
        )
    if unknown:
        problems.append(
            f"has {len(unknown)} key(s) the model does not: "
            f"{pretrained.format_keys(unknown)}"
        )
    if problems:
        raise ValueError(
            f"The {what} state dict " + "; it ".join(problems) + f". {hint}"
        )
