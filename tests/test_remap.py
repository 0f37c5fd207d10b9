"""Random intensity remapping (ours): the op, its draws and the chain.

Checked against `np.interp` and hand-worked curves, not against itself.
"""

import dataclasses

import augment_reference
import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import augment, datasets, image_ops
from mclnet_jax.configs import regdb, synthetic, sysu

H, W = 32, 16
SEED = tf.constant([5, 7], tf.int64)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(6, H, W, 3), dtype=np.uint8)


def _numpy_remap(image, curve):
    """One image through its curve, with numpy's linear interpolation."""
    knots = np.linspace(0.0, 1.0, len(curve))
    return 255.0 * np.interp(image.astype(np.float64) / 255.0, knots, curve)


def test_remap_matches_numpy_interpolation(images):
    curves = np.random.default_rng(2).uniform(size=(6, 5)).astype(np.float32)
    remap = np.array([True, False, True, True, False, True])
    out = image_ops.remap_intensity(images, remap, curves).numpy()
    assert out.dtype == np.float32 and out.shape == images.shape
    for n in range(6):
        if remap[n]:
            want = _numpy_remap(images[n], curves[n])
            np.testing.assert_allclose(out[n], want, atol=2e-3)
        else:
            np.testing.assert_array_equal(out[n], images[n])


def test_remap_hand_worked_curves():
    pixels = np.array([0, 51, 102, 127.5, 204, 255], np.float32)
    batch = np.broadcast_to(pixels[None, :, None, None], (3, 6, 1, 3))
    curves = np.array(
        [
            [0.0, 1.0 / 3, 2.0 / 3, 1.0],  # the identity
            [1.0, 0.5, 0.0, 0.0],  # inverts, then clamps to black
            [0.0, 1.0, 0.0, 1.0],  # a zigzag: not monotonic
        ],
        np.float32,
    )
    out = image_ops.remap_intensity(batch, [True] * 3, curves).numpy()
    np.testing.assert_allclose(out[0, :, 0, 0], pixels, atol=1e-3)
    # Knots at 0, 85, 170, 255: 51 is 0.6 of the way from 255 to 127.5.
    np.testing.assert_allclose(
        out[1, :, 0, 0], [255, 178.5, 102, 63.75, 0, 0], atol=1e-3
    )
    np.testing.assert_allclose(
        out[2, :, 0, 0], [0, 153, 204, 127.5, 102, 255], atol=1e-3
    )
    # Every channel goes through the same curve: grey stays grey.
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_remap_draws_have_their_own_seed_and_the_chain_applies_them(images):
    seed = augment.step_seed(4, 2)
    off = augment.TrainAugment(
        padding=0, flip_probability=0.0, erasing_probability=0.0
    )
    on = dataclasses.replace(off, grey_probability=0.5, remap_probability=0.5)
    grey_only = dataclasses.replace(off, grey_probability=0.5)
    params = augment_reference.option_draws(
        seed,
        without=grey_only,
        with_option=on,
        key="remap",
        num=6,
        height=H,
        width=W,
    )
    remap, curves, grey = params["remap"], params["curves"], params["grey"]
    assert remap.any() and not remap.all()
    assert curves.shape == (6, on.remap_knots)
    out, jit = augment_reference.chain_eager_and_jit(
        images, seed=seed, config=on
    )
    want = augment_reference.numpy_colour_chain(
        images, grey=grey, config=on, remap=remap, curves=curves
    )
    np.testing.assert_allclose(out, want, atol=1e-4)
    np.testing.assert_allclose(jit, want, atol=1e-4)


def test_remap_rate_and_curve_distribution():
    draws = augment.sample_remap(SEED, num=20000, probability=0.3, knots=3)
    assert abs(draws["remap"].numpy().mean() - 0.3) < 0.015
    curves = draws["curves"].numpy()
    assert curves.shape == (20000, 3)
    assert curves.min() >= 0.0 and curves.max() < 1.0
    np.testing.assert_allclose(curves.mean(0), 0.5, atol=0.01)
    for p, want in ((0.0, False), (1.0, True)):
        got = augment.sample_remap(SEED, num=50, probability=p, knots=2)
        assert (got["remap"].numpy() == want).all()


def test_remap_follows_the_config():
    demo = synthetic.get_config()
    assert demo.data.random_remap == 0.3  # The demo's setting.
    assert datasets.train_augment(demo.data).remap_probability == (
        demo.data.random_remap
    )
    demo.data.random_remap = 0.25
    assert datasets.train_augment(demo.data).remap_probability == 0.25
    assert sysu.get_config().data.random_remap == 0.0
    assert regdb.get_config().data.random_remap == 0.0


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: augment.TrainAugment(remap_probability=1.5),
            "remap_probability",
        ),
        (lambda: augment.TrainAugment(remap_knots=1), "remap_knots"),
        (lambda: augment.TrainAugment(remap_knots=2.5), "remap_knots"),
        (
            lambda: augment.sample_remap(SEED, num=2, probability=-1, knots=3),
            "remap probability",
        ),
        (
            lambda: image_ops.remap_intensity(
                np.zeros((1, 2, 2, 3)), [True], np.zeros(3)
            ),
            "curves",
        ),
        (
            lambda: image_ops.remap_intensity(
                np.zeros((1, 2, 2, 3)), [True], np.zeros((1, 1))
            ),
            "curves",
        ),
        (
            lambda: image_ops.remap_intensity(
                np.zeros((2, 2, 3)), [True], np.zeros((1, 3))
            ),
            "batch",
        ),
    ],
)
def test_remap_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
