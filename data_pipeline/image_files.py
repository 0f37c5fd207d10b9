"""Your own image files as a split: found by glob or folder, read as records.

`find_images` lists the files, `FileSource` serves them as the serialized
records the evaluation pipeline reads, and `unreadable_images` names the files
its decoder rejects. Used by `mclnet_jax.embed` (docs/export.md "Features for
your own images").
"""

import glob
import os
import re
from collections.abc import Sequence

from data_pipeline import image_ops
from data_pipeline.tf_setup import tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class ImageError(ValueError):
    """No image matched, or an image cannot be read."""


def find_images(images: str | Sequence[str]) -> list[str]:
    """The image files named by a directory, a glob, or a list of paths.

    A directory means every file below it (recursively) whose extension is
    one of IMAGE_EXTENSIONS (any case), sorted; a glob (`**` recurses) keeps
    every file it matches, sorted; a list is kept as given.

    Raises:
      ImageError: nothing matched, or a listed path is not a file.
    """
    if isinstance(images, (str, os.PathLike)):
        pattern = os.path.expanduser(os.fspath(images))
        if os.path.isdir(pattern):
            found = []
            for root, dirs, files in os.walk(pattern):
                dirs.sort()
                found.extend(
                    os.path.join(root, name)
                    for name in files
                    if name.lower().endswith(IMAGE_EXTENSIONS)
                )
            what = (
                f"no {'/'.join(IMAGE_EXTENSIONS)} files under the "
                f"directory {pattern}"
            )
        else:
            found = [
                p
                for p in glob.glob(pattern, recursive=True)
                if os.path.isfile(p)
            ]
            what = f"no file matches {pattern!r}"
        found.sort()
        if not found:
            raise ImageError(
                f"{what}. Give a directory of images or a glob such as "
                "'photos/*.jpg' (quoted, so that the shell does not expand "
                "it)."
            )
        return found
    paths = [os.fspath(p) for p in images]
    if not paths:
        raise ImageError("no images given: the list of paths is empty.")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ImageError(
            f"{len(missing)} image path(s) are not files, e.g. {missing[:3]}."
        )
    return paths


class FileSource:
    """The files as a random-access split, read lazily.

    Each item is a serialized `tf.train.Example` holding the encoded "image",
    the records `eval_pipeline.make_eval_dataset` reads.
    """

    def __init__(self, paths: Sequence[str]):
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> bytes:
        with open(self._paths[int(index)], "rb") as f:
            image = tf.train.BytesList(value=[f.read()])
        features = tf.train.Features(
            feature={"image": tf.train.Feature(bytes_list=image)}
        )
        return tf.train.Example(features=features).SerializeToString()


def unreadable_images(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(path, reason) of each file that the evaluation decoder rejects."""
    bad = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                image_ops.decode_image(tf.constant(f.read()))
        except (OSError, tf.errors.OpError) as e:
            reason = getattr(e, "message", None) or str(e)
            # Keep TensorFlow's message, not its op and device decoration.
            reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", reason)
            bad.append((path, " ".join(reason.split()) or type(e).__name__))
    return bad


def unreadable_error(bad: Sequence[tuple[str, str]]) -> ImageError:
    """The ImageError naming `unreadable_images`' files (ten at most)."""
    lines = "\n".join(f"  {p}: {r}" for p, r in bad[:10])
    more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
    return ImageError(
        f"{len(bad)} image(s) cannot be decoded as JPEG/PNG/BMP/GIF; remove "
        f"or fix them:\n{lines}{more}"
    )
