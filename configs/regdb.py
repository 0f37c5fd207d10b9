r"""MCLNet on RegDB with the paper's settings (ResNet-50, ImageNet init).

Run one trial (the paper reports the mean over trials 1..10):

  for t in $(seq 1 10); do python -m mclnet_jax.main \
      --config=regdb:trial=$t --workdir=$HOME/runs/regdb_t$t \
      --config.data.manual_dir=$HOME/datasets/RegDB \
      --config.init.pretrained=$HOME/weights/resnet50.safetensors; done

`manual_dir` holds Visible/, Thermal/ and idx/ (train_visible_{t}.txt, ...).
Both directions (visible->infrared, infrared->visible) are evaluated on the
trial's 206 test identities; results.json of each workdir holds the trial.
Everything else is configs/sysu.py's training.

Arguments after the colon, comma-separated (a bare word is the variant):

  trial=T        1..10 (default 1): the TFDS config "trial_T".
  variant=NAME   ablation row (configs/common.py VARIANTS), default mclnet.
                 As in the paper, CCA is not used on RegDB (one camera per
                 modality): every variant here has config.loss.cca = False.
  eval_on=A+B    also evaluate the final model on other datasets' test
                 protocols (cross-dataset; names among sysu, llcm), each
                 into results_test_<name>.*; their folders:
                 --config.evals.test_<name>.data.manual_dir=PATH
"""

import ml_collections

from mclnet_jax.configs import common


def get_config(arg=None):
    """The config of `--config=regdb:ARG`."""
    arg = common.parse_arg(arg, variant="mclnet", trial=1, eval_on="")
    if not 1 <= arg.trial <= 10:
        raise ValueError(f"trial must be in 1..10, got {arg.trial}.")
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.variant = arg.variant  # A row of common.VARIANTS, applied last.
    config.seed = 0
    # The release's loop is `range(0, 201)`: epochs 0..200.
    config.num_epochs = 201
    config.max_steps = placeholder(int)  # Stop early; None: num_epochs.
    config.log_every_steps = 50

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "regdb"  # TFDS builder name.
    config.data.builder_config = f"trial_{arg.trial}"  # The trial's ids.
    # The raw dataset folder (TFDS manual_dir); None: ~/datasets/RegDB.
    config.data.manual_dir = placeholder(str)
    # Prepared TFDS data; None: TFDS default (~/tensorflow_datasets).
    config.data.data_dir = placeholder(str)
    config.data.train_split = "train"
    # "raw" (uint8, the fastest to read), "png" or "jpeg"; None: the builder
    # config's (raw unless its name ends in _png or _jpeg). docs/datasets.md.
    config.data.image_format = placeholder(str)
    config.data.image_size = (288, 144)  # (height, width)
    config.data.pad = 10  # Pixels of padding before the random crop.
    config.data.random_erasing = common.RANDOM_ERASING_P  # Probability.
    # Ours, not the release's: probabilities of a grey (luma) visible image
    # and of a random piecewise-linear intensity curve
    # (data_pipeline/augment.py); off, as in the release.
    config.data.random_grey = 0.0
    config.data.random_remap = 0.0
    # CAJ's channel augmentation (Ye et al., ICCV 2021; docs/training.md
    # "Channel augmentation (CAJ)"): a third view of the visible images with
    # one channel copied into all three, the probability of its adaptive grey
    # on an infrared image (CAJ: 1.0), and of its random erasing (CAJ: 0.5;
    # replaces random_erasing). Off, as in the release; on in mclnet_caj.
    config.data.channel_exchange = False
    config.data.channel_adaptive_grey = 0.0
    config.data.channel_erasing = 0.0
    config.data.num_identities = 8  # P identities per batch.
    config.data.num_instances = 4  # K images per identity and modality.
    # None: the release's floor(max(N_vis, N_ir) / (P * K)) + 1.
    config.data.steps_per_epoch = placeholder(int)
    config.data.eval_batch_size = 64
    config.data.synthetic = None  # Real data (see configs/synthetic.py).

    # The arguments of models.mclnet.MCLNet.
    config.model = ml_collections.ConfigDict()
    config.model.depth = 50
    config.model.width_multiplier = 1.0
    config.model.last_stride = 1
    config.model.non_local_counts = common.AGW_NON_LOCAL  # Per stage.
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
    # torchvision-named ImageNet ResNet .safetensors file, or "random" for an
    # explicit random initialisation; docs/checkpoints.md "ImageNet weights".
    config.init.pretrained = placeholder(str)
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
    # Camera-aware center aggregation: off on RegDB in every variant.
    config.loss.cca = False
    config.loss.center_weight = 5e-4  # lambda of Eq. 8.
    config.loss.sigma = 8.0
    config.loss.rho = 4500.0
    # "release": the code's hinges on batch means; "paper": Eq. 5/6's
    # per-sample hinges.
    config.loss.center_variant = "release"
    # False (the release): centers stay at their N(0, 1) init; True (the
    # paper's reading): trained with the heads' lr and no weight decay.
    config.loss.train_centers = False

    # The release's SGD; lr x0.1 for the pretrained backbone.
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = ml_collections.ConfigDict()
    config.optimizer.schedule.kind = "epochs"
    config.optimizer.schedule.warmup_epochs = 10
    config.optimizer.schedule.boundaries = (20, 50)  # Epochs.
    config.optimizer.schedule.factors = (0.1, 0.01)
    # Full-match regexes on "model/<param path>" and "centers/<name>".
    config.optimizer.lr_mults = (
        ("model/(bnneck|classifier)/.*", 1.0),
        ("model/.*", 0.1),
        ("centers/.*", 1.0),
    )
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
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 2
    # "<evaluator>/<path into its results>": keep the best checkpoint by it
    # (checkpoints_best/); None: no best.
    config.checkpoint.best_metric = placeholder(str)

    # How evaluated variables are prepared, for every evaluator.
    config.eval = ml_collections.ConfigDict()
    # > 0: BatchNorm statistics recomputed for the evaluated weights on this
    # many training batches; 0: the running statistics, as the release.
    config.eval.precise_bn_batches = 0

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
    # Both directions on the trial's test ids (one gallery: no trials).
    config.evals.test = dict(
        type="regdb",
        split="test",
        every_steps=0,
        at_end=True,
        features="model",
        # k-reciprocal re-ranking (Zhong et al., CVPR 2017) of the distances.
        rerank=False,
        rerank_k1=20,
        rerank_k2=6,
        rerank_lambda=0.3,
    )
    # Rank lists, CMC, t-SNE and distance histograms of `of`'s features.
    config.evals.figures = dict(
        type="figures",
        split="test",
        every_steps=0,
        at_end=True,
        of="test",
        baseline="",  # A features="pixels" entry whose CMC is overlaid.
    )
    # Cross-dataset (eval_on=A+B): the other datasets' test protocols on the
    # final model; their folders: --config.evals.test_<name>.data.manual_dir.
    common.add_cross_dataset_evals(config, arg.eval_on, own="regdb")

    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = placeholder(str)
    config.distributed.num_processes = placeholder(int)
    config.distributed.process_id = placeholder(int)
    # e.g. "gloo" for multi-process CPU runs.
    config.distributed.cpu_collectives = placeholder(str)
    common.apply_variant(config, arg.variant)
    config.loss.cca = False  # One camera per modality.
    return config
