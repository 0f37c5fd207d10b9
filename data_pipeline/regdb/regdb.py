"""TFDS builder for RegDB (visible-thermal person re-identification).

Reads the images and the idx/ split files of the ten trials from
`manual_dir`; configs ``trial_1`` .. ``trial_10`` (and their ``_png`` and
``_jpeg`` variants), splits ``train`` and ``test``. Every image is stored
as the release's loader makes it: PIL decode, RGB, Lanczos resize to 288x144
(raw uint8 pixels by default). See the docs/datasets.md.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_pipeline import (
    constants,
    layouts,
    tf_setup,  # noqa: F401 (hides accelerators from TF)
)
from data_pipeline.sysu_mm01 import sysu_mm01

DEFAULT_FILE_FORMAT = sysu_mm01.DEFAULT_FILE_FORMAT

_DESCRIPTION = """
RegDB: 412 people, each with 10 visible and 10 thermal (far-infrared) images
taken at the same moments by a dual-camera system. Per example: the image
(RGB, Lanczos-resized to 288x144 as in the release), the person label of the
idx file ("identity"), its contiguous index among the sorted identities of
the split ("label"), the camera (1 visible, 2 thermal), the modality (0
visible, 1 infrared) and the file name relative to the dataset root.
"""

_CITATION = """
@article{nguyen2017person,
  title={Person Recognition System Based on a Combination of Body Images from
         Visible Light and Thermal Cameras},
  author={Nguyen, Dat Tien and Hong, Hyung Gil and Kim, Ki Wan and Park,
          Kang Ryoung},
  journal={Sensors},
  volume={17},
  number={3},
  pages={605},
  year={2017}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
RegDB cannot be downloaded automatically. {layouts.REGDB_SOURCE}
Unpack it and pass the folder that holds Visible/, Thermal/ and idx/ as the
manual directory (`manual_dir`). Expected layout:
{layouts.REGDB_LAYOUT}
"""


@dataclasses.dataclass
class RegdbConfig(tfds.core.BuilderConfig):
    """Which of the ten trial splits (1..10), and how pixels are stored."""

    trial: int = 1
    image_format: str = sysu_mm01.DEFAULT_IMAGE_FORMAT


class Regdb(sysu_mm01.ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """RegDB visible-thermal person re-identification dataset."""

    VERSION = sysu_mm01.VERSION
    RELEASE_NOTES = sysu_mm01.RELEASE_NOTES
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        RegdbConfig(
            name=sysu_mm01.config_name(f"trial_{t}", image_format),
            trial=t,
            image_format=image_format,
            description=(
                f"Train/test identity split of trial {t}, stored as "
                f"{image_format}."
            ),
        )
        for image_format in sysu_mm01.IMAGE_FORMATS
        for t in constants.REGDB_TRIALS
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "trial_1"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=sysu_mm01.features(self.builder_config.image_format),
            supervised_keys=None,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = sysu_mm01.manual_root(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        records = layouts.read_regdb(root, trial=self.builder_config.trial)
        return {
            split: sysu_mm01.generate_examples(
                root,
                records[split],
                image_size=sysu_mm01.RELEASE_IMAGE_SIZE,
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
    config: str = "trial_1",
    image_format: str | None = None,
    file_format: str = DEFAULT_FILE_FORMAT,
    build_over_outdated: bool = False,
) -> Regdb:
    """Builds one trial of the dataset (once) and returns the builder.

    Args:
      manual_dir: the RegDB folder (holding Visible/, Thermal/ and idx/).
      data_dir: where TFDS writes the records (TFDS default if None).
      config: "trial_1" .. "trial_10", optionally with a format suffix
        ("trial_1_png").
      image_format: "raw", "png" or "jpeg"; None: the config's.
      file_format: "array_record" (random access) or "tfrecord".
      build_over_outdated: build even though records of an older version
        are prepared (see `sysu_mm01.ArrayRecordByDefault`).

    Returns:
      The prepared `Regdb` builder.

    Raises:
      sysu_mm01.OutdatedRecordsError: only an older version is prepared.
    """
    builder = Regdb(
        data_dir=data_dir,
        config=sysu_mm01.resolve_config(
            config, image_format, default="trial_1"
        ),
        file_format=file_format,
        build_over_outdated=build_over_outdated,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder
