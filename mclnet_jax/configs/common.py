r"""Shared defaults, the ablation variants and `--config=FILE:ARG` parsing.

`default_config()` is MCLNet on SYSU-MM01 as the authors' release trains it:
every choice that changes the numbers follows the release as it runs, and
each departure (the paper's equations, stable WRT, trained centers, model
selection on validation ids, ...) is a named switch (README "Release, paper
and our switches").

`VARIANTS` are the rows of the paper's Tables 1-3 as named overrides (README
"Configs and ablations"); "agw_re" is the paper's AGW*, "hard" is batch-hard
triplet with margin 0.3.
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

# AGW's non-local placement: 2 blocks in layer2, 3 in layer3.
AGW_NON_LOCAL = (0, 2, 3, 0)
# The release's random erasing probability.
RANDOM_ERASING_P = 0.8

_BASE = {
    "loss.triplet": "hard",
    "model.pooling": "avg",
    "model.non_local_counts": (0, 0, 0, 0),
    "data.random_erasing": 0.0,
}
_AGW = {
    "loss.triplet": "wrt",
    "model.pooling": "gem",
    "model.non_local_counts": AGW_NON_LOCAL,
    "data.random_erasing": 0.0,
}
# AGW*: AGW with random erasing.
_AGW_RE = {**_AGW, "data.random_erasing": RANDOM_ERASING_P}


def _modules(*, mcm: bool, ica: bool, cca: bool) -> dict[str, bool]:
    return {"loss.mcm": mcm, "loss.ica": ica, "loss.cca": cca}


_NONE = _modules(mcm=False, ica=False, cca=False)
_MCM = _modules(mcm=True, ica=False, cca=False)

# Name -> overrides (dotted field paths). Every variant sets the same fields.
VARIANTS = {
    "base": {**_BASE, **_NONE},
    "base_mcm": {**_BASE, **_MCM},
    "base_ica_cca": {**_BASE, **_modules(mcm=False, ica=True, cca=True)},
    "agw": {**_AGW, **_NONE},
    "agw_mcm": {**_AGW, **_MCM},
    "agw_re": {**_AGW_RE, **_NONE},
    "agw_re_mcm": {**_AGW_RE, **_MCM},
    "agw_re_ica": {**_AGW_RE, **_modules(mcm=False, ica=True, cca=False)},
    "agw_re_cca": {**_AGW_RE, **_modules(mcm=False, ica=False, cca=True)},
    "agw_re_ica_cca": {**_AGW_RE, **_modules(mcm=False, ica=True, cca=True)},
    "mclnet": {**_AGW_RE, **_modules(mcm=True, ica=True, cca=True)},
}


def override(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Sets existing fields of `config` in place.

    Args:
      config: the config to change.
      overrides: field path -> value; a path is dotted ("loss.triplet") and
        a mapping value given for a ConfigDict field sets its fields in
        turn ({"loss": {"triplet": "wrt"}}).

    Returns:
      `config`.

    Raises:
      ValueError: a path names no existing field.
    """
    for path, value in overrides.items():
        keys = path.split(".")
        node = config
        for depth, key in enumerate(keys):
            where = ".".join(["config", *keys[:depth]])
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(
                    f"Unknown config field {path!r}: {where} has no fields."
                )
            if key not in node:
                raise ValueError(
                    f"Unknown config field {path!r}: {where} has no "
                    f"{key!r}; its fields: {sorted(node.keys())}."
                )
            if depth < len(keys) - 1:
                node = node[key]
        if isinstance(value, Mapping) and isinstance(
            node[keys[-1]], ml_collections.ConfigDict
        ):
            override(config, {f"{path}.{k}": v for k, v in value.items()})
        else:
            node[keys[-1]] = value
    return config


