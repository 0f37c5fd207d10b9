"""Training augmentation: its settings, random draws and chains.

The chain is the release's: pad 10 black pixels and crop back, flip with p 0.5,
normalise with the ImageNet statistics, then random erasing (p 0.8) of the
normalised image. Samplers (`sample_*`) draw a batch's parameters from one
stateless seed ([2] int, Philox); the `image_ops` apply them. The pipeline
draws `sample_step_params(step_seed(seed, step))` for the global batch (its
`sample_train_params` for the visible and infrared rows), runs
`crop_and_flip` per image and `jit_normalize_and_erase` per batch, so an
image's augmentation depends only on (seed, step, row). Random grey and random
intensity remapping (`TrainAugment.grey_probability`, `remap_probability`, off
by default) are ours. The channel augmentation of CAJ (Ye et al., "Channel
Augmented Joint Learning for Visible-Infrared Recognition", ICCV 2021; off by
default) follows the authors' released code: a third view of the visible
images with one channel replicated (`channel_exchange`), adaptive grey on the
infrared images (`channel_adaptive_grey`) and their random erasing
(`channel_erasing`), each after normalisation; `sample_step_params` draws a
step's rows of every view. See the docs/datasets.md "The input pipeline" and
docs/training.md "Channel augmentation (CAJ)".
"""

import dataclasses
import numbers

import numpy as np

from data_pipeline import image_ops
from data_pipeline.tf_setup import tf

# Random erasing as the release. The fill values are CIFAR-10's channel
# means, written as-is into the *normalised* image: a quirk of the release
# kept for fidelity.
ERASING_PROBABILITY = 0.8
ERASING_AREA_RANGE = (0.1, 0.8)
ERASING_MIN_ASPECT = 0.3
ERASING_MAX_ATTEMPTS = 100
ERASING_FILL = (0.4914, 0.4822, 0.4465)

# CAJ's channel augmentation as its release runs it (ICCV21_CAJ/ChannelAug.py
# and data_loader.py of github.com/mangye16/Cross-Modal-Re-ID-baseline), all
# after ToTensor + Normalize. ChannelRandomErasing is the erasing loop above
# (100 attempts, same box sampling) with its own area range and p 0.5; its
# fill is the same CIFAR-10 means, again written into the normalised image.
CAJ_ERASING_PROBABILITY = 0.5
CAJ_ERASING_AREA_RANGE = (0.02, 0.4)
CAJ_ERASING_MIN_ASPECT = 0.3
CAJ_ERASING_FILL = (0.4914, 0.4822, 0.4465)
# ChannelExchange(gray=2): idx = random.randint(0, gray), bounds inclusive;
# 0, 1, 2 copy that channel (R, G, B) into all three, 3 (reached only with
# gray >= 3) is grey. At the released gray=2 the grey branch never runs.
CAJ_EXCHANGE_GRAY = 2
# ChannelAdapGray(probability=0.5): idx = random.randint(0, 3); 0, 1, 2 copy
# that channel, 3 is grey with probability 0.5, else the image is kept. The
# release applies it to every infrared image (its own `if uniform > p:
# return` at the top is commented out).
CAJ_ADAPTIVE_GREY_PROBABILITY = 0.5
# Both grey branches: 0.2989 R + 0.5870 G + 0.1140 B of the normalised
# channels (not the luma of the pixels).
CAJ_GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)

# Channel modes (params["channel"]): what `apply_channel_modes` does to a row.
CHANNEL_KEEP = -1  # Unchanged; 0, 1, 2: that channel in all three.
CHANNEL_GREY = 3  # CAJ's grey in all three channels.

# Views of a step's rows (`sample_train_params(views=...)`): the visible and
# infrared images, and CAJ's visible images with exchanged channels.
VISIBLE, INFRARED, VISIBLE_EXCHANGED = 0, 1, 2

# Pinned so that augmentations do not depend on which algorithm
# "auto_select" picks on a given TensorFlow build or device.
_RNG_ALG = "philox"


