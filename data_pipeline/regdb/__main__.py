r"""Builds the RegDB records of one trial.

  python -m data_pipeline.regdb --manual_dir=/data/RegDB \
      --data_dir=/data/tfds --config=trial_1 [--image_format=raw]
"""

from data_pipeline.regdb import regdb
from data_pipeline.sysu_mm01 import sysu_mm01

if __name__ == "__main__":
    sysu_mm01.build_main(regdb.prepare, default_config="trial_1")
