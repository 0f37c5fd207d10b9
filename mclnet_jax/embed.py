r"""Features of your own images from a trained workdir (command line, notebook).

  python -m mclnet_jax.embed --workdir=$HOME/runs/sysu --checkpoint=best \
      --modality=infrared --images='photos/*.jpg' --out=features.npz

writes "pool" and "bn" ([N, D] float32, raw: NOT L2-normalised),
"file_names", "modality", "checkpoint" and "step". The images go through the
evaluator's preprocessing; the model is rebuilt from WORKDIR/config.json and
the checkpoint alone (no dataset). Exit code 2: no image, or one that cannot
be decoded (nothing is written); 3: no such checkpoint. See
docs/export.md "Features for your own images".
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from data_pipeline import image_files
from data_pipeline.constants import INFRARED, MODALITY_NAMES, VISIBLE
from data_pipeline.tf_setup import tf
from mclnet_jax import checkpointing, console, errors, sharding, train_step
from mclnet_jax import workdir as workdir_lib
from mclnet_jax.evaluators import features as features_lib

# Names by modality id: MODALITIES[VISIBLE] == "visible".
MODALITIES = tuple(MODALITY_NAMES[m] for m in (VISIBLE, INFRARED))
CONFIG_FILE = workdir_lib.CONFIG_FILE


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained network ready to embed images (see `load_model`).

    Attributes:
      model: the `MCLNet` module.
      variables: {"params", "batch_stats"} numpy arrays.
      config: the run's config (from WORKDIR/config.json).
      step: the checkpoint's training step.
      checkpoint: "latest" or "best".
      workdir: where it came from.
    """

    model: Any
    variables: Mapping[str, Any]
    config: ml_collections.ConfigDict
    step: int
    checkpoint: str
    workdir: str

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the images are resized to."""
        return tuple(int(v) for v in self.config.data.image_size)

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    @property
    def num_classes(self) -> int:
        return self.model.num_classes


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: it is written by training (python -m "
            "mclnet_jax.main --mode=train --workdir=...). Pass the workdir of "
            "a training run, or the run's config explicitly (load_model(..., "
            "config=...))."
        )
    with open(path, encoding="utf-8") as f:
        try:
            return ml_collections.ConfigDict(json.load(f))
        except ValueError as e:  # Not JSON, or not even text.
            raise errors.ConfigurationError(
                f"{path} is not valid JSON: {e}. Restore it: it is the "
                "config the workdir's checkpoints were trained with."
            ) from e


def load_model(
    workdir: str,
    *,
    checkpoint: str = "latest",
    config: ml_collections.ConfigDict | None = None,
) -> LoadedModel:
    """Rebuilds the trained network of a workdir without its dataset.

    Args:
      workdir: a training workdir.
      checkpoint: "latest" or "best" (best on validation).
      config: the run's config; default WORKDIR/config.json. Only
        `config.model` and `config.data` (image_size, eval_batch_size) are
        used.

    Returns:
      `LoadedModel` (its variables stay on the host).

    Raises:
      FileNotFoundError: no config.json or no such checkpoint.
      ValueError: a bad `checkpoint` name.
    """
    if checkpoint not in checkpointing.WHICH:
        raise ValueError(
            f"checkpoint must be 'latest' or 'best', got {checkpoint!r}."
        )
    workdir = os.path.expanduser(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(
            f"workdir {workdir} does not exist; pass the --workdir of a "
            "training run."
        )
    if config is None:
        config = read_workdir_config(workdir)
    variables, step = checkpointing.restore_model_variables(
        workdir, which=checkpoint
    )
    num_classes = int(variables["params"]["classifier"]["kernel"].shape[-1])
    model = train_step.make_model(config, num_classes=num_classes)
    logging.info(
        "Loaded the %s checkpoint of %s (step %d, %d classes, D = %d).",
        checkpoint,
        workdir,
        step,
        num_classes,
        model.feature_dim,
    )
    return LoadedModel(
        model=model,
        variables=variables,
        config=config,
        step=step,
        checkpoint=checkpoint,
        workdir=workdir,
    )


def modality_index(modality: str) -> int:
    """ "visible" -> VISIBLE (0), "infrared" -> INFRARED (1)."""
    if modality not in MODALITIES:
        raise ValueError(
            f"modality must be one of {MODALITIES}, got {modality!r}: it "
            "picks the network's visible or infrared stem."
        )
    return MODALITIES.index(modality)


def embed_images(
    workdir: str | LoadedModel,
    images: str | Sequence[str],
    *,
    modality: str,
    checkpoint: str = "latest",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Embeds image files with a trained network, as the evaluator does.

    Args:
      workdir: a training workdir, or a `LoadedModel` from `load_model`
        (reused, e.g. to embed several folders).
      images: a directory, a glob or a list of paths
        (`image_files.find_images`).
      modality: "visible" or "infrared": the stem the images go through.
      checkpoint: "latest" or "best" (only when `workdir` is a path).
      batch_size: images per forward pass (a multiple of the device count);
        default config.data.eval_batch_size.

    Returns:
      {"pool": [N, D] float32, "bn": [N, D] float32 (raw, NOT
      L2-normalised), "file_names": [N] str array, "modality": str,
      "checkpoint": str, "step": int}.

    Raises:
      image_files.ImageError: no image found, or some cannot be decoded
        (all named).
    """
    mod = modality_index(modality)
    paths = image_files.find_images(images)
    loaded = (
        workdir
        if isinstance(workdir, LoadedModel)
        else load_model(workdir, checkpoint=checkpoint)
    )
    devices = jax.local_devices()
    if batch_size is None:
        batch_size = int(loaded.config.data.eval_batch_size)
        batch_size = -(-batch_size // len(devices)) * len(devices)
        # No need to pad a handful of images up to a large batch.
        batch_size = min(
            batch_size, -(-len(paths) // len(devices)) * len(devices)
        )
    if (
        isinstance(batch_size, bool)
        or int(batch_size) != batch_size
        or batch_size < 1
        or batch_size % len(devices)
    ):
        raise ValueError(
            f"batch_size must be a positive multiple of the {len(devices)} "
            f"local device(s), got {batch_size!r}."
        )

    mesh = sharding.make_mesh(devices)
    # On the devices once, not with every batch.
    variables = jax.device_put(
        dict(loaded.variables), sharding.replicated(mesh)
    )
    predict_fn = features_lib.make_predict_fn(loaded.model, mesh=mesh)
    # The evaluator's own preprocessing, over the files instead of a split.
    batches_fn = features_lib.make_batches_fn(
        image_files.FileSource(paths),
        batch_size=int(batch_size),
        image_size=loaded.image_size,
    )
    logging.info(
        "Embedding %d %s images with %s step %d.",
        len(paths),
        modality,
        loaded.workdir,
        loaded.step,
    )
    try:
        features = features_lib.extract_features(
            lambda images, mod: predict_fn(variables, images, mod),
            batches_fn=batches_fn,
            modality=np.full(len(paths), mod, np.int64),
        )
    except (OSError, tf.errors.OpError) as e:
        # tf.data does not say which file failed: find out.
        bad = image_files.unreadable_images(paths)
        if bad:
            raise image_files.unreadable_error(bad) from e
        raise
    return {
        "pool": features["pool"],
        "bn": features["bn"],
        "file_names": np.asarray(paths, dtype=str),
        "modality": modality,
        "checkpoint": loaded.checkpoint,
        "step": loaded.step,
    }


def write_features(path: str, features: Mapping[str, Any]) -> None:
    """Writes `features` to an .npz at `path` atomically (all or nothing).

    The arrays go to a temporary file in the same folder, which is then
    renamed over `path`, so a reader never sees a partial file and a failed
    run leaves no file behind.
    """
    path = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in features.items()})
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions
        # an ordinary new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command line's flags (defined on the global flags only when run
    as a program: `main.py` imports this module through `export`, and flag
    names must not clash)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "workdir",
        None,
        "The training run's workdir (config.json, checkpoints).",
        **fv,
    )
    flags.DEFINE_enum(
        "checkpoint",
        "latest",
        list(checkpointing.WHICH),
        "The latest checkpoint, or the best on validation.",
        **fv,
    )
    flags.DEFINE_enum(
        "modality",
        None,
        list(MODALITIES),
        "Which stem the images go through: visible (RGB camera) or infrared.",
        **fv,
    )
    flags.DEFINE_string(
        "images",
        None,
        "A directory (every image file below it) or a quoted glob, e.g. "
        "'photos/*.jpg'.",
        **fv,
    )
    flags.DEFINE_string("out", None, "The .npz file to write.", **fv)
    flags.DEFINE_integer(
        "batch_size",
        None,
        "Images per forward pass; default config.data.eval_batch_size.",
        **fv,
    )
    flags.mark_flags_as_required(
        ["workdir", "modality", "images", "out"], flag_values=flag_values
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    fl = flag_values
    # Nothing but --out is written: no log file (--log_dir to get one).
    console.configure(None)
    try:
        features = embed_images(
            fl.workdir,
            fl.images,
            modality=fl.modality,
            checkpoint=fl.checkpoint,
            batch_size=fl.batch_size,
        )
        write_features(fl.out, features)
    except (image_files.ImageError, ValueError) as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 3
    logging.info(
        "Wrote %s: pool and bn [%d, %d] (not normalised).",
        fl.out,
        *features["bn"].shape,
    )
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