@dataclasses.dataclass(frozen=True)
class TrainAugment:
    """Training augmentation settings (defaults: the release's).

    Attributes:
      padding: zero padding before the random crop (0 disables the crop).
      flip_probability: horizontal flip probability (0 disables flips).
      erasing_probability: random erasing probability (0 disables erasing).
      erasing_area_range: (sl, sh), erased area as a fraction of H * W.
      erasing_min_aspect: r1; the aspect ratio h / w is uniform in
        [r1, 1 / r1].
      erasing_max_attempts: rectangles tried before leaving the image intact.
      erasing_fill: one value per channel, written after normalisation.
      mean, std: normalisation statistics of [0, 1] pixels.
      grey_probability: ours (not in the paper or the release): probability
        that an image is replaced by its luma in all three channels, so that
        colour stops being an identity cue (infrared images are grey
        already); 0 disables it.
      remap_probability: ours (not in the paper or the release): probability
        that an image's pixel values go through a random piecewise-linear
        curve (`remap_knots` knots, values uniform in [0, 1], not
        necessarily monotonic), so that absolute brightness, which the two
        modalities do not share, stops being an identity cue while edges
        keep their place; 0 disables it.
      remap_knots: knots of the random curve (>= 2).
      channel_exchange: CAJ: each step also yields a third view of its
        visible images ("visible_exchanged": their own crop, flip and
        erasing draws, then `channel_exchange_gray`'s ChannelExchange).
      channel_exchange_gray: CAJ's `gray`: the channel is
        randint(0, gray) (inclusive), 3 and above meaning grey; 2 (the
        release) picks R, G or B, 1/3 each, never grey.
      channel_adaptive_grey: probability that an infrared image goes
        through CAJ's ChannelAdapGray (1.0 in CAJ's release; 0 disables
        it).
      channel_adaptive_grey_probability: ChannelAdapGray's `probability`:
        R, G or B copied (1/4 each), else grey with this probability, else
        kept.
      channel_erasing: probability of CAJ's ChannelRandomErasing (0.5 in
        its release; 0 disables it) on every view: the erasing above with
        area (0.02, 0.4), r1 0.3 and the same fill. It replaces the
        release's erasing, so `erasing_probability` must then be 0.
    """

    padding: int = 10
    flip_probability: float = 0.5
    erasing_probability: float = ERASING_PROBABILITY
    erasing_area_range: tuple[float, float] = ERASING_AREA_RANGE
    erasing_min_aspect: float = ERASING_MIN_ASPECT
    erasing_max_attempts: int = ERASING_MAX_ATTEMPTS
    erasing_fill: tuple[float, ...] = ERASING_FILL
    mean: tuple[float, ...] = image_ops.IMAGENET_MEAN
    std: tuple[float, ...] = image_ops.IMAGENET_STD
    grey_probability: float = 0.0
    remap_probability: float = 0.0
    remap_knots: int = 4
    channel_exchange: bool = False
    channel_exchange_gray: int = CAJ_EXCHANGE_GRAY
    channel_adaptive_grey: float = 0.0
    channel_adaptive_grey_probability: float = CAJ_ADAPTIVE_GREY_PROBABILITY
    channel_erasing: float = 0.0

    @property
    def num_views(self) -> int:
        """Views per step: visible, infrared (and visible exchanged)."""
        return 3 if self.channel_exchange else 2

    @property
    def channel_ops(self) -> bool:
        """Whether any row can get a CAJ channel mode."""
        return self.channel_exchange or self.channel_adaptive_grey > 0

    def __post_init__(self):
        image_ops.check_padding(self.padding)
        _check_probability(self.flip_probability, "flip_probability")
        _check_probability(self.grey_probability, "grey_probability")
        _check_probability(self.remap_probability, "remap_probability")
        if int(self.remap_knots) != self.remap_knots or self.remap_knots < 2:
            raise ValueError(
                "remap_knots must be an integer >= 2, got "
                f"{self.remap_knots!r}."
            )
        _check_erasing(
            self.erasing_probability,
            self.erasing_area_range,
            self.erasing_min_aspect,
            self.erasing_max_attempts,
        )
        image_ops.check_mean_std(self.mean, self.std)
        if len(self.erasing_fill) != len(self.mean):
            raise ValueError(
                f"erasing_fill needs one value per channel ({len(self.mean)}), "
                f"got {tuple(self.erasing_fill)}."
            )
        _check_channel_options(self)


def _check_channel_options(config: TrainAugment) -> None:
    if not isinstance(config.channel_exchange, bool):
        raise ValueError(
            "channel_exchange must be True or False, got "
            f"{config.channel_exchange!r}."
        )
    _check_gray(config.channel_exchange_gray)
    _check_probability(config.channel_adaptive_grey, "channel_adaptive_grey")
    _check_probability(
        config.channel_adaptive_grey_probability,
        "channel_adaptive_grey_probability",
    )
    _check_probability(config.channel_erasing, "channel_erasing")
    if config.channel_erasing > 0 and config.erasing_probability > 0:
        raise ValueError(
            "channel_erasing (CAJ's random erasing) replaces the release's "
            "random erasing: set erasing_probability (config.data."
            "random_erasing) to 0, or channel_erasing to 0."
        )
    if (config.channel_ops or config.channel_erasing > 0) and len(
        config.mean
    ) != 3:
        raise ValueError(
            "CAJ's channel augmentation needs RGB images (3 channels), got "
            f"{len(config.mean)} normalisation channels."
        )


# --------------------------------------------------------------- validation


def _check_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(
            f"seed must be an int32 or int64 tensor of shape [2], got dtype "
            f"{seed.dtype.name}; e.g. step_seed(seed, step) or "
            "tf.constant([a, b])."
        )
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(
            f"seed must have shape [2], got {seed.shape}; e.g. "
            "step_seed(seed, step) or tf.constant([a, b])."
        )
    return seed


def _check_num(num) -> None:
    if num is None or int(num) != num or num < 0:
        raise ValueError(f"num must be a non-negative integer, got {num!r}.")


def _check_probability(probability, name: str) -> None:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {probability}.")


# randint(0, gray) is drawn as an int32 in [0, gray + 1).
_MAX_GRAY = 2**31 - 2


def _check_gray(gray) -> None:
    if (
        isinstance(gray, bool)
        or not isinstance(gray, numbers.Integral)
        or not 0 <= gray <= _MAX_GRAY
    ):
        raise ValueError(
            "channel_exchange_gray (CAJ's `gray`) must be an integer in "
            f"[0, {_MAX_GRAY}], got {gray!r}."
        )


def _check_erasing(probability, area_range, min_aspect, max_attempts) -> None:
    _check_probability(probability, "erasing probability")
    low, high = area_range
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(
            "erasing area_range must satisfy 0 < low <= high <= 1, got "
            f"{tuple(area_range)}."
        )
    if not 0.0 < min_aspect <= 1.0:
        raise ValueError(
            f"erasing min_aspect (r1) must be in (0, 1], got {min_aspect}."
        )
    if int(max_attempts) != max_attempts or max_attempts < 1:
        raise ValueError(
            "erasing max_attempts must be a positive integer, got "
            f"{max_attempts}."
        )


# ------------------------------------------------------------------- seeds


def step_seed(seed, step) -> tf.Tensor:
    """The stateless seed of one training step: a function of (seed, step).

    Args:
      seed: int (or int scalar tensor), the run's seed.
      step: int scalar, the global training step.

    Returns:
      [2] int64.
    """
    base = tf.stack([tf.constant(0, tf.int64), tf.cast(seed, tf.int64)])
    return tf.random.experimental.stateless_fold_in(
        base, tf.cast(step, tf.int64), alg=_RNG_ALG
    )


def split_seed(seed, num: int) -> tf.Tensor:
    """[2] seed -> [num, 2] independent seeds."""
    return tf.random.experimental.stateless_split(
        _check_seed(seed), num, alg=_RNG_ALG
    )


# ---------------------------------------------------------------- samplers


def sample_crop_offsets(seed, *, num: int, padding: int) -> tf.Tensor:
    """Crop origins in the padded image, uniform in [0, 2 * padding] per axis.

    As torchvision's `Pad(padding)` + `RandomCrop((H, W))`.

    Returns:
      [num, 2] int32 (row offset, column offset).
    """
    seed = _check_seed(seed)
    _check_num(num)
    image_ops.check_padding(padding)
    return tf.random.stateless_uniform(
        [num, 2],
        seed,
        minval=0,
        maxval=2 * padding + 1,
        dtype=tf.int32,
        alg=_RNG_ALG,
    )


