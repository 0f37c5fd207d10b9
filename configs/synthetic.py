r"""The embedded demo: MCLNet from scratch on synthetic SYSU-MM01-layout data.

Generates a synthetic dataset in the SYSU-MM01 folder layout into the workdir
(once), builds it with the SYSU-MM01 TFDS builder, trains a narrow ResNet-18
MCLNet from random initialisation on small images and evaluates it with the
SYSU-MM01 protocol (all-search and indoor-search, single-shot, 10 gallery
trials), next to a raw-pixel baseline. On 2 CPU cores:

  python -m mclnet_jax.main --config=synthetic --workdir=/tmp/mclnet_demo

The data: 260 identities (51 test identities: SYSU-MM01's proportion), 4
images per identity and camera, 96x48 pixels, clothing patterns drawn 2.5x
coarser than the generator's default (pattern_scale=0.4) so that stripes,
checks and dots are several pixels wide at this size (docs/demo_findings.md
has the measurements behind each choice).

Departures from the paper's settings, to train a narrow ResNet-18 from
random initialisation within the demo's budget: one learning rate for all
layers (no pretrained weights to protect), 11 epochs with a 2-epoch warm-up
and one decay at epoch 8, no random erasing in any variant, sigma / rho of
ICA/CCA scaled by D / 2048 (D = 128 here), random grey and random intensity
remapping (ours: they take colour and absolute brightness away as identity
cues), and BatchNorm statistics recomputed for the evaluated weights. The
rest (losses, MCM, sampler, protocol) is the paper's.

Arguments (after a colon, comma-separated; a bare word is the variant):

  variant=NAME   an ablation row of configs/common.py VARIANTS (default
                 "mclnet"), e.g. --config=synthetic:base
  seed=N         the seed of the generated data *and* of the training
                 (default 0): one whole independent demo per seed.
  large=1        a bigger setting for a GPU (benchmarks/ablation.py
                 --setting=large): 491 identities, 128x64 images, a
                 ResNet-18 x0.5, 30 epochs.
  tiny=1         a seconds-long smoke run (8 identities, 32x16 images,
                 3 epochs of 13 steps) used by the tests.
  dataset=NAME   the layout generated and evaluated: sysu (default, all of
                 the above), regdb (the RegDB builder's trial_1 and its
                 protocol, both directions; CCA off as in configs/regdb.py;
                 4 images per identity and modality, stored at 288x144 as
                 the RegDB builder stores every image) or llcm (the LLCM
                 builder and protocol, both directions; 2 images per
                 identity and camera, 1 with tiny=1), e.g.
                 --config=synthetic:dataset=llcm,tiny=1
  eval_on=A+B    also evaluate the final model on the other generated
                 layouts (cross-dataset), e.g. eval_on=regdb+llcm:
                 results_test_regdb.*, results_test_llcm.*

Outputs in the workdir: results.txt / results.json (test protocol), the
raw-pixel baseline's results, tensorboard/ (every training metric),
checkpoints/ (resume: rerun the same command).
"""

import ml_collections

from mclnet_jax.configs import common

# dataset= -> (TFDS builder, its config): the generated size is kept where
# the builder can (RegDB's stores every image at 288x144).
_DATASETS = {
    "sysu": ("sysu_mm01", "original"),
    "regdb": ("regdb", "trial_1"),
    "llcm": ("llcm", "original"),
}


