"""TFDS builder for RegDB (visible-thermal person re-identification).

Reads the images and the idx/ split files of the ten trials from
`manual_dir`; configs ``trial_1`` .. ``trial_10``, splits ``train`` and
``test``. Images keep their size (BMP re-encoded as JPEG). See the README
section "Datasets".
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
taken at the same moments by a dual-camera system. Per example: the encoded
image (3-channel JPEG), the person label of the idx file ("identity"), its
contiguous index among the sorted identities of the split ("label"), the
camera (1 visible, 2 thermal), the modality (0 visible, 1 infrared) and the
file name relative to the dataset root.
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
    """Which of the ten trial splits (1..10)."""

    trial: int = 1


class Regdb(sysu_mm01.ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """RegDB visible-thermal person re-identification dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        RegdbConfig(
            name=f"trial_{t}",
            trial=t,
            description=f"Train/test identity split of trial {t}.",
        )
        for t in constants.REGDB_TRIALS
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "trial_1"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=sysu_mm01.features(),
            supervised_keys=None,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = sysu_mm01.manual_root(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        records = layouts.read_regdb(root, trial=self.builder_config.trial)
        return {
            split: sysu_mm01.generate_examples(
                root, records[split], image_size=None
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
    file_format: str = DEFAULT_FILE_FORMAT,
) -> Regdb:
    """Builds one trial of the dataset (once) and returns the builder.

    Args:
      manual_dir: the RegDB folder (holding Visible/, Thermal/ and idx/).
      data_dir: where TFDS writes the records (TFDS default if None).
      config: "trial_1" .. "trial_10".
      file_format: "array_record" (random access) or "tfrecord".

    Returns:
      The prepared `Regdb` builder.
    """
    builder = Regdb(data_dir=data_dir, config=config, file_format=file_format)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder
