r"""Builds the SYSU-MM01 records.

  python -m data_pipeline.sysu_mm01 --manual_dir=/data/SYSU-MM01 \
      --data_dir=/data/tfds [--config=288x144] [--image_format=raw]
"""

from data_pipeline.sysu_mm01 import sysu_mm01

if __name__ == "__main__":
    sysu_mm01.build_main(sysu_mm01.prepare, default_config="288x144")
