r"""Shared defaults: MCLNet on SYSU-MM01 as the authors' release trains it.

Every choice that changes the numbers follows the release as it runs; each
departure (the paper's equations, stable WRT, trained centers, model
selection on validation ids, ...) is a named switch, listed in the README's
"Release, paper and our switches" table.

Not run directly; `configs/sysu.py`, `configs/regdb.py` and
`configs/synthetic.py` start from `get_config()` and change what differs.

Ablation variants (the rows of the paper's Tables 1-3) are switches here,
set together by `apply_variant(config, name)`:

  variant        triplet  pooling  non-local  rand. erasing  MCM  ICA  CCA
  base           hard     avg      no         no             -    -    -
  base_mcm       hard     avg      no         no             x    -    -
  base_ica_cca   hard     avg      no         no             -    x    x
  agw            wrt      gem      yes        no             -    -    -
  agw_mcm        wrt      gem      yes        no             x    -    -
  agw_re         wrt      gem      yes        yes            -    -    -
  agw_re_mcm     wrt      gem      yes        yes            x    -    -
  agw_re_ica     wrt      gem      yes        yes            -    x    -
  agw_re_cca     wrt      gem      yes        yes            -    -    x
  agw_re_ica_cca wrt      gem      yes        yes            -    x    x
  mclnet         wrt      gem      yes        yes            x    x    x

("agw_re" is the paper's AGW*; "hard" is batch-hard triplet, margin 0.3.)
"""

import ml_collections

# name -> (triplet, pooling, non_local, random_erasing, mcm, ica, cca)
VARIANTS = {
    "base": ("hard", "avg", False, False, False, False, False),
    "base_mcm": ("hard", "avg", False, False, True, False, False),
    "base_ica_cca": ("hard", "avg", False, False, False, True, True),
    "agw": ("wrt", "gem", True, False, False, False, False),
    "agw_mcm": ("wrt", "gem", True, False, True, False, False),
    "agw_re": ("wrt", "gem", True, True, False, False, False),
    "agw_re_mcm": ("wrt", "gem", True, True, True, False, False),
    "agw_re_ica": ("wrt", "gem", True, True, False, True, False),
    "agw_re_cca": ("wrt", "gem", True, True, False, False, True),
    "agw_re_ica_cca": ("wrt", "gem", True, True, False, True, True),
    "mclnet": ("wrt", "gem", True, True, True, True, True),
}

# AGW's non-local placement: 2 blocks in layer2, 3 in layer3.
AGW_NON_LOCAL = (0, 2, 3, 0)
# The release's random erasing probability.
RANDOM_ERASING_P = 0.8