def sample_flips(seed, *, num: int, probability: float = 0.5) -> tf.Tensor:
    """[num] bool: which images to mirror left-right."""
    seed = _check_seed(seed)
    _check_num(num)
    _check_probability(probability, "flip probability")
    return tf.random.stateless_uniform([num], seed, alg=_RNG_ALG) < probability


def sample_erasing(
    seed,
    *,
    num: int,
    height: int,
    width: int,
    probability: float = ERASING_PROBABILITY,
    area_range: tuple[float, float] = ERASING_AREA_RANGE,
    min_aspect: float = ERASING_MIN_ASPECT,
    max_attempts: int = ERASING_MAX_ATTEMPTS,
) -> dict[str, tf.Tensor]:
    """Random-erasing rectangles of `num` images of size (height, width).

    The release's loop, per image: with probability `probability`, try up to
    `max_attempts` times: target area = U(area_range) * H * W, aspect
    r = U(min_aspect, 1 / min_aspect), h = round(sqrt(area * r)),
    w = round(sqrt(area / r)); the first attempt with h < H and w < W wins
    and its top-left corner is uniform over the positions where it fits
    (inclusive). All attempts are drawn at once and the first valid one
    taken: the same distribution as the sequential loop.

    Returns:
      dict of [num] tensors: "erase" bool (False: leave the image intact),
      "top", "left", "height", "width" int32 (zero where "erase" is False).
    """
    seed = _check_seed(seed)
    _check_num(num)
    _check_erasing(probability, area_range, min_aspect, max_attempts)
    s_apply, s_area, s_aspect, s_corner = tf.unstack(split_seed(seed, 4))
    low, high = area_range
    apply = (
        tf.random.stateless_uniform([num], s_apply, alg=_RNG_ALG) < probability
    )
    # float64 so that rounding matches the release's python floats.
    area = float(height * width) * tf.random.stateless_uniform(
        [num, max_attempts],
        s_area,
        minval=low,
        maxval=high,
        dtype=tf.float64,
        alg=_RNG_ALG,
    )
    aspect = tf.random.stateless_uniform(
        [num, max_attempts],
        s_aspect,
        minval=min_aspect,
        maxval=1.0 / min_aspect,
        dtype=tf.float64,
        alg=_RNG_ALG,
    )
    # tf.round rounds half to even, like python's round().
    hs = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    ws = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    valid = tf.logical_and(hs < height, ws < width)
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)
    h = tf.gather(hs, first, batch_dims=1)
    w = tf.gather(ws, first, batch_dims=1)
    corner = tf.random.stateless_uniform(
        [num, 2], s_corner, dtype=tf.float64, alg=_RNG_ALG
    )
    # Uniform integer in [0, H - h] (python randint's inclusive bound).
    top = tf.cast(
        tf.floor(corner[:, 0] * tf.cast(height - h + 1, tf.float64)), tf.int32
    )
    left = tf.cast(
        tf.floor(corner[:, 1] * tf.cast(width - w + 1, tf.float64)), tf.int32
    )
    erase = tf.logical_and(apply, tf.reduce_any(valid, axis=1))
    zero = tf.zeros_like(h)
    return {
        "erase": erase,
        "top": tf.where(erase, top, zero),
        "left": tf.where(erase, left, zero),
        "height": tf.where(erase, h, zero),
        "width": tf.where(erase, w, zero),
    }


def sample_grey(seed, *, num: int, probability: float) -> tf.Tensor:
    """[num] bool: which images to turn grey (the random-grey option)."""
    seed = _check_seed(seed)
    _check_num(num)
    _check_probability(probability, "grey probability")
    return tf.random.stateless_uniform([num], seed, alg=_RNG_ALG) < probability


def sample_remap(
    seed, *, num: int, probability: float, knots: int
) -> dict[str, tf.Tensor]:
    """The random-remap option: "remap" [num] bool, "curves" [num, knots]."""
    seed = _check_seed(seed)
    _check_num(num)
    _check_probability(probability, "remap probability")
    s_apply, s_curve = tf.unstack(split_seed(seed, 2))
    return {
        "remap": tf.random.stateless_uniform([num], s_apply, alg=_RNG_ALG)
        < probability,
        "curves": tf.random.stateless_uniform(
            [num, knots], s_curve, alg=_RNG_ALG
        ),
    }


