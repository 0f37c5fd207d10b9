"""TFDS builder for SYSU-MM01 (visible-infrared person re-identification).

Reads the authors' folder from `manual_dir` (it cannot be downloaded
automatically) and writes, by default, ArrayRecord files so that
`builder.as_data_source(split)[i]` gives random access.

Builder configs (both hold every image, they differ in the stored size):

* ``288x144`` (default): images resized once to 288 x 144 (height x width)
  with a Lanczos filter, as the authors' release does at preprocessing. Keeps
  the records small and decoding cheap.
* ``original``: images as the cameras delivered them (JPEGs passed through).

Splits:

* ``train``: all images of the train + val ids (395 ids), the paper's
  training set;
* ``train_only``: the train ids only (296) and ``val``: the val ids (99), to
  select models without touching the test ids;
* ``test``: every image of the test ids (96), all six cameras; query and
  gallery are drawn from it by the evaluation protocol.

Usage::

    from data_pipeline.sysu_mm01 import sysu_mm01
    builder = sysu_mm01.prepare(manual_dir="/data/SYSU-MM01",
                                data_dir="/data/tfds")
    source = builder.as_data_source("train")
    example = source[0]  # dict: image uint8 [H, W, 3], identity, label, ...
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import layouts

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
      layouts.CorruptImageError: an image cannot be decoded (names the file).
    """
    label = layouts.contiguous_labels(r.identity for r in records)
    for r in records:
        yield (
            r.file_name,
            {
                "image": layouts.load_image(
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
