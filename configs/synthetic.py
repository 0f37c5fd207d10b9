r"""The embedded demo: MCLNet from scratch on synthetic SYSU-MM01-layout data.

Generates a synthetic dataset in the SYSU-MM01 folder layout into the workdir
(once), builds it with the SYSU-MM01 TFDS builder, trains a narrow ResNet-18
MCLNet from random initialisation on small images and evaluates it with the
SYSU-MM01 protocol (all-search and indoor-search, single-shot, 10 gallery
trials), next to a raw-pixel baseline. On 2 CPU cores:

  python -m mclnet_jax.main --config=configs/synthetic.py \
      --workdir=/tmp/mclnet_demo

Arguments (after a colon, comma-separated; a bare word is the variant):

  variant=NAME   an ablation row of mclnet_jax/configs/common.py VARIANTS
                 (default "mclnet"), e.g. --config=configs/synthetic.py:base
  seed=N         the seed of the generated data *and* of the training
                 (default 0): one whole independent demo per seed.
  large=1        a bigger setting for a GPU (benchmarks/ablation.py
                 --setting=large): more identities, 128x64 images, a
                 ResNet-18 x0.5, a longer schedule.
  tiny=1         a seconds-long smoke run (8 identities, 32x16 images,
                 a dozen steps) used by the tests.

Outputs in the workdir: results.txt / results.json (test protocol),
results_raw_pixels.* (the same protocol on raw pixels), tensorboard/ (every
training metric), checkpoints/ (resume: rerun the same command).

The data and the departures from the paper's settings are described in
`mclnet_jax.configs.settings.synthetic`.
"""

from mclnet_jax.configs import common, settings


def get_config(arg=None):
    return common.config_from_arg(settings.synthetic, arg)