def sample_channel_exchange(
    seed, *, num: int, gray: int = CAJ_EXCHANGE_GRAY
) -> tf.Tensor:
    """Channel modes of CAJ's ChannelExchange(gray) for `num` images.

    idx = randint(0, gray), both bounds included: 0, 1, 2 copy R, G or B
    into all three channels, 3 and above is grey (`CHANNEL_GREY`).

    Returns:
      [num] int32 in {0, 1, 2, 3}.
    """
    seed = _check_seed(seed)
    _check_num(num)
    _check_gray(gray)
    index = tf.random.stateless_uniform(
        [num], seed, minval=0, maxval=gray + 1, dtype=tf.int32, alg=_RNG_ALG
    )
    return tf.minimum(index, CHANNEL_GREY)


def sample_adaptive_grey(
    seed,
    *,
    num: int,
    probability: float,
    grey_probability: float = CAJ_ADAPTIVE_GREY_PROBABILITY,
) -> tf.Tensor:
    """Channel modes of CAJ's ChannelAdapGray for `num` infrared images.

    With probability `probability` an image goes through the transform
    (the release: always): idx = randint(0, 3); 0, 1, 2 copy that channel,
    3 is grey if U(0, 1) < `grey_probability` (the release keeps the image
    when U > p: the same up to a measure-zero tie), else the image is kept.

    Returns:
      [num] int32 in {CHANNEL_KEEP, 0, 1, 2, CHANNEL_GREY}.
    """
    seed = _check_seed(seed)
    _check_num(num)
    _check_probability(probability, "channel_adaptive_grey")
    _check_probability(grey_probability, "channel_adaptive_grey_probability")
    s_apply, s_index, s_grey = tf.unstack(split_seed(seed, 3))
    apply = tf.random.stateless_uniform([num], s_apply, alg=_RNG_ALG)
    index = tf.random.stateless_uniform(
        [num], s_index, minval=0, maxval=4, dtype=tf.int32, alg=_RNG_ALG
    )
    grey = (
        tf.random.stateless_uniform([num], s_grey, alg=_RNG_ALG)
        < grey_probability
    )
    keep = tf.fill([num], CHANNEL_KEEP)
    mode = tf.where(
        index < CHANNEL_GREY, index, tf.where(grey, CHANNEL_GREY, keep)
    )
    return tf.where(apply < probability, mode, keep)


def sample_channel_erasing(
    seed,
    *,
    num: int,
    height: int,
    width: int,
    probability: float = CAJ_ERASING_PROBABILITY,
) -> dict[str, tf.Tensor]:
    """CAJ's ChannelRandomErasing boxes: `sample_erasing` with its settings.

    The same loop as the release's erasing (100 attempts, h = round(sqrt(
    area * r)), w = round(sqrt(area / r)), h < H and w < W, corner uniform
    with inclusive bounds) with area U(0.02, 0.4) * H * W and r U(0.3, 1 /
    0.3).
    """
    return sample_erasing(
        seed,
        num=num,
        height=height,
        width=width,
        probability=probability,
        area_range=CAJ_ERASING_AREA_RANGE,
        min_aspect=CAJ_ERASING_MIN_ASPECT,
        max_attempts=ERASING_MAX_ATTEMPTS,
    )


