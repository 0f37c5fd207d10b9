r"""Builds the LLCM records.

  python -m data_pipeline.llcm --manual_dir=/data/LLCM \
      --data_dir=/data/tfds [--config=288x144] [--image_format=raw]
"""

from data_pipeline.llcm import llcm
from data_pipeline.sysu_mm01 import sysu_mm01

if __name__ == "__main__":
    sysu_mm01.build_main(llcm.prepare, default_config="288x144")
