"""Training augmentation: its settings, random draws and chains.

The chain is the release's: pad 10 black pixels and crop back, flip with p 0.5,
normalise with the ImageNet statistics, then random erasing (p 0.8) of the
normalised image. Samplers (`sample_*`) draw a batch's parameters from one
stateless seed ([2] int, Philox); the `image_ops` apply them. The pipeline
draws `sample_train_params(step_seed(seed, step))` for the global batch, runs
`crop_and_flip` per image and `jit_normalize_and_erase` per batch, so an
image's augmentation depends only on (seed, step, row). Random grey and random
intensity remapping (`TrainAugment.grey_probability`, `remap_probability`, off
by default) are ours. See the docs/datasets.md "The input pipeline".
"""

import dataclasses

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


# ----------------------------------------------------------- whole chains


def sample_train_params(
    seed,
    *,
    num: int,
    height: int,
    width: int,
    config: TrainAugment = TrainAugment(),
) -> dict[str, tf.Tensor]:
    """Every random choice of the training chain for `num` rows.

    Returns:
      dict: "offsets" [num, 2] int32, "flips" [num] bool, the erasing
      boxes ("erase", "top", "left", "height", "width" [num]), "grey"
      [num] bool (the random-grey option; all False when it is off),
      "remap" [num] bool and "curves" [num, remap_knots] (the random-remap
      option).
    """
    s_crop, s_flip, s_erase = tf.unstack(split_seed(seed, 3))
    # Our options (grey 3, remap 4) each fold a seed of their own in, so
    # that the release's draws above are the same whether or not they exist.
    s_grey, s_remap = (
        tf.random.experimental.stateless_fold_in(
            _check_seed(seed), index, alg=_RNG_ALG
        )
        for index in (3, 4)
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
    return params


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
    """Grey, remap (if on), normalise, erase (given boxes), cast."""
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
    return tf.cast(images, dtype)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def jit_normalize_and_erase(images, params, *, config, dtype):
    """`normalize_and_erase` as one fused XLA computation."""
    return normalize_and_erase(images, params, config=config, dtype=dtype)
