"""Deterministic pixel ops of the tf.data pipelines (no randomness here).

Decode, resize, pad + crop, flip, grey, remap, normalise and erase, each
applying parameters it is given; `augment` draws them. The ops give the same
images eagerly, in tf.data and under XLA. See the docs/datasets.md "The input
pipeline".
"""

from collections.abc import Sequence

from data_pipeline.tf_setup import tf

# ImageNet statistics used by the release's `transforms.Normalize`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601 luma weights (PIL's convert("L")) of the random-grey option.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


# --------------------------------------------------------------- validation


def check_padding(padding) -> None:
    """Raises ValueError unless `padding` is a non-negative integer."""
    if int(padding) != padding or padding < 0:
        raise ValueError(
            f"padding must be a non-negative integer, got {padding!r}."
        )


def check_mean_std(mean, std) -> None:
    """Raises ValueError unless mean/std are per-channel, std positive."""
    if len(mean) != len(std):
        raise ValueError(
            f"mean and std need one value per channel, got {len(mean)} and "
            f"{len(std)}."
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}.")


def check_image_size(image_size) -> tuple[int, int]:
    """`image_size` as a positive (height, width), or a ValueError."""
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"image_size must be (height, width), got {image_size!r}."
        ) from e
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return height, width


def check_float_dtype(dtype) -> tf.DType:
    """`dtype` as tf.float32 or tf.bfloat16 (the pipelines' outputs)."""
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.bfloat16):
        raise ValueError(
            f"dtype must be float32 or bfloat16, got {dtype.name}."
        )
    return dtype


def _check_images(images, name: str) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(
            f"{name} expects a batch [N, H, W, C], got shape {images.shape}; "
            "add a leading axis for a single image (image[None])."
        )
    return images


def _check_image_or_batch(images, name: str) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank not in (3, 4):
        raise ValueError(
            f"{name} expects one image [H, W, C] or a batch [N, H, W, C], got "
            f"shape {images.shape}."
        )
    return images


# --------------------------------------------------------- decode / resize


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF bytes (scalar string) into `[h, w, 3]` uint8.

    JPEGs are decoded with libjpeg's accurate integer inverse DCT, as PIL
    decodes them (TensorFlow's default, the fast one, is up to a few grey
    levels off); other formats are lossless and decode the same anywhere.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(
            encoded, channels=3, dct_method="INTEGER_ACCURATE"
        ),
        lambda: tf.io.decode_image(
            encoded, channels=3, expand_animations=False
        ),
    )


def decode_raw(raw: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Raw pixel bytes (scalar string) and their [3] shape -> uint8 image."""
    image = tf.reshape(
        tf.io.decode_raw(raw, tf.uint8), tf.cast(shape, tf.int32)
    )
    return tf.ensure_shape(image, (None, None, 3))


def decode_stored(fields: dict[str, tf.Tensor]) -> tf.Tensor:
    """One row of `records.parse_images` -> uint8 `[h, w, 3]`, as stored."""
    if "raw" in fields:
        return decode_raw(fields["raw"], fields["shape"])
    return decode_image(fields["encoded"])


def decode_and_resize(
    fields: dict[str, tf.Tensor], *, height: int, width: int
) -> tf.Tensor:
    """One stored image as the network sees it before augmentation.

    `decode_stored`, then `resize` to (height, width), which leaves an
    image that already has that size (the builders' 288x144) untouched.
    """
    return resize(decode_stored(fields), height=height, width=width)


def resize(image: tf.Tensor, *, height: int, width: int) -> tf.Tensor:
    """Resizes one `[h, w, C]` uint8 image to `[height, width, C]` uint8.

    Only for images stored at another size than the network's (the
    builders' ``original`` configs, your own images, another
    `image_size`): bilinear with antialiasing, rounded back to uint8. An
    image that already has the target size (as the builders store it: the
    release's Lanczos-resized pixels) is returned as is, bit for bit.
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


# ---------------------------------------------------------------- pixel ops


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
    check_padding(padding)
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


def remap_intensity(images, remap, curves) -> tf.Tensor:
    """Passes the selected images' pixels through a piecewise-linear curve.

    Args:
      images: [N, H, W, C] pixels in [0, 255] (any real or integer dtype).
      remap: [N] bool, which images to remap.
      curves: [N, K] float, K >= 2: image n's curve takes the value
        255 * curves[n, k] at the pixel value 255 * k / (K - 1), linear in
        between; the same curve for every channel.

    Returns:
      [N, H, W, C] float32: the selected images remapped, the others
      unchanged.
    """
    images = tf.cast(_check_images(images, "remap_intensity"), tf.float32)
    curves = tf.convert_to_tensor(curves, tf.float32)
    if curves.shape.rank != 2 or (curves.shape[1] or 2) < 2:
        raise ValueError(
            f"remap_intensity expects curves [N, K] with K >= 2, got shape "
            f"{curves.shape}."
        )
    segments = tf.cast(tf.shape(curves)[1] - 1, tf.float32)
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    x = tf.clip_by_value(flat / 255.0, 0.0, 1.0) * segments
    left = tf.minimum(tf.floor(x), segments - 1.0)
    index = tf.cast(left, tf.int32)
    low = tf.gather(curves, index, batch_dims=1)
    high = tf.gather(curves, index + 1, batch_dims=1)
    mapped = 255.0 * (low + (x - left) * (high - low))
    mapped = tf.reshape(mapped, tf.shape(images))
    remap = tf.reshape(tf.cast(remap, tf.bool), [-1, 1, 1, 1])
    return tf.where(remap, mapped, images)


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
    check_mean_std(mean, std)
    images = tf.cast(images, tf.float32) / 255.0
    mean = tf.constant(mean, tf.float32)
    return (images - mean) / tf.constant(std, tf.float32)


def erase(
    images, boxes: dict[str, tf.Tensor], *, fill: Sequence[float]
) -> tf.Tensor:
    """Writes `fill` into each image's rectangle (`augment.sample_erasing`).

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
