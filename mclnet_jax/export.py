r"""Exports a trained network for serving: jax.export and TensorFlow SavedModel.

  python -m mclnet_jax.main --workdir=$HOME/runs/sysu --mode=export \
      [--checkpoint=best]

writes the evaluation-mode network with its weights into WORKDIR/export/:
one `jax.export` artifact per stem (f32[b, H, W, 3] -> {"bn", "pool"}, batch
b symbolic), a SavedModel (jax2tf) with signatures "visible", "infrared" and
"serving_default" (images + per-row modality), and export.json (input shape
and preprocessing, outputs, versions). Inputs are preprocessed as the
evaluator does; outputs are raw features, NOT L2-normalised. See
docs/export.md "Export for serving".

jax2tf only does native serialization: the SavedModel wraps the same
StableHLO in an XlaCallModule op, so the serving TensorFlow must support the
calling convention version recorded in export.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from data_pipeline import image_ops
from data_pipeline.constants import INFRARED, VISIBLE
from data_pipeline.tf_setup import tf
from mclnet_jax import embed

EXPORT_DIR = "export"
SAVED_MODEL_DIR = "saved_model"
METADATA_FILE = "export.json"
OUTPUTS = ("pool", "bn")
DEFAULT_PLATFORMS = ("cpu", "cuda")
FORMAT_VERSION = 1


def jax_export_file(modality: str) -> str:
    """File name of one stem's jax.export artifact: "visible.jax_export"."""
    embed.modality_index(modality)
    return f"{modality}.jax_export"


def make_forward(
    model, variables: Mapping[str, Any] | None, modality: str
) -> Callable[..., dict[str, jax.Array]]:
    """`f(images [b, H, W, 3]) -> {"pool", "bn"}` of one stem, eval mode.

    If `variables` is None, `f(variables, images)` takes them as an argument
    instead of closing over them.
    """
    mod = embed.modality_index(modality)

    def forward(variables, images):
        visible, infrared = (images, None) if mod == VISIBLE else (None, images)
        out = model.apply(variables, visible, infrared, train=False)
        return {name: out[name] for name in OUTPUTS}

    if variables is None:
        return forward
    return lambda images: forward(variables, images)