def get_config(arg=None):
    """The config of `--config=synthetic:ARG`."""
    arg = common.parse_arg(
        arg,
        variant="mclnet",
        seed=0,
        large=False,
        tiny=False,
        dataset="sysu",
        eval_on="",
    )
    if arg.dataset not in _DATASETS:
        raise ValueError(
            f"configs/synthetic.py: dataset must be one of {list(_DATASETS)}, "
            f"got {arg.dataset!r}."
        )
    if arg.tiny and arg.large:
        raise ValueError(
            "configs/synthetic.py: tiny=1 and large=1 exclude each other; "
            "pick one."
        )

    def pick(demo, *, large, tiny):
        """The value of the demo, of large=1 or of tiny=1."""
        return tiny if arg.tiny else large if arg.large else demo

    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.variant = arg.variant  # A row of common.VARIANTS, applied last.
    config.seed = arg.seed
    config.num_epochs = pick(11, large=30, tiny=3)  # 105 steps each (demo).
    config.max_steps = placeholder(int)  # Stop early; None: num_epochs.
    config.log_every_steps = pick(50, large=50, tiny=2)

    config.data = ml_collections.ConfigDict()
    # TFDS builder name and config ("original": keep the generated size).
    config.data.dataset, config.data.builder_config = _DATASETS[arg.dataset]
    # None: the generated data (config.data.synthetic) in WORKDIR.
    config.data.manual_dir = placeholder(str)
    # Prepared TFDS data; None: WORKDIR/tfds.
    config.data.data_dir = placeholder(str)
    config.data.train_split = "train"
    # "raw" (uint8, the fastest to read), "png" or "jpeg"; None: the builder
    # config's (raw unless its name ends in _png or _jpeg). docs/datasets.md.
    config.data.image_format = placeholder(str)
    size = pick((96, 48), large=(128, 64), tiny=(32, 16))
    config.data.image_size = size  # (height, width)
    config.data.pad = pick(6, large=8, tiny=2)  # Before the random crop.
    # Random erasing (p = 0.8 in AGW*) slows learning from scratch on these
    # small images: off in every variant.
    config.data.random_erasing = 0.0
    # Ours, not the paper's: the probability that a visible image is made
    # grey (luma), which takes colour away as an identity cue, and that an
    # image's values go through a random piecewise-linear curve, which takes
    # absolute brightness away (data_pipeline/augment.py). Not in the tiny
    # run, which other tests compare against.
    config.data.random_grey = pick(0.5, large=0.5, tiny=0.0)
    config.data.random_remap = pick(0.3, large=0.3, tiny=0.0)
    # CAJ's channel augmentation (docs/training.md "Channel augmentation
    # (CAJ)"): off, on in the mclnet_caj variant.
    config.data.channel_exchange = False
    config.data.channel_adaptive_grey = 0.0
    config.data.channel_erasing = 0.0
    config.data.num_identities = pick(8, large=8, tiny=2)  # P per batch.
    # K images per identity and modality.
    config.data.num_instances = pick(4, large=4, tiny=2)
    # None: the release's floor(max(N_vis, N_ir) / (P * K)) + 1.
    config.data.steps_per_epoch = placeholder(int)
    config.data.eval_batch_size = pick(128, large=256, tiny=16)

    def generator(dataset):
        """data_pipeline.synthetic's generate_sysu / generate_regdb /
        generate_llcm arguments for the layout of `dataset`."""
        if dataset == "regdb":
            per_identity = dict(images_per_modality=pick(4, large=10, tiny=2))
        else:
            # LLCM: 9 visible and 8 infrared cameras per identity (SYSU: 4, 2).
            per_camera = (
                pick(4, large=10, tiny=2)
                if dataset == "sysu"
                else pick(2, large=4, tiny=1)
            )
            per_identity = dict(
                visible_images_per_camera=per_camera,
                infrared_images_per_camera=per_camera,
            )
        return dict(
            num_identities=pick(260, large=491, tiny=8),
            **per_identity,
            height=size[0],
            width=size[1],
            seed=arg.seed,
            # Clothing patterns' size relative to the generator's default.
            pattern_scale=pick(0.4, large=0.6, tiny=1.0),
        )

    # Generated into WORKDIR once and used as manual_dir.
    config.data.synthetic = dict(generator=generator(arg.dataset))

    # The arguments of models.mclnet.MCLNet.
    config.model = ml_collections.ConfigDict()
    config.model.depth = 18
    config.model.width_multiplier = pick(0.25, large=0.5, tiny=1 / 16)
    config.model.last_stride = 1
    # Per stage; at most one block per stage in the demo (set below).
    config.model.non_local_counts = common.AGW_NON_LOCAL
    # 1 reproduces the release's integer-division quirk; None = C // 2.
    config.model.non_local_inter = 1
    config.model.pooling = "gem"
    config.model.dtype = "float32"
    # "auto" (XLA:CPU-friendly forms on the CPU backend), "xla" or "cpu".
    config.model.kernels = "auto"
    # "none", "blocks" or "stages": recompute in the backward pass to save
    # memory (MCLNet.remat).
    config.model.remat = "none"

    # Where the weights come from.
    config.init = ml_collections.ConfigDict()
    # Explicitly from scratch: no ImageNet weights at this size.
    config.init.pretrained = "random"
    # A checkpoint of the authors' release (converted with `python -m
    # mclnet_jax.tools.convert_release`) for --mode=evaluate.
    config.init.release_checkpoint = placeholder(str)

    config.loss = ml_collections.ConfigDict()
    config.loss.triplet = "wrt"  # "wrt" (AGW) or "hard" (Base).
    config.loss.triplet_margin = 0.3  # Only for "hard".
    # "release": the release's row-maximum quirk in the WRT weights;
    # "stable": a proper masked maximum (see losses.wrt_triplet_loss).
    config.loss.wrt_variant = "release"
    config.loss.label_smoothing = 0.0
    config.loss.mcm = True  # Modality confusion (the MCM classifier).
    config.loss.confusion_weight = 1.0
    config.loss.ica = True  # Identity-aware center aggregation.
    config.loss.cca = True  # Camera-aware center aggregation.
    config.loss.center_weight = 5e-4  # lambda of Eq. 8.
    # The paper's 8 and 4500 for D = 2048, scaled by D / 2048 (D = 512 x
    # width) so the margins keep their meaning; the tiny run keeps D = 128's.
    feature_dim = 512 * pick(0.25, large=0.5, tiny=0.25)
    config.loss.sigma = 8.0 * feature_dim / 2048
    config.loss.rho = 4500.0 * feature_dim / 2048
    # "release": the code's hinges on batch means; "paper": Eq. 5/6's
    # per-sample hinges.
    config.loss.center_variant = "release"
    # False (the release): centers stay at their N(0, 1) init; True (the
    # paper's reading): trained with the heads' lr and no weight decay.
    config.loss.train_centers = False

    # The release's SGD, one lr for all layers (nothing pretrained).
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = ml_collections.ConfigDict()
    config.optimizer.schedule.kind = "epochs"
    # Linear warm-up (the release: 10 of 201 epochs): without it, whether a
    # run from scratch settles on the shared or on the modality-specific
    # cues is largely down to the seed (docs/demo_findings.md).
    config.optimizer.schedule.warmup_epochs = pick(2, large=3, tiny=0)
    config.optimizer.schedule.boundaries = pick((8,), large=(20,), tiny=(8,))
    config.optimizer.schedule.factors = (0.1,)
    # Full-match regexes on "model/<param path>" and "centers/<name>".
    config.optimizer.lr_mults = ((".*", 1.0),)
    config.optimizer.wd_mults = (("centers/.*", 0.0), (".*", 1.0))

    # The modality classifier's own SGD (MCM), at a constant lr.
    config.mcm_optimizer = ml_collections.ConfigDict()
    config.mcm_optimizer.lr = 0.1
    config.mcm_optimizer.momentum = 0.9
    config.mcm_optimizer.nesterov = True
    config.mcm_optimizer.weight_decay = 5e-4
    config.mcm_optimizer.schedule = ml_collections.ConfigDict()
    config.mcm_optimizer.schedule.kind = "constant"
    config.mcm_optimizer.lr_mults = ((".*", 1.0),)
    config.mcm_optimizer.wd_mults = ((".*", 1.0),)

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = pick(200, large=1000, tiny=4)
    config.checkpoint.keep = 2
    # "<evaluator>/<path into its results>": keep the best checkpoint by it
    # (checkpoints_best/); None: no best.
    config.checkpoint.best_metric = placeholder(str)

    # How evaluated variables are prepared, for every evaluator.
    config.eval = ml_collections.ConfigDict()
    # BatchNorm statistics recomputed for the evaluated weights on this many
    # training batches (0: the running ones, as the release): from scratch
    # the running statistics lag the weights (non-finite features after 4
    # steps of the tiny run).
    config.eval.precise_bn_batches = 8

    # Test-time flip: also "<feature>+flip" rows, the mean of each image's
    # and its mirror's features (one more predict call per batch).
    config.eval.flip = False
    # Average query expansion (fast-reid's AQE, one round): also
    # "<protocol>+aqe" rows, over the aqe_k nearest, weights cos ** aqe_alpha.
    config.eval.aqe = False
    config.eval.aqe_k = 5
    config.eval.aqe_alpha = 3.0
    # The SYSU-MM01 kit's evaluation/data_split/rand_perm_cam.mat: SYSU
    # galleries drawn as the kit draws them; None: the community's draw.
    config.eval.sysu_rand_perm = placeholder(str)

    # Named evaluators; every_steps 0: never during training, at_end: on the
    # final state.
    config.evals = ml_collections.ConfigDict()
    # The protocol of the generated layout (SYSU: both search modes; RegDB
    # and LLCM: both directions).
    fields = {
        "sysu": dict(
            # Search modes: "all" (gallery cams 1, 2, 4, 5), "indoor" (1, 2).
            modes=("all", "indoor"),
            num_trials=pick(10, large=10, tiny=2),  # Random gallery draws.
            num_shots=1,  # Gallery images per identity and camera.
        ),
        "regdb": dict(),  # One gallery: no trials.
        "llcm": dict(
            num_trials=pick(10, large=10, tiny=2),  # Random gallery draws.
            llcm_transposed_vis_to_ir=False,  # The correct visible->infrared.
        ),
    }[arg.dataset]
    config.evals.test = dict(
        type=arg.dataset,
        split="test",
        every_steps=0,
        at_end=True,
        features="model",
        **fields,
        # k-reciprocal re-ranking (Zhong et al., CVPR 2017) of the distances.
        rerank=False,
        rerank_k1=20,
        rerank_k2=6,
        rerank_lambda=0.3,
    )
    if not arg.tiny:
        # The same protocol on raw pixels: the floor without learning.
        config.evals.raw_pixels = dict(config.evals.test, features="pixels")
    # Rank lists, CMC, t-SNE and distance histograms of `of`'s features.
    config.evals.figures = dict(
        type="figures",
        split="test",
        every_steps=0,
        at_end=True,
        of="test",
        # A features="pixels" entry whose CMC is overlaid.
        baseline="" if arg.tiny else "raw_pixels",
    )
    # Cross-dataset: the other layouts' test protocols (generated too).
    common.add_cross_dataset_evals(
        config,
        arg.eval_on,
        own=arg.dataset,
        data={
            name: dict(
                builder_config=_DATASETS[name][1],
                synthetic=dict(generator=generator(name)),
            )
            for name in _DATASETS
        },
        num_trials=pick(10, large=10, tiny=2),
    )

    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = placeholder(str)
    config.distributed.num_processes = placeholder(int)
    config.distributed.process_id = placeholder(int)
    # e.g. "gloo" for multi-process CPU runs.
    config.distributed.cpu_collectives = placeholder(str)
    common.apply_variant(config, arg.variant)
    if arg.dataset == "regdb":
        config.loss.cca = False  # One camera per modality (configs/regdb.py).
    config.model.non_local_counts = tuple(
        min(c, 1) for c in config.model.non_local_counts
    )
    # Erasing of either kind (the release's, CAJ's) off, as above.
    config.data.random_erasing = 0.0
    config.data.channel_erasing = 0.0
    return config
