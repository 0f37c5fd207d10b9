"""TFDS builder for LLCM (low-light visible-infrared person re-id).

Reads the images, the idx/ training lists and the test folders from
`manual_dir` (`layouts.read_llcm`); configs ``288x144`` (default: the
release-style Lanczos resize at build time, as for SYSU-MM01 and RegDB) and
``original`` (the files' size), each with ``_png`` and ``_jpeg`` variants;
splits ``train`` (both modalities, labels contiguous) and ``test`` (every
image of the test ids; the protocol draws query and gallery from it).
Cameras keep LLCM's numbers 1..9 in both modalities. See the
docs/datasets.md.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_pipeline import (
    layouts,
    tf_setup,  # noqa: F401 (hides accelerators from TF)
)
from data_pipeline.sysu_mm01 import sysu_mm01

DEFAULT_FILE_FORMAT = sysu_mm01.DEFAULT_FILE_FORMAT

_DESCRIPTION = """
LLCM: 1,064 people seen by nine cameras, each recording visible light or,
in low light, near-infrared (3-channel grey) images. Per example: the image,
the person ("identity": the label of idx/train_*.txt for training images,
the folder's id for test images), its contiguous index among the sorted
identities of the split ("label"), the camera (1..9, the same number in
both modalities), the modality (0 visible, 1 infrared) and the file name
relative to the dataset root.
"""

_CITATION = """
@inproceedings{zhang2023diverse,
  title={Diverse Embedding Expansion Network and Low-Light Cross-Modality
         Benchmark for Visible-Infrared Person Re-identification},
  author={Zhang, Yukang and Wang, Hanzi},
  booktitle={CVPR},
  year={2023}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
LLCM cannot be downloaded automatically. {layouts.LLCM_SOURCE}
Unpack it and pass the folder that holds idx/, test_vis/ and test_nir/ as
the manual directory (`manual_dir`). Expected layout:
{layouts.LLCM_LAYOUT}
"""


@dataclasses.dataclass
class LlcmConfig(tfds.core.BuilderConfig):
    """Stored image size, (height, width) or None for the files' size, and
    how the pixels are stored (one of `sysu_mm01.IMAGE_FORMATS`)."""

    image_size: tuple[int, int] | None = sysu_mm01.RELEASE_IMAGE_SIZE
    image_format: str = sysu_mm01.DEFAULT_IMAGE_FORMAT


class Llcm(sysu_mm01.ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """LLCM low-light visible-infrared person re-identification dataset."""

    VERSION = sysu_mm01.VERSION
    RELEASE_NOTES = sysu_mm01.RELEASE_NOTES
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        LlcmConfig(
            name=sysu_mm01.config_name(base, image_format),
            image_size=size,
            image_format=image_format,
            description=f"{description}, stored as {image_format}.",
        )
        for base, size, description in (
            (
                "288x144",
                sysu_mm01.RELEASE_IMAGE_SIZE,
                "Images resized to 288x144 (h x w)",
            ),
            ("original", None, "Images at their original size"),
        )
        for image_format in sysu_mm01.IMAGE_FORMATS
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "288x144"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=sysu_mm01.features(self.builder_config.image_format),
            supervised_keys=None,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = sysu_mm01.manual_root(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        records = layouts.read_llcm(root)
        return {
            split: sysu_mm01.generate_examples(
                root,
                records[split],
                image_size=self.builder_config.image_size,
                image_format=self.builder_config.image_format,
            )
            for split in ("train", "test")
        }

    def _generate_examples(self, **kwargs):  # pragma: no cover
        # `_split_generators` returns ready generators; TFDS never calls this.
        raise NotImplementedError


def prepare(
    *,
    manual_dir: str,
    data_dir: str | None = None,
    config: str | None = None,
    image_format: str | None = None,
    file_format: str = DEFAULT_FILE_FORMAT,
    build_over_outdated: bool = False,
) -> Llcm:
    """Builds the dataset (once) and returns the builder.

    Args:
      manual_dir: the LLCM folder (holding idx/, test_vis/ and test_nir/).
      data_dir: where TFDS writes the records (TFDS default if None).
      config: "288x144" (default) or "original", optionally with a format
        suffix ("288x144_png").
      image_format: "raw", "png" or "jpeg"; None: the config's.
      file_format: "array_record" (random access) or "tfrecord".
      build_over_outdated: build even though records of an older version
        are prepared (see `sysu_mm01.ArrayRecordByDefault`).

    Returns:
      The prepared `Llcm` builder.

    Raises:
      sysu_mm01.OutdatedRecordsError: only an older version is prepared.
    """
    builder = Llcm(
        data_dir=data_dir,
        config=sysu_mm01.resolve_config(
            config, image_format, default="288x144"
        ),
        file_format=file_format,
        build_over_outdated=build_over_outdated,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder
