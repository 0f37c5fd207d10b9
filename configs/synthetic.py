r"""The embedded demo: MCLNet from scratch on synthetic SYSU-MM01-layout data.

Generates a synthetic dataset in the SYSU-MM01 folder layout into the workdir
(once), builds it with the SYSU-MM01 TFDS builder, trains a narrow ResNet-18
MCLNet from random initialisation on small images and evaluates it with the
SYSU-MM01 protocol (all-search and indoor-search, single-shot, 10 gallery
trials), next to a raw-pixel baseline. About 3 minutes on 2 idle CPU
cores:

  python -m mclnet_jax.main --config=configs/synthetic.py \
      --workdir=/tmp/mclnet_demo

Arguments (after a colon, comma-separated):

  variant=NAME   an ablation row of configs/default.py (default "mclnet"),
                 e.g. --config=configs/synthetic.py:base
  tiny=1         a seconds-long smoke run (8 identities, 32x16 images,
                 a dozen steps) used by the tests.

Outputs in the workdir: results.txt / results.json (test protocol),
results_raw_pixels.* (the same protocol on raw pixels), tensorboard/ (every
training metric), checkpoints/ (resume: rerun the same command).

Departures from the paper's settings, to train from random initialisation
on small images within the budget: one learning rate (0.1) for all layers
(no 0.1x backbone: there are no pretrained weights to protect), 8 epochs
with one decay at epoch 6 and no warm-up, no random erasing (it slows
learning from scratch about twofold), and sigma / rho of ICA/CCA scaled by
D / 2048 so the margins keep their meaning for the narrow feature dimension
D = 128. Everything else (losses, MCM, sampler, protocol) is the paper's.
"""

from mclnet_jax import config_utils


def _default():
    return config_utils.load_sibling(__file__, "default.py")


def _set_data(config, *, identities, images_per_camera, size, pad,
              batch_identities, batch_instances, eval_batch_size):
    """Generated data of `identities` ids at `size` (H, W), and its batches."""
    config.data.synthetic = dict(generator=dict(
        num_identities=identities,
        visible_images_per_camera=images_per_camera,
        infrared_images_per_camera=images_per_camera,
        height=size[0], width=size[1], seed=0))
    config.data.image_size = size
    config.data.pad = pad
    config.data.num_identities = batch_identities
    config.data.num_instances = batch_instances
    config.data.eval_batch_size = eval_batch_size


def get_config(arg=None):
    default = _default()
    args = default.parse_arg(arg, {"variant": "mclnet", "tiny": False})
    config = default.get_config()
    default.apply_variant(config, args["variant"])

    config.data.dataset = "sysu_mm01"
    config.data.builder_config = "original"  # Keep the generated size.
    _set_data(config, identities=160, images_per_camera=6, size=(64, 32),
              pad=4, batch_identities=8, batch_instances=4,
              eval_batch_size=128)

    config.model.depth = 18
    config.model.width_multiplier = 0.25
    # Explicitly from scratch: no ImageNet weights at this size.
    config.model.pretrained = "random"
    config.model.non_local_counts = tuple(
        min(c, 1) for c in config.model.non_local_counts)
    d = 512 * config.model.width_multiplier
    config.loss.sigma = 8.0 * d / 2048
    config.loss.rho = 4500.0 * d / 2048

    # Random erasing (p = 0.8 in AGW*) roughly halves how fast a network
    # learns from scratch on these small images; the demo's budget has no
    # room for it.
    config.data.random_erasing = 0.0

    config.num_epochs = 8  # 97 steps each.
    config.optimizer.lr = 0.1
    config.optimizer.schedule.warmup_epochs = 0
    config.optimizer.schedule.boundaries = (6,)
    config.optimizer.schedule.factors = (0.1,)
    config.optimizer.lr_mults = ((".*", 1.0),)
    config.mcm_optimizer.lr = 0.1
    config.log_every_steps = 50
    config.checkpoint.every_steps = 200
    config.eval.raw_pixel_baseline = True

    if args["tiny"]:
        _set_data(config, identities=8, images_per_camera=2, size=(32, 16),
                  pad=2, batch_identities=2, batch_instances=2,
                  eval_batch_size=16)
        config.model.width_multiplier = 1 / 16
        config.num_epochs = 3
        config.log_every_steps = 2
        config.checkpoint.every_steps = 4
        config.eval.num_trials = 2
        config.eval.raw_pixel_baseline = False
    return config
