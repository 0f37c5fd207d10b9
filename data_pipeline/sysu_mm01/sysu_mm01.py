"""TFDS builder for SYSU-MM01, and what both re-id builders share.

Reads the authors' folder from `manual_dir` (it cannot be downloaded) and
writes ArrayRecord files by default, for random access through
`builder.as_data_source(split)`. Configs ``288x144`` (default, resized as the
release does) and ``original``; splits ``train`` (train + val ids),
``train_only``, ``val`` and ``test``. See the README section "Datasets".
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterable

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data_pipeline import (
    layouts,
    tf_setup,  # noqa: F401 (hides accelerators from TF)
)

DEFAULT_FILE_FORMAT = "array_record"

_DESCRIPTION = """
SYSU-MM01: 491 people seen by four visible cameras (1, 2 indoor; 4, 5
outdoor) and two near-infrared cameras (3 indoor, 6 outdoor). Infrared images
are stored as 3-channel grey JPEGs. Per example: the encoded image, the
original person id ("identity"), the contiguous index of that id among the
sorted ids of the split ("label"), the camera (1..6), the modality (0 visible,
1 infrared) and the file name relative to the dataset root.
"""

_CITATION = """
@inproceedings{wu2017rgb,
  title={RGB-Infrared Cross-Modality Person Re-Identification},
  author={Wu, Ancong and Zheng, Wei-Shi and Yu, Hong-Xing and Gong, Shaogang
          and Lai, Jianhuang},
  booktitle={ICCV},
  year={2017}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
SYSU-MM01 cannot be downloaded automatically. {layouts.SYSU_SOURCE}
Unpack it and pass the folder that holds cam1 .. cam6 and exp/ as the manual
directory (`manual_dir`). Expected layout:
{layouts.SYSU_LAYOUT}
"""


class CorruptImageError(ValueError):
    """An image file cannot be decoded."""


def contiguous_labels(identities: Iterable[int]) -> dict[int, int]:
    """Maps each identity to its index among the sorted distinct identities."""
    return {pid: i for i, pid in enumerate(sorted(set(identities)))}


def load_image(
    path: str, *, size: tuple[int, int] | None = None, quality: int = 95
) -> bytes:
    """Reads an image file and returns 3-channel JPEG bytes.

    A 3-channel JPEG that already has the requested size is passed through
    unchanged (after a full decode that proves it readable); anything else
    (BMP, PNG, grey, other size) is decoded, converted to RGB, resized with a
    Lanczos filter (as the release's preprocessing) and encoded at `quality`.

    Args:
      path: the image file.
      size: (height, width) to resize to, or None to keep the size.
      quality: JPEG quality of re-encoded images.

    Returns:
      JPEG bytes of an [H, W, 3] image.

    Raises:
      CorruptImageError: the file cannot be read or decoded; names the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # Forces a full decode: truncated files fail here.
            fmt = img.format
            if (
                fmt == "JPEG"
                and img.mode == "RGB"
                and (size is None or img.size == (size[1], size[0]))
            ):
                return data
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise CorruptImageError(
            f"cannot decode image {path}: {e}. Replace the file with an intact "
            "copy from the original dataset archive."
        ) from e
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.LANCZOS)
    buf = io.BytesIO()
    # 4:4:4 chroma: one re-encode should not blur colour edges.
    rgb.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


@dataclasses.dataclass
class SysuMm01Config(tfds.core.BuilderConfig):
    """Stored image size: (height, width), or None for the original size."""

    image_size: tuple[int, int] | None = (288, 144)


def features() -> tfds.features.FeaturesDict:
    """The feature spec shared by the SYSU-MM01 and RegDB builders."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 3), encoding_format="jpeg"
            ),
            "identity": tfds.features.Scalar(dtype=np.int64),
            "label": tfds.features.Scalar(dtype=np.int64),
            "camera": tfds.features.Scalar(dtype=np.int64),
            "modality": tfds.features.Scalar(dtype=np.int64),
            "file_name": tfds.features.Text(),
        }
    )


def generate_examples(
    root: str,
    records: list[layouts.ImageRecord],
    *,
    image_size: tuple[int, int] | None,
):
    """Yields (key, example) for `records`; labels are contiguous per split.

    Raises:
      CorruptImageError: an image cannot be decoded (names the file).
    """
    label = contiguous_labels(r.identity for r in records)
    for r in records:
        yield (
            r.file_name,
            {
                "image": load_image(
                    os.path.join(root, r.file_name), size=image_size
                ),
                "identity": r.identity,
                "label": label[r.identity],
                "camera": r.camera,
                "modality": r.modality,
                "file_name": r.file_name,
            },
        )


def manual_root(
    dl_manager: tfds.download.DownloadManager, instructions: str
) -> str:
    """The manual directory, or a `DatasetLayoutError` saying how to get it."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError as e:
        # TFDS says which folder is missing or empty in its first line.
        raise layouts.DatasetLayoutError(
            f"{str(e).splitlines()[0]}{instructions}"
        ) from None


class ArrayRecordByDefault:
    """Builder mixin: new datasets are written as ArrayRecord files.

    ArrayRecord gives the random access (`as_data_source`) that the
    identity-balanced sampler needs; an explicit `file_format=` wins, and an
    already prepared dataset keeps the format it was written with.
    """

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        if file_format is None and not self.info.splits:
            self.info.set_file_format(DEFAULT_FILE_FORMAT, override=True)


class SysuMm01(ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """SYSU-MM01 visible-infrared person re-identification dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        SysuMm01Config(
            name="288x144",
            image_size=(288, 144),
            description="Images resized to 288x144 (h x w).",
        ),
        SysuMm01Config(
            name="original",
            image_size=None,
            description="Images at their original size.",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "288x144"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=features(),
            supervised_keys=None,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = manual_root(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        layout = layouts.read_sysu(root)
        size = self.builder_config.image_size
        return {
            split: generate_examples(
                root, layout.records(split), image_size=size
            )
            for split in ("train", "train_only", "val", "test")
        }

    def _generate_examples(self, **kwargs):  # pragma: no cover
        # `_split_generators` returns ready generators; TFDS never calls this.
        raise NotImplementedError


def prepare(
    *,
    manual_dir: str,
    data_dir: str | None = None,
    config: str | None = None,
    file_format: str = DEFAULT_FILE_FORMAT,
) -> SysuMm01:
    """Builds the dataset (once) and returns the builder.

    Args:
      manual_dir: the SYSU-MM01 folder (holding cam1 .. cam6 and exp/).
      data_dir: where TFDS writes the records (TFDS default if None).
      config: "288x144" (default) or "original".
      file_format: "array_record" (random access) or "tfrecord".

    Returns:
      The prepared `SysuMm01` builder.
    """
    builder = SysuMm01(
        data_dir=data_dir, config=config, file_format=file_format
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder
