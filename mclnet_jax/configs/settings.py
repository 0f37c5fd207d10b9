"""The configs of each setting: SYSU-MM01, RegDB and the synthetic demo.

Each function's parameters are the arguments of its `configs/<name>.py`
(`--config=configs/sysu.py:variant=agw,search=both`; README "Configs and
ablations"); it starts from `common.default_config()` and changes what
differs.
"""

import ml_collections

from mclnet_jax.configs import common

_SYSU_SEARCH = {
    "all": ("all",),
    "indoor": ("indoor",),
    "both": ("all", "indoor"),
}


def sysu(
    variant: str = "mclnet", *, search: str = "all", val: bool = False
) -> ml_collections.ConfigDict:
    """MCLNet on SYSU-MM01 with the paper's settings.

    Args:
      variant: a name of `common.VARIANTS`.
      search: "all", "indoor" or "both": the search mode(s) evaluated; the
        first one selects the best checkpoint.
      val: train on the train ids only ("train_only") and keep the best
        checkpoint on the validation ids ("val"), never on test.

    Returns:
      The config.
    """
    if search not in _SYSU_SEARCH:
        raise ValueError(
            f"search must be one of {sorted(_SYSU_SEARCH)}, got {search!r}."
        )
    config = common.apply_variant(common.default_config(), variant)
    config.data.dataset = "sysu_mm01"
    config.data.builder_config = "288x144"
    config.eval.protocol = "sysu"
    config.eval.modes = _SYSU_SEARCH[search]
    if val:
        config.data.train_split = "train_only"
        config.data.val_split = "val"
        # 5 epochs of the train_only split (about 522 steps each).
        config.val_every_steps = 2610
        config.checkpoint.best_metric = (
            f"sysu_{config.eval.modes[0]}_single_shot/bn/mean/mAP"
        )
    return config


def regdb(
    variant: str = "mclnet", *, trial: int = 1
) -> ml_collections.ConfigDict:
    """MCLNet on one RegDB trial with the paper's settings.

    As in the paper, CCA is off on RegDB (one camera per modality) in every
    variant.

    Args:
      variant: a name of `common.VARIANTS`.
      trial: 1..10, the TFDS config "trial_<trial>".

    Returns:
      The config.
    """
    if not 1 <= trial <= 10:
        raise ValueError(f"trial must be in 1..10, got {trial}.")
    config = common.apply_variant(common.default_config(), variant)
    config.loss.cca = False
    config.data.dataset = "regdb"
    config.data.builder_config = f"trial_{trial}"
    config.data.train_split = "train"
    config.data.test_split = "test"
    config.eval.protocol = "regdb"
    return config


def _set_data(
    config: ml_collections.ConfigDict,
    *,
    identities: int,
    images_per_camera: int,
    size: tuple[int, int],
    pad: int,
    batch_identities: int,
    batch_instances: int,
    eval_batch_size: int,
    seed: int,
    pattern_scale: float,
) -> None:
    """Generated data of `identities` ids at `size` (H, W), and its batches."""
    config.data.synthetic = dict(
        generator=dict(
            num_identities=identities,
            visible_images_per_camera=images_per_camera,
            infrared_images_per_camera=images_per_camera,
            height=size[0],
            width=size[1],
            seed=seed,
            pattern_scale=pattern_scale,
        )
    )
    config.data.image_size = size
    config.data.pad = pad
    config.data.num_identities = batch_identities
    config.data.num_instances = batch_instances
    config.data.eval_batch_size = eval_batch_size


def _set_schedule(
    config: ml_collections.ConfigDict,
    *,
    epochs: int,
    decay_at: int,
    warmup: int,
) -> None:
    config.num_epochs = epochs
    config.optimizer.schedule.warmup_epochs = warmup
    config.optimizer.schedule.boundaries = (decay_at,)
    config.optimizer.schedule.factors = (0.1,)


def _set_width(
    config: ml_collections.ConfigDict, width_multiplier: float
) -> None:
    """The width, with ICA/CCA's sigma and rho scaled by D / 2048."""
    config.model.width_multiplier = width_multiplier
    d = 512 * width_multiplier
    config.loss.sigma = 8.0 * d / 2048
    config.loss.rho = 4500.0 * d / 2048


def synthetic(
    variant: str = "mclnet",
    *,
    tiny: bool = False,
    large: bool = False,
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """The demo: MCLNet from scratch on synthetic SYSU-MM01-layout data.

    The data: 260 identities (51 test identities: SYSU-MM01's proportion),
    4 images per identity and camera, 96x48 pixels, and clothing patterns
    drawn 2.5x coarser than the generator's default (pattern_scale=0.4) so
    that stripes, checks and dots are several pixels wide at this size
    (docs/demo_findings.md has the measurements behind each choice).

    Departures from the paper's settings, to train a narrow ResNet-18 from
    random initialisation on small images within the demo's budget: one
    learning rate (0.1) for all layers (no 0.1x backbone: there are no
    pretrained weights to protect), 11 epochs with a 2-epoch warm-up and one
    decay at epoch 8, no random erasing in any variant, sigma / rho of
    ICA/CCA scaled by D / 2048 so the margins keep their meaning for the
    narrow feature dimension D = 128, and two augmentations of ours (not in
    the paper): random grey of visible images (config.data.random_grey =
    0.5), which takes colour away as an identity cue half of the time, and
    random intensity remapping of any image (config.data.random_remap =
    0.3), which takes absolute brightness away (the modalities do not share
    it). Evaluation recomputes the BatchNorm statistics for the evaluated
    weights on 8 training batches (config.eval.precise_bn_batches; the
    release keeps the running ones, which lag the weights of a young
    run from scratch). Everything else (losses, MCM, sampler, protocol)
    is the paper's.

    Args:
      variant: a name of `common.VARIANTS`.
      tiny: a seconds-long smoke run (8 identities, 32x16 images, a dozen
        steps), used by the tests.
      large: a bigger setting for a GPU: more identities, 128x64 images, a
        ResNet-18 x0.5, a longer schedule.
      seed: the seed of the generated data and of the training.

    Returns:
      The config.
    """
    if tiny and large:
        raise ValueError(
            "configs/synthetic.py: tiny=1 and large=1 exclude each other; "
            "pick one."
        )
    config = common.apply_variant(common.default_config(), variant)
    config.seed = seed

    config.data.dataset = "sysu_mm01"
    config.data.builder_config = "original"  # Keep the generated size.
    _set_data(
        config,
        identities=260,
        images_per_camera=4,
        size=(96, 48),
        pad=6,
        batch_identities=8,
        batch_instances=4,
        eval_batch_size=128,
        seed=seed,
        pattern_scale=0.4,
    )

    config.model.depth = 18
    _set_width(config, 0.25)
    # Explicitly from scratch: no ImageNet weights at this size.
    config.model.pretrained = "random"
    config.model.non_local_counts = tuple(
        min(c, 1) for c in config.model.non_local_counts
    )

    # Random erasing (p = 0.8 in AGW*) slows learning from scratch on these
    # small images; the demo's budget has no room for it. Random grey and
    # random remapping (ours) remove the colour and brightness shortcuts.
    config.data.random_erasing = 0.0
    config.data.random_grey = 0.5
    config.data.random_remap = 0.3

    # Linear warm-up over 2 epochs (the release warms up over 10 of 201):
    # without it, whether a run from scratch settles on the shared or on the
    # modality-specific cues is largely down to the seed
    # (docs/demo_findings.md).
    _set_schedule(config, epochs=11, decay_at=8, warmup=2)  # 105 steps each.
    config.optimizer.lr = 0.1
    config.optimizer.lr_mults = ((".*", 1.0),)
    config.mcm_optimizer.lr = 0.1
    config.log_every_steps = 50
    config.checkpoint.every_steps = 200
    config.eval.raw_pixel_baseline = True
    # From scratch the running BatchNorm statistics lag the weights for
    # the first steps (by 1e4 and more in scale after 4 steps of the tiny
    # run: non-finite features); evaluate with statistics recomputed for
    # the evaluated weights (evaluators/batch_stats.py).
    config.eval.precise_bn_batches = 8

    if large:
        _set_data(
            config,
            identities=491,
            images_per_camera=10,
            size=(128, 64),
            pad=8,
            batch_identities=8,
            batch_instances=4,
            eval_batch_size=256,
            seed=seed,
            pattern_scale=0.6,
        )
        _set_width(config, 0.5)
        _set_schedule(config, epochs=30, decay_at=20, warmup=3)
        config.checkpoint.every_steps = 1000
    if tiny:
        _set_data(
            config,
            identities=8,
            images_per_camera=2,
            size=(32, 16),
            pad=2,
            batch_identities=2,
            batch_instances=2,
            eval_batch_size=16,
            seed=seed,
            pattern_scale=1.0,
        )
        # sigma / rho stay those of D = 128, no random grey or remap, no
        # warm-up: the smoke run stays what other tests compare against.
        config.model.width_multiplier = 1 / 16
        config.data.random_grey = 0.0
        config.data.random_remap = 0.0
        config.optimizer.schedule.warmup_epochs = 0
        config.num_epochs = 3
        config.log_every_steps = 2
        config.checkpoint.every_steps = 4
        config.eval.num_trials = 2
        config.eval.raw_pixel_baseline = False
    return config
