"""Image preprocessing and augmentation ops for the tf.data pipelines.

The training chain is the authors' PyTorch release (REFERENCE_NOTES.md,
"Optimisation and data"): resize to (H, W), zero-pad 10 pixels, random crop
back to (H, W), horizontal flip with p 0.5, scale to [0, 1], normalise with
the ImageNet mean/std, random erasing with p 0.8, area fraction in
[0.1, 0.8], aspect ratio in [0.3, 1/0.3], up to 100 attempts, erased pixels
set to (0.4914, 0.4822, 0.4465) *after* normalisation. Padding, cropping and
flipping happen in pixel space (uint8, before normalisation), so the padded
border is black, as in the release.

Randomness is split from pixel work, for speed and determinism:

* Samplers (`sample_crop_offsets`, `sample_flips`, `sample_erasing`) draw
  the parameters of a batch at once from one explicit stateless seed
  (`[2]` int, Philox). Row i of a draw is image i's parameters.
* Deterministic ops (`pad_and_crop`, `flip_left_right`, `normalize`,
  `erase`) apply given parameters to `[N, H, W, C]` batches (crop and flip
  also to one `[H, W, C]` image). They are plain TF ops: eagerly, in
  `tf.data`, and under `tf.function(jit_compile=True)` they give the same
  images. The training pipeline crops and flips each image in uint8 next to
  decoding (two contiguous copies), then normalises and erases the batch as
  one fused XLA computation (one pass over the pixels: several times faster
  than op-by-op TF on CPU).
* `random_pad_and_crop`, `random_flip`, `random_erasing` combine the two.
  `train_augment` runs the whole chain on a batch.
* Ours, not the release's (off by default): random grey, which replaces a
  training image by its luma (ITU-R 601 weights, in every channel) with
  probability `TrainAugment.grey_probability`, before normalisation.
  Infrared images are grey already, so only visible images change: it
  takes colour away as an identity cue, so that a network must match
  visible images on what the infrared camera also sees (used by the
  synthetic demo; see docs/demo_findings.md). The training pipeline
  does the same in pieces: `sample_train_params(step_seed(seed, step))` for
  the rows of the *global* batch, `crop_and_flip` per image,
  `jit_normalize_and_erase` per batch; so an image's augmentation depends
  only on (seed, global step, row in the global batch): identical across
  resumes and host counts.
"""

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

# ImageNet statistics used by the release's `transforms.Normalize`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Random erasing as the release (REFERENCE_NOTES.md). The fill values are
# CIFAR-10's channel means, written as-is into the *normalised* image: a quirk
# of the release kept for fidelity.
ERASING_PROBABILITY = 0.8
ERASING_AREA_RANGE = (0.1, 0.8)
ERASING_MIN_ASPECT = 0.3
ERASING_MAX_ATTEMPTS = 100
ERASING_FILL = (0.4914, 0.4822, 0.4465)
# ITU-R 601 luma weights (PIL's convert("L")) of the random-grey option.
GREY_WEIGHTS = (0.299, 0.587, 0.114)

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
        that an image is replaced by its luma in all three channels (see the
        module docstring); 0 disables it.
    """

    padding: int = 10
    flip_probability: float = 0.5
    erasing_probability: float = ERASING_PROBABILITY
    erasing_area_range: tuple[float, float] = ERASING_AREA_RANGE
    erasing_min_aspect: float = ERASING_MIN_ASPECT
    erasing_max_attempts: int = ERASING_MAX_ATTEMPTS
    erasing_fill: tuple[float, ...] = ERASING_FILL
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    grey_probability: float = 0.0

    def __post_init__(self):
        _check_padding(self.padding)
        _check_probability(self.flip_probability, "flip_probability")
        _check_probability(self.grey_probability, "grey_probability")
        _check_erasing(
            self.erasing_probability,
            self.erasing_area_range,
            self.erasing_min_aspect,
            self.erasing_max_attempts,
        )
        _check_mean_std(self.mean, self.std)
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


def _check_images(images, name: str) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(
            f"{name} expects a batch [N, H, W, C], got shape {images.shape}; "
            "add a leading axis for a single image (image[None])."
        )
    return images


def _check_num(num) -> None:
    if num is None or int(num) != num or num < 0:
        raise ValueError(f"num must be a non-negative integer, got {num!r}.")


def _batch_size(images, name: str) -> int:
    if images.shape[0] is None:
        raise ValueError(
            f"{name} needs a static batch size; batch with drop_remainder=True."
        )
    return images.shape[0]


def _check_padding(padding) -> None:
    if int(padding) != padding or padding < 0:
        raise ValueError(
            f"padding must be a non-negative integer, got {padding!r}."
        )


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


def _check_mean_std(mean, std) -> None:
    if len(mean) != len(std):
        raise ValueError(
            f"mean and std need one value per channel, got {len(mean)} and "
            f"{len(std)}."
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}.")


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


# --------------------------------------------------------- decode / resize


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG bytes (scalar string) into `[h, w, 3]` uint8."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def resize(image: tf.Tensor, *, height: int, width: int) -> tf.Tensor:
    """Resizes one `[h, w, C]` uint8 image to `[height, width, C]` uint8.

    Bilinear with antialiasing, rounded back to uint8 like the release, which
    shrank its images once (PIL) and kept uint8 arrays. An image that already
    has the target size is returned as is, so the usual case (the TFDS
    builders store images at the training size) costs nothing.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(
            f"resize expects one image [h, w, C], got {image.shape}."
        )
    if image.dtype != tf.uint8:
        raise ValueError(
            f"resize expects uint8 pixels (a decoded image), got "
            f"{image.dtype.name}."
        )
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(
            "resize needs a positive height and width, got "
            f"({height}, {width})."
        )
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))

    def _resize():
        out = tf.image.resize(
            tf.cast(image, tf.float32), (height, width), antialias=True
        )
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    out = tf.cond(same, lambda: image, _resize)
    return tf.ensure_shape(out, (height, width, image.shape[-1]))


# ---------------------------------------------------------------- samplers


def sample_crop_offsets(seed, *, num: int, padding: int) -> tf.Tensor:
    """Crop origins in the padded image, uniform in [0, 2 * padding] per axis.

    As torchvision's `Pad(padding)` + `RandomCrop((H, W))`.

    Returns:
      [num, 2] int32 (row offset, column offset).
    """
    seed = _check_seed(seed)
    _check_num(num)
    _check_padding(padding)
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


# ------------------------------------------------- deterministic batch ops


def _check_image_or_batch(images, name: str) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank not in (3, 4):
        raise ValueError(
            f"{name} expects one image [H, W, C] or a batch [N, H, W, C], got "
            f"shape {images.shape}."
        )
    return images


def pad_and_crop(images, offsets, *, padding: int) -> tf.Tensor:
    """Zero-pads `padding` pixels per side, then crops `[H, W]` at `offsets`.

    Args:
      images: [N, H, W, C] or one image [H, W, C], any dtype (pixel space).
      offsets: [N, 2] (or [2] for one image) int, crop origin (row, column)
        in the padded image, each in [0, 2 * padding].
      padding: non-negative int.

    Returns:
      Same shape and dtype: out[n, y, x] = images[n, y + dy - p, x + dx - p]
      where inside the image, else 0.
    """
    images = _check_image_or_batch(images, "pad_and_crop")
    _check_padding(padding)
    if padding == 0:
        return images
    offsets = tf.cast(offsets, tf.int32)
    shape = tf.shape(images)
    if images.shape.rank == 3:
        # One image: two contiguous copies, much cheaper than a gather.
        padded = tf.pad(
            images, [[padding, padding], [padding, padding], [0, 0]]
        )
        out = tf.slice(padded, tf.concat([offsets, [0]], 0), shape)
        return tf.ensure_shape(out, images.shape)
    padded = tf.pad(
        images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    )
    rows = offsets[:, :1] + tf.range(shape[1])[None, :]
    cols = offsets[:, 1:] + tf.range(shape[2])[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    return tf.ensure_shape(out, images.shape)


def flip_left_right(images, flips) -> tf.Tensor:
    """Mirrors the images whose `flips` entry is True.

    Args:
      images: [N, H, W, C] with flips [N] bool, or [H, W, C] with a scalar.
    """
    images = _check_image_or_batch(images, "flip_left_right")
    if images.shape.rank == 3:
        return tf.cond(
            tf.cast(flips, tf.bool),
            lambda: tf.reverse(images, axis=[1]),
            lambda: images,
        )
    flips = tf.reshape(tf.cast(flips, tf.bool), [-1, 1, 1, 1])
    return tf.where(flips, tf.reverse(images, axis=[2]), images)


def to_grey(images, grey) -> tf.Tensor:
    """Replaces the images whose `grey` entry is True by their luma.

    Args:
      images: [N, H, W, 3] pixels (any real or integer dtype).
      grey: [N] bool.

    Returns:
      [N, H, W, 3] float32: luma = 0.299 R + 0.587 G + 0.114 B (unrounded)
      in every channel of the selected images, the others unchanged.
    """
    images = _check_images(images, "to_grey")
    if images.shape[-1] != 3:
        raise ValueError(
            f"to_grey expects RGB images [N, H, W, 3], got {images.shape}."
        )
    images = tf.cast(images, tf.float32)
    luma = tf.reduce_sum(
        images * tf.constant(GREY_WEIGHTS, tf.float32), axis=-1, keepdims=True
    )
    grey = tf.reshape(tf.cast(grey, tf.bool), [-1, 1, 1, 1])
    return tf.where(grey, tf.broadcast_to(luma, tf.shape(images)), images)


def normalize(
    images,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tf.Tensor:
    """Pixels [0, 255] -> [0, 1] -> (x - mean) / std, float32 `[..., C]`.

    Computed as torchvision's ToTensor + Normalize (divide by 255, subtract,
    divide), not as a folded affine map, so values match the release's to
    float32 rounding.
    """
    _check_mean_std(mean, std)
    images = tf.cast(images, tf.float32) / 255.0
    mean = tf.constant(mean, tf.float32)
    return (images - mean) / tf.constant(std, tf.float32)


def erase(
    images, boxes: dict[str, tf.Tensor], *, fill: Sequence[float]
) -> tf.Tensor:
    """Writes `fill` into each image's rectangle (see `sample_erasing`).

    Args:
      images: [N, H, W, C] float.
      boxes: dict of [N]: "erase" bool, "top", "left", "height", "width" int.
      fill: C values.

    Returns:
      [N, H, W, C], same dtype.
    """
    images = _check_images(images, "erase")
    channels = images.shape[-1]
    if channels is not None and len(fill) != channels:
        raise ValueError(
            f"erase fill needs one value per channel ({channels}), got "
            f"{tuple(fill)}."
        )
    shape = tf.shape(images)

    def column(key):
        return tf.reshape(tf.cast(boxes[key], tf.int32), [-1, 1, 1])

    top, left = column("top"), column("left")
    rows = tf.range(shape[1])[None, :, None]
    cols = tf.range(shape[2])[None, None, :]
    inside = (
        (rows >= top)
        & (rows < top + column("height"))
        & (cols >= left)
        & (cols < left + column("width"))
        & tf.reshape(tf.cast(boxes["erase"], tf.bool), [-1, 1, 1])
    )
    return tf.where(inside[..., None], tf.constant(fill, images.dtype), images)


# ------------------------------------------------------ seeded random ops


def random_pad_and_crop(images, *, seed, padding: int = 10) -> tf.Tensor:
    """`pad_and_crop` with offsets drawn from `seed` ([N, H, W, C] -> same)."""
    images = _check_images(images, "random_pad_and_crop")
    offsets = sample_crop_offsets(
        seed, num=_batch_size(images, "random_pad_and_crop"), padding=padding
    )
    return pad_and_crop(images, offsets, padding=padding)


def random_flip(images, *, seed, probability: float = 0.5) -> tf.Tensor:
    """`flip_left_right` with flips drawn from `seed` ([N, H, W, C] -> same)."""
    images = _check_images(images, "random_flip")
    flips = sample_flips(
        seed, num=_batch_size(images, "random_flip"), probability=probability
    )
    return flip_left_right(images, flips)


def random_erasing(
    images,
    *,
    seed,
    probability: float = ERASING_PROBABILITY,
    area_range: tuple[float, float] = ERASING_AREA_RANGE,
    min_aspect: float = ERASING_MIN_ASPECT,
    max_attempts: int = ERASING_MAX_ATTEMPTS,
    fill: Sequence[float] = ERASING_FILL,
) -> tf.Tensor:
    """Random erasing (Zhong et al.) of normalised `[N, H, W, C]` (release)."""
    images = _check_images(images, "random_erasing")
    _, height, width, _ = images.shape.as_list()
    boxes = sample_erasing(
        seed,
        num=_batch_size(images, "random_erasing"),
        height=height,
        width=width,
        probability=probability,
        area_range=area_range,
        min_aspect=min_aspect,
        max_attempts=max_attempts,
    )
    return erase(images, boxes, fill=fill)


# ----------------------------------------------------------- whole chains


def sample_train_params(
    seed,
    *,
    num: int,
    height: int,
    width: int,
    config: TrainAugment = TrainAugment(),
) -> dict[str, tf.Tensor]:
    """Every random choice of `train_augment` for `num` rows.

    Returns:
      dict: "offsets" [num, 2] int32, "flips" [num] bool, the erasing
      boxes ("erase", "top", "left", "height", "width" [num]) and "grey"
      [num] bool (the random-grey option; all False when it is off).
    """
    s_crop, s_flip, s_erase = tf.unstack(split_seed(seed, 3))
    # A seed of its own, folded in, so that the draws above are the same
    # whether or not the random-grey option exists.
    s_grey = tf.random.experimental.stateless_fold_in(
        _check_seed(seed), 3, alg=_RNG_ALG
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
    return params


def apply_train_params(
    images,
    params: dict[str, tf.Tensor],
    *,
    config: TrainAugment = TrainAugment(),
    dtype=tf.float32,
) -> tf.Tensor:
    """Deterministic part of the training chain on a batch.

    pad + crop -> flip (`crop_and_flip`) -> grey (if enabled) -> normalise
    -> erase -> cast (`normalize_and_erase`).

    Args:
      images: [N, H, W, 3] uint8.
      params: rows of `sample_train_params`, one per image.
      config: TrainAugment.
      dtype: output dtype (float32 or bfloat16).

    Returns:
      [N, H, W, 3] dtype.
    """
    images = crop_and_flip(images, params, config=config)
    return normalize_and_erase(images, params, config=config, dtype=dtype)


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
    images = pad_and_crop(images, params["offsets"], padding=config.padding)
    return flip_left_right(images, params["flips"])


def normalize_and_erase(
    images,
    params: dict[str, tf.Tensor],
    *,
    config: TrainAugment = TrainAugment(),
    dtype=tf.float32,
) -> tf.Tensor:
    """Grey (if on), normalise, erase (given boxes), cast: [N, H, W, C]."""
    if config.grey_probability > 0:
        images = to_grey(images, params["grey"])
    images = normalize(images, mean=tuple(config.mean), std=tuple(config.std))
    if config.erasing_probability > 0:
        images = erase(images, params, fill=tuple(config.erasing_fill))
    return tf.cast(images, dtype)


def train_augment(
    images,
    *,
    seed,
    config: TrainAugment = TrainAugment(),
    positions=None,
    num_rows: int | None = None,
    dtype=tf.float32,
    jit_compile: bool = False,
) -> tf.Tensor:
    """The training augmentation of a batch of decoded images.

    Args:
      images: [N, H, W, 3] uint8, already at the output size.
      seed: [2] int stateless seed (the pipeline uses step_seed(seed, step)).
      config: TrainAugment.
      positions: optional [N] int, the row of each image in a larger batch of
        `num_rows` rows whose parameters are drawn (a host's part of the
        global batch); default: rows 0 .. N-1 of a batch of N.
      num_rows: rows drawn when `positions` is given.
      dtype: output dtype.
      jit_compile: run the pixel work under XLA (one fused pass). Same
        result up to float32 rounding.

    Returns:
      [N, H, W, 3] dtype.
    """
    images = _check_images(images, "train_augment")
    if images.dtype != tf.uint8:
        raise ValueError(
            "train_augment expects decoded uint8 images, got "
            f"{images.dtype.name}."
        )
    _, height, width, _ = images.shape.as_list()
    if height is None or width is None:
        raise ValueError(
            "train_augment needs a static image size; resize the images first."
        )
    if positions is None:
        params = sample_train_params(
            seed,
            num=_batch_size(images, "train_augment"),
            height=height,
            width=width,
            config=config,
        )
    else:
        if num_rows is None:
            raise ValueError(
                "train_augment: positions given without num_rows (the size of "
                "the batch they index)."
            )
        params = sample_train_params(
            seed, num=num_rows, height=height, width=width, config=config
        )
        params = {k: tf.gather(v, positions) for k, v in params.items()}
    apply = _jit_apply if jit_compile else apply_train_params
    return apply(images, params, config=config, dtype=dtype)


@tf.function(jit_compile=True, reduce_retracing=True)
def _jit_apply(images, params, *, config, dtype):
    return apply_train_params(images, params, config=config, dtype=dtype)


@tf.function(jit_compile=True, reduce_retracing=True)
def jit_normalize_and_erase(images, params, *, config, dtype):
    """`normalize_and_erase` as one fused XLA computation."""
    return normalize_and_erase(images, params, config=config, dtype=dtype)