def apply_channel_modes(images, modes) -> tf.Tensor:
    """CAJ's channel ops, given each image's mode (normalised images).

    Args:
      images: [N, H, W, 3] float.
      modes: [N] int: `CHANNEL_KEEP` leaves the image as it is; c in 0, 1,
        2 writes channel c into all three; `CHANNEL_GREY` writes
        0.2989 R + 0.5870 G + 0.1140 B (`CAJ_GREY_WEIGHTS`, summed in that
        order, in the images' dtype) into all three.

    Returns:
      [N, H, W, 3], the images' dtype.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[-1] != 3:
        raise ValueError(
            "apply_channel_modes expects RGB images [N, H, W, 3], got shape "
            f"{images.shape}."
        )
    modes = tf.convert_to_tensor(modes)
    if not modes.shape.is_compatible_with([images.shape[0]]):
        raise ValueError(
            "apply_channel_modes needs one mode per image, [N] = "
            f"[{images.shape[0]}], got shape {modes.shape}."
        )
    modes = tf.reshape(tf.cast(modes, tf.int32), [-1, 1, 1, 1])
    red, green, blue = tf.unstack(images, axis=-1)
    weights = [tf.constant(w, images.dtype) for w in CAJ_GREY_WEIGHTS]
    grey = weights[0] * red + weights[1] * green + weights[2] * blue
    out = images
    for mode, plane in enumerate((red, green, blue, grey)):
        replicated = tf.broadcast_to(plane[..., None], tf.shape(images))
        out = tf.where(tf.equal(modes, mode), replicated, out)
    return out


# ----------------------------------------------------------- whole chains


def sample_train_params(
    seed,
    *,
    num: int,
    height: int,
    width: int,
    config: TrainAugment = TrainAugment(),
    views=None,
) -> dict[str, tf.Tensor]:
    """Every random choice of the training chain for `num` rows.

    Args:
      seed: [2] int stateless seed.
      num: rows.
      height, width: image size.
      config: the settings.
      views: [num] ints (a list or numpy array), each row's view
        (`VISIBLE`, `INFRARED`, `VISIBLE_EXCHANGED`), which picks its CAJ
        channel mode; None: no channel modes (every row `CHANNEL_KEEP`).

    Returns:
      dict: "offsets" [num, 2] int32, "flips" [num] bool, the erasing
      boxes ("erase", "top", "left", "height", "width" [num]), "grey"
      [num] bool (the random-grey option; all False when it is off),
      "remap" [num] bool and "curves" [num, remap_knots] (the random-remap
      option), CAJ's erasing boxes ("channel_erase", "channel_top",
      "channel_left", "channel_height", "channel_width" [num]; none erased
      when it is off) and "channel" [num] int32, the channel mode
      (infrared rows: ChannelAdapGray's, exchanged rows: ChannelExchange's,
      visible rows and options off: `CHANNEL_KEEP`).
    """
    s_crop, s_flip, s_erase = tf.unstack(split_seed(seed, 3))
    # The options (ours: grey 3, remap 4; CAJ's: erasing 5, adaptive grey 6,
    # exchange 7) each fold a seed of their own in, so that the release's
    # draws above are the same whether or not they exist.
    s_grey, s_remap, s_channel_erase, s_adaptive, s_exchange = (
        tf.random.experimental.stateless_fold_in(
            _check_seed(seed), index, alg=_RNG_ALG
        )
        for index in (3, 4, 5, 6, 7)
    )
    params = {
        "offsets": sample_crop_offsets(s_crop, num=num, padding=config.padding),
        "flips": sample_flips(
            s_flip, num=num, probability=config.flip_probability
        ),
    }
    params.update(
        sample_erasing(
            s_erase,
            num=num,
            height=height,
            width=width,
            probability=config.erasing_probability,
            area_range=tuple(config.erasing_area_range),
            min_aspect=config.erasing_min_aspect,
            max_attempts=config.erasing_max_attempts,
        )
    )
    params["grey"] = sample_grey(
        s_grey, num=num, probability=config.grey_probability
    )
    params.update(
        sample_remap(
            s_remap,
            num=num,
            probability=config.remap_probability,
            knots=config.remap_knots,
        )
    )
    boxes = sample_channel_erasing(
        s_channel_erase,
        num=num,
        height=height,
        width=width,
        probability=config.channel_erasing,
    )
    params.update({f"channel_{k}": v for k, v in boxes.items()})
    keep = tf.fill([num], CHANNEL_KEEP)
    if views is None:
        params["channel"] = keep
        return params
    codes = np.asarray(views)
    if codes.ndim != 1 or codes.shape[0] != num:
        raise ValueError(
            f"views must be [num] = [{num}] view codes, got shape "
            f"{codes.shape}."
        )
    known = (VISIBLE, INFRARED, VISIBLE_EXCHANGED)
    if codes.size and not np.isin(codes, known).all():
        raise ValueError(
            f"views must hold the view codes {known} (VISIBLE, INFRARED, "
            f"VISIBLE_EXCHANGED), got {sorted(set(codes.tolist()))}."
        )
    views = tf.constant(codes, tf.int32)
    adaptive = sample_adaptive_grey(
        s_adaptive,
        num=num,
        probability=config.channel_adaptive_grey,
        grey_probability=config.channel_adaptive_grey_probability,
    )
    exchange = sample_channel_exchange(
        s_exchange, num=num, gray=config.channel_exchange_gray
    )
    params["channel"] = tf.where(
        tf.equal(views, INFRARED),
        adaptive,
        tf.where(tf.equal(views, VISIBLE_EXCHANGED), exchange, keep),
    )
    return params


def exchanged_view_seed(seed) -> tf.Tensor:
    """The seed of the exchanged view's draws, from a step's seed."""
    return tf.random.experimental.stateless_fold_in(
        _check_seed(seed), 8, alg=_RNG_ALG
    )


def sample_step_params(
    seed,
    *,
    rows: int,
    height: int,
    width: int,
    config: TrainAugment = TrainAugment(),
) -> dict[str, tf.Tensor]:
    """The draws of a global batch of `rows` images per view.

    Rows [0, rows) are the visible images, [rows, 2 rows) the infrared
    ones, both drawn by `sample_train_params(seed, num=2 rows)`, exactly
    as without CAJ's exchange; with `config.channel_exchange`, rows
    [2 rows, 3 rows) are the exchanged view of the visible images, with
    draws of their own (`exchanged_view_seed`), as CAJ transforms the same
    image twice independently.

    Returns:
      The dict of `sample_train_params`, [config.num_views * rows] each.
    """
    _check_num(rows)
    views = [VISIBLE] * rows + [INFRARED] * rows
    params = sample_train_params(
        seed,
        num=2 * rows,
        height=height,
        width=width,
        config=config,
        views=views if config.channel_ops else None,
    )
    if not config.channel_exchange:
        return params
    third = sample_train_params(
        exchanged_view_seed(seed),
        num=rows,
        height=height,
        width=width,
        config=config,
        views=[VISIBLE_EXCHANGED] * rows,
    )
    return {k: tf.concat([v, third[k]], 0) for k, v in params.items()}


def crop_and_flip(
    images,
    params: dict[str, tf.Tensor],
    *,
    config: TrainAugment = TrainAugment(),
) -> tf.Tensor:
    """Pixel-space part: pad + crop, then flip; [N, H, W, C] or [H, W, C].

    For one image, `params` holds that image's row ("offsets" [2], "flips"
    scalar); the training pipeline runs it per image, next to decoding.
    """
    images = image_ops.pad_and_crop(
        images, params["offsets"], padding=config.padding
    )
    return image_ops.flip_left_right(images, params["flips"])


def normalize_and_erase(
    images,
    params: dict[str, tf.Tensor],
    *,
    config: TrainAugment = TrainAugment(),
    dtype=tf.float32,
) -> tf.Tensor:
    """Grey, remap (if on), normalise, erase (given boxes), CAJ, cast.

    CAJ's erasing and channel modes (if on) come after normalisation, in
    its order: erasing, then the channel mode of each row.
    """
    if config.grey_probability > 0:
        images = image_ops.to_grey(images, params["grey"])
    if config.remap_probability > 0:
        images = image_ops.remap_intensity(
            images, params["remap"], params["curves"]
        )
    images = image_ops.normalize(
        images, mean=tuple(config.mean), std=tuple(config.std)
    )
    if config.erasing_probability > 0:
        images = image_ops.erase(
            images, params, fill=tuple(config.erasing_fill)
        )
    if config.channel_erasing > 0:
        boxes = {
            k: params[f"channel_{k}"]
            for k in ("erase", "top", "left", "height", "width")
        }
        images = image_ops.erase(images, boxes, fill=CAJ_ERASING_FILL)
    if config.channel_ops:
        images = apply_channel_modes(images, params["channel"])
    return tf.cast(images, dtype)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def jit_normalize_and_erase(images, params, *, config, dtype):
    """`normalize_and_erase` as one fused XLA computation."""
    return normalize_and_erase(images, params, config=config, dtype=dtype)
