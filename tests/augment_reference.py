"""Whole-batch augmentation from `data_pipeline.augment`, for the tests.

The training pipeline crops and flips per image and normalises and erases
per batch (`train_pipeline`); these functions run the same ops on one batch
at once, so that the tests can check each op, and the chain, against numpy
and inside tf.data.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from data_pipeline import augment, image_ops

_RELEASE = augment.TrainAugment()  # The release's settings.


def _batch(images, name: str) -> tf.Tensor:
    """`images` as a tensor [N, H, W, C] with a static N, or a ValueError."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(
            f"{name} expects a batch [N, H, W, C], got shape {images.shape}."
        )
    if images.shape[0] is None:
        raise ValueError(f"{name} needs a static batch size.")
    return images


def random_pad_and_crop(images, *, seed, padding: int = 10) -> tf.Tensor:
    """`pad_and_crop` with offsets drawn from `seed`."""
    images = _batch(images, "random_pad_and_crop")
    offsets = augment.sample_crop_offsets(
        seed, num=images.shape[0], padding=padding
    )
    return image_ops.pad_and_crop(images, offsets, padding=padding)


def random_flip(images, *, seed, probability: float = 0.5) -> tf.Tensor:
    """`flip_left_right` with flips drawn from `seed`."""
    images = _batch(images, "random_flip")
    flips = augment.sample_flips(
        seed, num=images.shape[0], probability=probability
    )
    return image_ops.flip_left_right(images, flips)


def random_erasing(
    images, *, seed, fill: Sequence[float] = augment.ERASING_FILL
) -> tf.Tensor:
    """`erase` with the release's boxes drawn from `seed` (normalised input)."""
    images = _batch(images, "random_erasing")
    num, height, width, _ = images.shape.as_list()
    boxes = augment.sample_erasing(seed, num=num, height=height, width=width)
    return image_ops.erase(images, boxes, fill=fill)


def apply_train_params(
    images,
    params: dict[str, tf.Tensor],
    *,
    config: augment.TrainAugment,
    dtype=tf.float32,
) -> tf.Tensor:
    """The deterministic training chain of a batch, given its parameters."""
    images = augment.crop_and_flip(images, params, config=config)
    return augment.normalize_and_erase(
        images, params, config=config, dtype=dtype
    )


@tf.function(jit_compile=True, reduce_retracing=True)
def _jit_apply(images, params, *, config, dtype):
    return apply_train_params(images, params, config=config, dtype=dtype)


def train_augment(
    images,
    *,
    seed,
    config: augment.TrainAugment = _RELEASE,
    positions=None,
    num_rows: int | None = None,
    dtype=tf.float32,
    jit_compile: bool = False,
) -> tf.Tensor:
    """The training augmentation of a batch of decoded images.

    Args:
      images: [N, H, W, 3] uint8, already at the output size.
      seed: [2] int stateless seed.
      config: the augmentation settings.
      positions: optional [N] int, each image's row in a batch of `num_rows`
        rows whose parameters are drawn; default rows 0 .. N-1 of N.
      num_rows: rows drawn when `positions` is given.
      dtype: output dtype.
      jit_compile: run the pixel work as one XLA computation.

    Returns:
      [N, H, W, 3] dtype.
    """
    images = _batch(images, "train_augment")
    num, height, width, _ = images.shape.as_list()
    if positions is None:
        params = augment.sample_train_params(
            seed, num=num, height=height, width=width, config=config
        )
    else:
        if num_rows is None:
            raise ValueError(
                "train_augment: positions given without num_rows (the size of "
                "the batch they index)."
            )
        params = augment.sample_train_params(
            seed, num=num_rows, height=height, width=width, config=config
        )
        params = {k: tf.gather(v, positions) for k, v in params.items()}
    apply = _jit_apply if jit_compile else apply_train_params
    return apply(images, params, config=config, dtype=dtype)


def numpy_colour_chain(images, *, grey, config, remap=None, curves=None):
    """Grey, remap and normalise in numpy (no crop, flip or erasing).

    The independent computation the chain tests compare with: luma with
    PIL's weights, `np.interp` through each image's curve, then
    (x / 255 - mean) / std. Returns [N, H, W, 3] float64.
    """
    out = []
    for n, image in enumerate(np.asarray(images, np.float64)):
        if grey[n]:
            luma = image @ np.array([0.299, 0.587, 0.114])
            image = np.repeat(luma[..., None], 3, axis=-1)
        if remap is not None and remap[n]:
            knots = np.linspace(0.0, 1.0, len(curves[n]))
            image = 255.0 * np.interp(image / 255.0, knots, curves[n])
        out.append((image / 255.0 - np.array(config.mean)) / config.std)
    return np.stack(out)


def option_draws(seed, *, without, with_option, key, num, height, width):
    """The draws of `with_option`, after checking that an option has a seed
    of its own: every draw but `key` is the same as `without`'s, and
    `without` selects no row for `key`."""
    p_without, p_with = (
        augment.sample_train_params(
            seed, num=num, height=height, width=width, config=config
        )
        for config in (without, with_option)
    )
    for name in p_without:
        if name != key:
            np.testing.assert_array_equal(p_without[name], p_with[name])
    assert not p_without[key].numpy().any()
    return {k: v.numpy() for k, v in p_with.items()}


def chain_eager_and_jit(images, *, seed, config):
    """`train_augment` of the batch eagerly and as one XLA computation."""
    return tuple(
        train_augment(images, seed=seed, config=config, jit_compile=jit).numpy()
        for jit in (False, True)
    )