def apply_variant(
    config: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
    """Sets the ablation switches of `name` (see the module docstring)."""
    if name not in VARIANTS:
        raise ValueError(
            f"Unknown variant {name!r}; choose one of {sorted(VARIANTS)}."
        )
    triplet, pooling, non_local, erasing, mcm, ica, cca = VARIANTS[name]
    config.variant = name
    config.loss.triplet = triplet
    config.model.pooling = pooling
    config.model.non_local_counts = AGW_NON_LOCAL if non_local else (0, 0, 0, 0)
    config.data.random_erasing = RANDOM_ERASING_P if erasing else 0.0
    config.loss.mcm = mcm
    config.loss.ica = ica
    config.loss.cca = cca
    return config


def parse_arg(arg: str | None, defaults: dict) -> dict:
    """'mclnet' or 'variant=base,trial=3' -> dict over `defaults`' keys.

    A bare word is the variant. Values are converted to the type of the
    default (int, bool via 0/1/true/false, str).
    """
    out = dict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            key, value = "variant", item
        else:
            key, value = (s.strip() for s in item.split("=", 1))
        if key not in defaults:
            raise ValueError(
                f"Unknown config argument {key!r} in {arg!r}; known: "
                f"{sorted(defaults)}."
            )
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError(f"{key} must be true/false, got {value!r}.")
            out[key] = value.lower() in ("1", "true")
        elif isinstance(default, int):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _sgd_config(*, schedule_kind: str) -> ml_collections.ConfigDict:
    """The release's SGD: lr 0.1, nesterov momentum 0.9, weight decay 5e-4."""
    opt = ml_collections.ConfigDict()
    opt.lr = 0.1
    opt.momentum = 0.9
    opt.nesterov = True
    opt.weight_decay = 5e-4
    opt.schedule = ml_collections.ConfigDict()
    opt.schedule.kind = schedule_kind
    return opt


def get_config() -> ml_collections.ConfigDict:
    """The paper's settings (SYSU-MM01, ResNet-50, ImageNet init)."""
    config = ml_collections.ConfigDict()
    config.variant = "mclnet"
    config.seed = 0
    # The release's loop is `range(0, 201)`: epochs 0..200.
    config.num_epochs = 201
    # Stop early (e.g. smoke runs); None trains num_epochs.
    config.max_steps = ml_collections.config_dict.placeholder(int)
    config.log_every_steps = 50
    # Validation (model selection) every this many steps; 0 disables. Only
    # used when config.data.val_split is set.
    config.val_every_steps = 0

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "sysu_mm01"  # TFDS builder name.
    config.data.builder_config = ml_collections.config_dict.placeholder(str)
    # The raw dataset folder (TFDS manual_dir); None: ~/datasets/SYSU-MM01.
    config.data.manual_dir = ml_collections.config_dict.placeholder(str)
    # Prepared TFDS data; None: TFDS default (~/tensorflow_datasets).
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    config.data.train_split = "train"
    # A split of other identities used only to pick the best checkpoint
    # (SYSU "val" with train_split "train_only"); never the test split.
    config.data.val_split = ml_collections.config_dict.placeholder(str)
    config.data.test_split = "test"
    config.data.image_size = (288, 144)  # (height, width)
    config.data.pad = 10
    config.data.random_erasing = RANDOM_ERASING_P
    # Ours, not the paper's or the release's: probability that a training
    # image is replaced by its grey (luma) version (data_pipeline/augment.py,
    # "random grey"); infrared images are grey already. Off here; the
    # synthetic demo turns it on (configs/synthetic.py).
    config.data.random_grey = 0.0
    config.data.num_identities = 8  # P identities per batch.
    config.data.num_instances = 4  # K images per identity and modality.
    # None: the release's floor(max(N_vis, N_ir) / (P * K)) + 1.
    config.data.steps_per_epoch = ml_collections.config_dict.placeholder(int)
    config.data.eval_batch_size = 64
    # Set by configs/synthetic.py: {"generator": kwargs of
    # data_pipeline.synthetic.generate_sysu / generate_regdb}; the data is
    # generated into the workdir and used as manual_dir.
    config.data.synthetic = None

    config.model = ml_collections.ConfigDict()
    config.model.depth = 50
    config.model.width_multiplier = 1.0
    config.model.last_stride = 1
    config.model.non_local_counts = AGW_NON_LOCAL
    # 1 reproduces the release's integer-division quirk; None = C // 2.
    config.model.non_local_inter = 1
    config.model.pooling = "gem"
    config.model.dtype = "float32"
    # torchvision-named ImageNet ResNet .safetensors file, or "random" for an
    # explicit random initialisation. Required for depth >= 50 (the release's
    # lr diverges from scratch); see README "Pretrained weights".
    config.model.pretrained = ml_collections.config_dict.placeholder(str)
    # A checkpoint of the authors' release (embed_net state_dict converted
    # with `python -m mclnet_jax.tools.convert_release`) for --mode=evaluate.
    config.model.release_checkpoint = ml_collections.config_dict.placeholder(
        str
    )

    config.loss = ml_collections.ConfigDict()
    config.loss.triplet = "wrt"  # "wrt" (AGW) or "hard" (Base).
    config.loss.triplet_margin = 0.3  # Only for "hard".
    # "release": the release's row-maximum quirk in the WRT weights;
    # "stable": a proper masked maximum (see losses.wrt_triplet_loss).
    config.loss.wrt_variant = "release"
    config.loss.label_smoothing = 0.0
    config.loss.mcm = True
    config.loss.confusion_weight = 1.0
    config.loss.ica = True
    config.loss.cca = True
    config.loss.center_weight = 5e-4  # lambda of Eq. 8.
    config.loss.sigma = 8.0
    config.loss.rho = 4500.0
    # "release": the code's hinges on batch means; "paper": Eq. 5/6's
    # per-sample hinges.
    config.loss.center_variant = "release"
    # False (the release): centers stay at their N(0, 1) init. True (the
    # paper's reading): they are trained by the extractor's optimiser with
    # the heads' lr and no weight decay (optimizer.lr_mults / wd_mults).
    config.loss.train_centers = False

    config.optimizer = _sgd_config(schedule_kind="epochs")
    config.optimizer.schedule.warmup_epochs = 10
    config.optimizer.schedule.boundaries = (20, 50)
    config.optimizer.schedule.factors = (0.1, 0.01)
    # Full-match regexes on "model/<param path>" and "centers/<name>".
    config.optimizer.lr_mults = (
        ("model/(bnneck|classifier)/.*", 1.0),
        ("model/.*", 0.1),
        ("centers/.*", 1.0),
    )
    config.optimizer.wd_mults = (("centers/.*", 0.0), (".*", 1.0))

    config.mcm_optimizer = _sgd_config(schedule_kind="constant")
    config.mcm_optimizer.lr_mults = ((".*", 1.0),)
    config.mcm_optimizer.wd_mults = ((".*", 1.0),)

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 2
    # Path into the validation results, e.g. "all/bn/mAP"; None: no best.
    config.checkpoint.best_metric = ml_collections.config_dict.placeholder(str)

    config.eval = ml_collections.ConfigDict()
    config.eval.protocol = "sysu"  # "sysu" or "regdb".
    config.eval.num_trials = 10
    config.eval.modes = ("all", "indoor")  # SYSU search modes.
    # Also evaluate raw pixels with the same protocol (a no-learning floor).
    config.eval.raw_pixel_baseline = False
    # k-reciprocal re-ranking (Zhong et al., CVPR 2017) of the distances.
    config.eval.rerank = False
    config.eval.rerank_k1 = 20
    config.eval.rerank_k2 = 6
    config.eval.rerank_lambda = 0.3
    # Figures (rank lists, CMC, t-SNE, distance histograms) after training.
    config.eval.figures = True

    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = (
        ml_collections.config_dict.placeholder(str)
    )
    config.distributed.num_processes = ml_collections.config_dict.placeholder(
        int
    )
    config.distributed.process_id = ml_collections.config_dict.placeholder(int)
    # e.g. "gloo" for multi-process CPU runs.
    config.distributed.cpu_collectives = ml_collections.config_dict.placeholder(
        str
    )
    return config
