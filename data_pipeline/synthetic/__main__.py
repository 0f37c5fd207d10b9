"""Writes a synthetic dataset in the SYSU-MM01, RegDB or LLCM folder layout.

python -m data_pipeline.synthetic --layout=sysu --out=DIR [--preset=tiny]
"""

from data_pipeline.synthetic import cli

if __name__ == "__main__":
    cli.run()