def export_jax(
    loaded: embed.LoadedModel,
    *,
    modality: str,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> jax.export.Exported:
    """One stem as a `jax.export.Exported` with a symbolic batch dimension.

    The weights are embedded as constants, so the artifact is self-contained.
    """
    h, w = loaded.image_size
    spec = jax.ShapeDtypeStruct(
        jax.export.symbolic_shape(f"b, {h}, {w}, 3"), jnp.float32
    )
    forward = make_forward(loaded.model, loaded.variables, modality)
    return jax.export.export(jax.jit(forward), platforms=tuple(platforms))(spec)


def save_saved_model(
    loaded: embed.LoadedModel,
    directory: str,
    *,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> None:
    """Writes the TensorFlow SavedModel (see the module docstring)."""
    # Imported here: only the SavedModel needs jax2tf.
    from jax.experimental import jax2tf

    h, w = loaded.image_size
    d = loaded.feature_dim
    module = tf.Module()
    # Variables, not graph constants: the weights go to variables/ and the
    # graph stays small (GraphDefs are limited to 2 GB).
    module.variables_tree = jax.tree.map(
        lambda v: tf.Variable(np.asarray(v), trainable=False),
        dict(loaded.variables),
    )
    converted = {
        modality: jax2tf.convert(
            make_forward(loaded.model, None, modality),
            polymorphic_shapes=[None, "(b, ...)"],
            with_gradient=False,
            native_serialization_platforms=tuple(platforms),
        )
        for modality in embed.MODALITIES
    }
    images_spec = tf.TensorSpec([None, h, w, 3], tf.float32, name="images")

    def stem_function(modality):
        @tf.function(input_signature=[images_spec], autograph=False)
        def run(images):
            return converted[modality](module.variables_tree, images)

        return run

    module.visible = stem_function("visible")
    module.infrared = stem_function("infrared")

    @tf.function(
        input_signature=[
            images_spec,
            tf.TensorSpec([None], tf.int32, name="modality"),
        ],
        autograph=False,
    )
    def serve(images, modality):
        n = tf.shape(images)[0]
        checks = [
            tf.debugging.assert_equal(
                tf.shape(modality)[0],
                n,
                message="modality needs one entry per image",
            ),
            tf.debugging.assert_equal(
                tf.reduce_all((modality == VISIBLE) | (modality == INFRARED)),
                True,
                message=(
                    f"modality must be {VISIBLE} (visible) or {INFRARED} "
                    "(infrared)"
                ),
            ),
        ]
        with tf.control_dependencies(checks):
            out = {name: tf.zeros([n, d], tf.float32) for name in OUTPUTS}
        for code, run in (
            (VISIBLE, module.visible),
            (INFRARED, module.infrared),
        ):
            rows = tf.where(tf.equal(modality, code))[:, 0]
            # The exported batch dimension is >= 1: skip an absent modality.
            part = tf.cond(
                tf.size(rows) > 0,
                lambda run=run, rows=rows: run(tf.gather(images, rows)),
                lambda: {
                    name: tf.zeros([0, d], tf.float32) for name in OUTPUTS
                },
            )
            out = {
                name: tf.tensor_scatter_nd_update(
                    out[name], rows[:, None], part[name]
                )
                for name in OUTPUTS
            }
        return out

    module.serve = serve
    # Saving logs hundreds of INFO lines, through absl and TF's own logger.
    verbosity = logging.get_verbosity()
    tf_level = tf.get_logger().level
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("WARNING")
    try:
        tf.saved_model.save(
            module,
            directory,
            signatures={
                "serving_default": serve,
                "visible": module.visible,
                "infrared": module.infrared,
            },
        )
    finally:
        logging.set_verbosity(verbosity)
        tf.get_logger().setLevel(tf_level)


def metadata(
    loaded: embed.LoadedModel,
    *,
    platforms: Sequence[str],
    calling_convention_version: int,
) -> dict[str, Any]:
    """The content of export.json."""
    h, w = loaded.image_size
    d = loaded.feature_dim
    feature = {"shape": [None, d], "dtype": "float32"}
    return {
        "format_version": FORMAT_VERSION,
        "checkpoint": loaded.checkpoint,
        "step": loaded.step,
        "model": {
            "feature_dim": d,
            "num_classes": loaded.num_classes,
            **loaded.config.model.to_dict(),
        },
        "input": {
            "name": "images",
            "shape": [None, h, w, 3],
            "dtype": "float32",
            "layout": "NHWC, RGB channel order",
            "preprocessing": [
                "decode to RGB uint8",
                f"resize to {h}x{w} (height x width), bilinear with "
                "antialiasing, rounded to uint8 (tf.image.resize(..., "
                "antialias=True))",
                "divide by 255",
                "subtract mean, divide by std (per channel)",
            ],
            "mean": list(image_ops.IMAGENET_MEAN),
            "std": list(image_ops.IMAGENET_STD),
        },
        "modalities": {m: i for i, m in enumerate(embed.MODALITIES)},
        "outputs": {
            "pool": {
                **feature,
                "description": "pooled backbone feature (GeM or average)",
            },
            "bn": {
                **feature,
                "description": "BNNeck feature (the one the paper reports)",
            },
        },
        "l2_normalized": False,
        "jax_export": {
            "files": {m: jax_export_file(m) for m in embed.MODALITIES},
            "platforms": list(platforms),
            "calling_convention_version": calling_convention_version,
            "jax_version": jax.__version__,
        },
        "saved_model": {
            "directory": SAVED_MODEL_DIR,
            "signatures": {
                "visible": {"inputs": ["images"], "outputs": list(OUTPUTS)},
                "infrared": {"inputs": ["images"], "outputs": list(OUTPUTS)},
                "serving_default": {
                    "inputs": ["images", "modality"],
                    "outputs": list(OUTPUTS),
                },
            },
            "tensorflow_version": tf.__version__,
        },
    }


def _model_config(config: ml_collections.ConfigDict) -> Any:
    """What shapes the network, JSON-normalised (tuples -> lists)."""
    return json.loads(
        json.dumps(
            {
                "model": config.model.to_dict(),
                "image_size": list(config.data.image_size),
            },
            default=str,
        )
    )


def replace_directory(source: str, target: str) -> None:
    """Moves the folder `source` to `target`, replacing what was there.

    Renames only (same file system): `target` is never a half-written mix
    of old and new files.
    """
    if not os.path.exists(target):
        os.replace(source, target)
        return
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


def export_workdir(
    config: ml_collections.ConfigDict | None,
    workdir: str,
    *,
    which: str = "latest",
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict[str, Any]:
    """`--mode=export`: writes WORKDIR/export/, replaced only when complete.

    Args:
      config: the command line's config; used only when WORKDIR/config.json
        (the config of the training run) is missing.
      workdir: a training workdir.
      which: "latest" or "best" checkpoint.
      platforms: what the StableHLO is lowered for ("cpu", "cuda", "rocm",
        "tpu").

    Returns:
      The export.json content.

    Raises:
      FileNotFoundError: no such checkpoint.
    """
    workdir = os.path.expanduser(workdir)
    try:
        saved_config = embed.read_workdir_config(workdir)
    except FileNotFoundError:
        if config is None:
            raise
        logging.warning(
            "%s has no %s; building the model from the given config.",
            workdir,
            embed.CONFIG_FILE,
        )
        saved_config = config
    if config is not None and _model_config(config) != _model_config(
        saved_config
    ):
        logging.warning(
            "--config's model or image size differs from %s, the config "
            "the checkpoint was trained with: exporting with the latter "
            "(--config is only used for a workdir without config.json).",
            os.path.join(workdir, embed.CONFIG_FILE),
        )
    loaded = embed.load_model(workdir, checkpoint=which, config=saved_config)

    final = os.path.join(workdir, EXPORT_DIR)
    staging = tempfile.mkdtemp(dir=workdir, prefix=f".{EXPORT_DIR}.")
    try:
        version = None
        for modality in embed.MODALITIES:
            exported = export_jax(
                loaded, modality=modality, platforms=platforms
            )
            version = exported.calling_convention_version
            with open(
                os.path.join(staging, jax_export_file(modality)), "wb"
            ) as f:
                f.write(exported.serialize())
        save_saved_model(
            loaded, os.path.join(staging, SAVED_MODEL_DIR), platforms=platforms
        )
        info = metadata(
            loaded, platforms=platforms, calling_convention_version=version
        )
        with open(
            os.path.join(staging, METADATA_FILE), "w", encoding="utf-8"
        ) as f:
            json.dump(info, f, indent=2)
        os.chmod(staging, 0o755)  # mkdtemp makes it private.
        replace_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info(
        "Exported the %s checkpoint (step %d) to %s: %s, %s/ and %s.",
        which,
        loaded.step,
        final,
        ", ".join(jax_export_file(m) for m in embed.MODALITIES),
        SAVED_MODEL_DIR,
        METADATA_FILE,
    )
    return info


def load_jax_export(workdir: str, modality: str) -> jax.export.Exported:
    """Reads WORKDIR/export/<modality>.jax_export back (`.call(images)`)."""
    path = os.path.join(
        os.path.expanduser(workdir), EXPORT_DIR, jax_export_file(modality)
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found; run python -m mclnet_jax.main --mode=export "
            "--workdir=... first."
        )
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))