def apply_variant(
    config: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
    """Sets `config.variant` and the overrides of `VARIANTS[name]`."""
    if name not in VARIANTS:
        raise ValueError(
            f"Unknown variant {name!r}; choose one of {sorted(VARIANTS)}."
        )
    config.variant = name
    return override(config, VARIANTS[name])


def parse_arg(arg: str | None, defaults: Mapping[str, Any]) -> dict:
    """'mclnet' or 'variant=base,trial=3' -> dict over `defaults`' keys.

    A bare word is the variant. Values are converted to the type of the
    default (int, bool via 0/1/true/false, str).

    Args:
      arg: what follows the colon of `--config=FILE:ARG`, or None.
      defaults: argument name -> default value.

    Returns:
      `defaults` updated with the arguments given.

    Raises:
      ValueError: an unknown argument name or a value of the wrong type.
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
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(
                    f"{key} must be an integer, got {value!r}."
                ) from None
        else:
            out[key] = value
    return out


def config_from_arg(
    setting: Callable[..., ml_collections.ConfigDict], arg: str | None
) -> ml_collections.ConfigDict:
    """Calls `setting` with `arg` parsed against its keyword defaults.

    Args:
      setting: a function of `settings` (e.g. `settings.sysu`); its
        parameters are the argument names, their defaults give the types.
      arg: what follows the colon of `--config=FILE:ARG`, or None.

    Returns:
      The config.
    """
    defaults = {
        name: p.default
        for name, p in inspect.signature(setting).parameters.items()
    }
    return setting(**parse_arg(arg, defaults))


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


def default_config() -> ml_collections.ConfigDict:
    """The paper's settings (SYSU-MM01, ResNet-50, ImageNet init)."""
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.variant = "mclnet"
    config.seed = 0
    # The release's loop is `range(0, 201)`: epochs 0..200.
    config.num_epochs = 201
    # Stop early (e.g. smoke runs); None trains num_epochs.
    config.max_steps = placeholder(int)
    config.log_every_steps = 50
    # Validation (model selection) every this many steps; 0 disables. Only
    # used when config.data.val_split is set.
    config.val_every_steps = 0

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "sysu_mm01"  # TFDS builder name.
    config.data.builder_config = placeholder(str)
    # The raw dataset folder (TFDS manual_dir); None: ~/datasets/SYSU-MM01.
    config.data.manual_dir = placeholder(str)
    # Prepared TFDS data; None: TFDS default (~/tensorflow_datasets).
    config.data.data_dir = placeholder(str)
    config.data.train_split = "train"
    # A split of other identities used only to pick the best checkpoint
    # (SYSU "val" with train_split "train_only"); never the test split.
    config.data.val_split = placeholder(str)
    config.data.test_split = "test"
    # How the builders store the pixels: "raw" (uint8, lossless, the
    # fastest to read), "png" (lossless, smaller) or "jpeg" (lossy, the
    # smallest); None: the builder config's (raw unless its name ends in
    # _png or _jpeg). README "Datasets".
    config.data.image_format = placeholder(str)
    config.data.image_size = (288, 144)  # (height, width)
    config.data.pad = 10
    config.data.random_erasing = RANDOM_ERASING_P
    # Ours, not the paper's or the release's: probability that a training
    # image is replaced by its grey (luma) version (data_pipeline/augment.py,
    # "random grey"); infrared images are grey already. Off here; the
    # synthetic demo turns it on (settings.synthetic).
    config.data.random_grey = 0.0
    # Ours too: probability that a training image's pixel values go through
    # a random piecewise-linear curve (data_pipeline/augment.py, "random
    # remap"), so that absolute brightness stops being an identity cue. Off
    # here; the synthetic demo turns it on.
    config.data.random_remap = 0.0
    config.data.num_identities = 8  # P identities per batch.
    config.data.num_instances = 4  # K images per identity and modality.
    # None: the release's floor(max(N_vis, N_ir) / (P * K)) + 1.
    config.data.steps_per_epoch = placeholder(int)
    config.data.eval_batch_size = 64
    # Set by settings.synthetic: {"generator": kwargs of
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
    # How convolutions are computed: "auto" (XLA:CPU-friendly forms on the
    # CPU backend, XLA's elsewhere), "xla" or "cpu"; see MCLNet.kernels.
    config.model.kernels = "auto"
    # "none", "blocks" or "stages": recompute blocks (stages, then blocks)
    # in the backward pass to save memory (MCLNet.remat).
    config.model.remat = "none"
    # torchvision-named ImageNet ResNet .safetensors file, or "random" for an
    # explicit random initialisation. Required for depth >= 50 (the release's
    # lr diverges from scratch); see README "Pretrained weights".
    config.model.pretrained = placeholder(str)
    # A checkpoint of the authors' release (embed_net state_dict converted
    # with `python -m mclnet_jax.tools.convert_release`) for --mode=evaluate.
    config.model.release_checkpoint = placeholder(str)

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
    config.checkpoint.best_metric = placeholder(str)

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
    # > 0: evaluate with BatchNorm statistics recomputed for the evaluated
    # weights on this many training batches (evaluators/batch_stats.py);
    # 0: the running statistics of training, as the release evaluates.
    config.eval.precise_bn_batches = 0
    # Figures (rank lists, CMC, t-SNE, distance histograms) after training.
    config.eval.figures = True

    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = placeholder(str)
    config.distributed.num_processes = placeholder(int)
    config.distributed.process_id = placeholder(int)
    # e.g. "gloo" for multi-process CPU runs.
    config.distributed.cpu_collectives = placeholder(str)
    return config
