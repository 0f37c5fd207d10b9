"""Tests of data_pipeline/augment.py and data_pipeline/image_ops.py.

Each op is checked against a plain numpy computation, eagerly and inside
tf.data (same results both ways), and the random draws against the
distributions of the authors' release (flip rate, crop offsets, erasing rate,
area, aspect, fill values). Whole-batch chains come from `augment_reference`.
"""

import dataclasses
import io
import math
import random

import augment_reference
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_pipeline import augment, image_ops

H, W = 32, 16
SEED = tf.constant([3, 11], tf.int64)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, H, W, 3), dtype=np.uint8)


def _in_tf_data(fn, *tensors):
    """Runs fn(*tensors) inside a tf.data map (graph mode, tf.data threads)."""
    ds = tf.data.Dataset.from_tensors(tuple(tensors)).map(fn)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------ decode/resize


def test_decode_image_rgb_and_grey(images):
    rgb = images[0]
    np.testing.assert_array_equal(
        image_ops.decode_image(_png(rgb)).numpy(), rgb
    )
    grey = rgb[..., 0]
    decoded = image_ops.decode_image(_png(grey)).numpy()
    assert decoded.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(decoded[..., c], grey)


def test_resize_same_size_is_identity_and_downscale_matches_pil(images):
    np.testing.assert_array_equal(
        image_ops.resize(images[0], height=H, width=W).numpy(), images[0]
    )
    # A smooth image shrunk by 2: antialiased bilinear ~ PIL's bilinear.
    y, x = np.mgrid[0:64, 0:32]
    smooth = np.stack([4 * y, 8 * x, 2 * (x + y)], -1).clip(0, 255)
    smooth = smooth.astype(np.uint8)
    ours = image_ops.resize(smooth, height=H, width=W).numpy().astype(int)
    pil = np.asarray(Image.fromarray(smooth).resize((W, H), Image.BILINEAR))
    assert ours.dtype == int and ours.shape == (H, W, 3)
    assert np.abs(ours - pil.astype(int)).max() <= 2


# ------------------------------------------------------ deterministic ops


def test_pad_and_crop_matches_numpy(images):
    offsets = np.array([[0, 0], [20, 20], [3, 17], [10, 10], [20, 0], [7, 2]])
    out = image_ops.pad_and_crop(images, offsets, padding=10).numpy()
    padded = np.pad(images, ((0, 0), (10, 10), (10, 10), (0, 0)))
    for n, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(
            out[n], padded[n, dy : dy + H, dx : dx + W]
        )


def test_single_image_crop_and_flip_match_numpy_eagerly_and_in_tf_data(images):
    padded = np.pad(images, ((0, 0), (10, 10), (10, 10), (0, 0)))
    config = augment.TrainAugment()
    for n, (dy, dx, flip) in enumerate(
        [(0, 0, True), (20, 20, False), (3, 17, True), (12, 1, False)]
    ):
        params = {
            "offsets": np.array([dy, dx], np.int32),
            "flips": np.array(flip),
        }
        want = padded[n, dy : dy + H, dx : dx + W]
        if flip:
            want = want[:, ::-1]

        def fn(image, offsets, flips):
            return augment.crop_and_flip(
                image, {"offsets": offsets, "flips": flips}, config=config
            )

        eager = fn(images[n], params["offsets"], params["flips"]).numpy()
        np.testing.assert_array_equal(eager, want)
        np.testing.assert_array_equal(
            _in_tf_data(fn, images[n], params["offsets"], params["flips"]), want
        )


def test_flip_left_right_matches_numpy(images):
    flips = np.array([True, False, True, True, False, False])
    out = image_ops.flip_left_right(images, flips).numpy()
    for n in range(len(images)):
        want = images[n, :, ::-1] if flips[n] else images[n]
        np.testing.assert_array_equal(out[n], want)


def test_normalize_matches_torchvision_formula(images):
    out = image_ops.normalize(images).numpy()
    # torchvision's ImageNet statistics, written out (not read from image_ops).
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    assert image_ops.IMAGENET_MEAN == pytest.approx(tuple(mean), abs=0)
    assert image_ops.IMAGENET_STD == pytest.approx(tuple(std), abs=0)
    want = (images / 255.0 - mean) / std
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_erase_matches_numpy():
    images = np.random.default_rng(1).normal(size=(3, H, W, 3))
    images = images.astype(np.float32)
    boxes = {
        "erase": np.array([True, False, True]),
        "top": np.array([2, 5, 0]),
        "left": np.array([3, 1, 0]),
        "height": np.array([7, 9, 31]),
        "width": np.array([4, 4, 15]),
    }
    fill = (0.25, -1.5, 3.0)
    out = image_ops.erase(images, boxes, fill=fill).numpy()
    want = images.copy()
    for n in range(3):
        if boxes["erase"][n]:
            t, left = boxes["top"][n], boxes["left"][n]
            want[
                n, t : t + boxes["height"][n], left : left + boxes["width"][n]
            ] = fill
    np.testing.assert_array_equal(out, want)


# -------------------------------------------- eagerly == inside tf.data


@pytest.mark.parametrize("name", ["crop", "flip", "erasing", "chain", "jit"])
def test_random_ops_same_eagerly_and_in_tf_data(images, name):
    normalised = image_ops.normalize(images)
    ops = {
        "crop": (
            lambda x, s: augment_reference.random_pad_and_crop(x, seed=s),
            images,
        ),
        "flip": (lambda x, s: augment_reference.random_flip(x, seed=s), images),
        "erasing": (
            lambda x, s: augment_reference.random_erasing(x, seed=s),
            normalised,
        ),
        "chain": (
            lambda x, s: augment_reference.train_augment(x, seed=s),
            images,
        ),
        "jit": (
            lambda x, s: augment_reference.train_augment(
                x, seed=s, jit_compile=True
            ),
            images,
        ),
    }
    fn, x = ops[name]
    eager = fn(tf.constant(x), SEED).numpy()
    graph = _in_tf_data(fn, x, SEED)
    np.testing.assert_array_equal(eager, graph)
    # A different seed gives different augmentations.
    other = fn(tf.constant(x), SEED + 1).numpy()
    assert not np.array_equal(eager, other)


def test_train_augment_is_the_chain_of_ops_and_jit_agrees(images):
    seed = augment.step_seed(5, 17)
    config = augment.TrainAugment()
    params = augment.sample_train_params(
        seed, num=6, height=H, width=W, config=config
    )
    # Independent numpy chain with the same parameters.
    padded = np.pad(images, ((0, 0), (10, 10), (10, 10), (0, 0)))
    want = np.empty(images.shape, np.float64)
    for n in range(6):
        dy, dx = params["offsets"][n].numpy()
        img = padded[n, dy : dy + H, dx : dx + W]
        if params["flips"][n]:
            img = img[:, ::-1]
        img = (img / 255.0 - np.array(config.mean)) / np.array(config.std)
        if params["erase"][n]:
            t, left = params["top"][n].numpy(), params["left"][n].numpy()
            h, w = params["height"][n].numpy(), params["width"][n].numpy()
            img[t : t + h, left : left + w] = np.array(
                config.erasing_fill, np.float32
            )
        want[n] = img
    plain = augment_reference.train_augment(images, seed=seed).numpy()
    jit = augment_reference.train_augment(
        images, seed=seed, jit_compile=True
    ).numpy()
    np.testing.assert_allclose(plain, want, atol=1e-5)
    np.testing.assert_allclose(jit, want, atol=1e-5)
    bf16 = augment_reference.train_augment(images, seed=seed, dtype=tf.bfloat16)
    assert bf16.dtype == tf.bfloat16
    np.testing.assert_allclose(
        tf.cast(bf16, tf.float32).numpy(), want, atol=0.02, rtol=0.01
    )


def test_train_augment_positions_select_rows_of_the_full_draw(images):
    seed = augment.step_seed(0, 3)
    big = np.concatenate([images, images[::-1]])  # 12 rows.
    full = augment_reference.train_augment(big, seed=seed).numpy()
    rows = np.array([7, 2, 11])
    part = augment_reference.train_augment(
        big[rows], seed=seed, positions=rows, num_rows=12
    ).numpy()
    np.testing.assert_array_equal(part, full[rows])


def test_step_seed_differs_per_step_and_seed():
    seeds = {
        tuple(augment.step_seed(s, t).numpy())
        for s in range(3)
        for t in range(50)
    }
    assert len(seeds) == 150


# -------------------------------------------------------------- statistics


def _sigma_bound(count, n, p, sigmas=5):
    return abs(count - n * p) < sigmas * math.sqrt(n * p * (1 - p))


def test_flip_rate():
    n = 20000
    flips = augment.sample_flips(SEED, num=n, probability=0.5).numpy()
    assert _sigma_bound(flips.sum(), n, 0.5)
    flips = augment.sample_flips(SEED, num=n, probability=0.2).numpy()
    assert _sigma_bound(flips.sum(), n, 0.2)


def test_crop_offsets_uniform_over_all_positions():
    n = 21000
    offsets = augment.sample_crop_offsets(SEED, num=n, padding=10).numpy()
    assert offsets.min() == 0 and offsets.max() == 20
    for axis in range(2):
        counts = np.bincount(offsets[:, axis], minlength=21)
        assert all(_sigma_bound(c, n, 1 / 21) for c in counts), counts


def _release_erasing(rng, height, width, probability, sl, sh, r1):
    """The release's RandomErasing loop, in plain python (the reference)."""
    if rng.uniform(0, 1) > probability:
        return None
    for _ in range(100):
        area = height * width
        target_area = rng.uniform(sl, sh) * area
        aspect_ratio = rng.uniform(r1, 1 / r1)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < width and h < height:
            return (rng.randint(0, height - h), rng.randint(0, width - w), h, w)
    return None


@pytest.mark.parametrize("height,width", [(288, 144), (32, 16)])
def test_erasing_distribution_matches_release_loop(height, width):
    n = 20000
    p, (sl, sh), r1 = 0.8, (0.1, 0.8), 0.3
    boxes = {
        k: v.numpy()
        for k, v in augment.sample_erasing(
            SEED,
            num=n,
            height=height,
            width=width,
            probability=p,
            area_range=(sl, sh),
            min_aspect=r1,
        ).items()
    }
    erased = boxes["erase"]
    h, w = boxes["height"][erased], boxes["width"][erased]
    top, left = boxes["top"][erased], boxes["left"][erased]
    # Geometry: inside the image, strictly smaller than it (the release's
    # test), area and aspect within the bounds up to the rounding of h, w.
    assert np.all((h < height) & (w < width) & (h > 0) & (w > 0))
    assert np.all((top >= 0) & (top + h <= height))
    assert np.all((left >= 0) & (left + w <= width))
    area = h * w / (height * width)
    slack_area = (h + w + 1) / (height * width)  # |dh|, |dw| <= 0.5.
    assert np.all(area >= sl - slack_area) and np.all(area <= sh + slack_area)
    aspect = h / w
    assert np.all(aspect >= r1 * (1 - 1 / w) * (1 - 1 / h) - 1e-9)
    assert np.all(aspect <= (1 / r1) * (1 + 1 / w) * (1 + 1 / h) + 1e-9)
    # Distribution against the release's loop run in python.
    rng = random.Random(0)
    ref = [
        _release_erasing(rng, height, width, p, sl, sh, r1) for _ in range(n)
    ]
    ref_boxes = np.array([b for b in ref if b is not None])
    ref_rate = len(ref_boxes) / n
    rate_se = math.sqrt(ref_rate * (1 - ref_rate) / n)
    assert abs(erased.mean() - ref_rate) < 5 * rate_se
    ref_area = ref_boxes[:, 2] * ref_boxes[:, 3] / (height * width)
    se = ref_area.std() * math.sqrt(1 / len(ref_area) + 1 / len(area))
    assert abs(area.mean() - ref_area.mean()) < 5 * se
    ref_aspect = ref_boxes[:, 2] / ref_boxes[:, 3]
    se = ref_aspect.std() * math.sqrt(1 / len(ref_aspect) + 1 / len(aspect))
    assert abs(aspect.mean() - ref_aspect.mean()) < 5 * se
    ref_top = ref_boxes[:, 0] / (height - ref_boxes[:, 2] + 1)
    our_top = top / (height - h + 1)
    assert abs(our_top.mean() - ref_top.mean()) < 0.02
    if height == 288:
        # Large images: hardly any run exhausts the 100 attempts.
        assert _sigma_bound(erased.sum(), n, p)


def test_random_erasing_fill_values_exact():
    n = 200
    images = np.full((n, H, W, 3), 7.0, np.float32)  # Not a fill value.
    out = augment_reference.random_erasing(images, seed=SEED).numpy()
    boxes = augment.sample_erasing(SEED, num=n, height=H, width=W)
    erased_pixels = out != 7.0
    fill = np.array(augment.ERASING_FILL, np.float32)
    for i in range(n):
        mask = erased_pixels[i].any(-1)
        if boxes["erase"][i]:
            assert mask.sum() == boxes["height"][i] * boxes["width"][i]
            np.testing.assert_array_equal(
                out[i][mask], np.broadcast_to(fill, (mask.sum(), 3))
            )
        else:
            assert not mask.any()
    assert 0.5 < boxes["erase"].numpy().mean() < 1.0


def test_disabled_augmentations_leave_images_alone(images):
    config = augment.TrainAugment(
        padding=0, flip_probability=0.0, erasing_probability=0.0
    )
    out = augment_reference.train_augment(
        images, seed=SEED, config=config
    ).numpy()
    np.testing.assert_array_equal(out, image_ops.normalize(images).numpy())
    # And against the formula directly, not only through `normalize`.
    want = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]
    )
    np.testing.assert_allclose(out, want, atol=1e-6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: augment.sample_flips(tf.constant([1, 2, 3]), num=2), "shape"),
        (lambda: augment.sample_flips(tf.constant([1.0, 2.0]), num=2), "int32"),
        (
            lambda: augment.sample_flips(SEED, num=2, probability=1.5),
            r"\[0, 1\]",
        ),
        (
            lambda: augment.sample_erasing(
                SEED, num=2, height=8, width=8, area_range=(0.5, 0.2)
            ),
            "area_range",
        ),
        (
            lambda: augment.sample_erasing(
                SEED, num=2, height=8, width=8, min_aspect=2.0
            ),
            "min_aspect",
        ),
        (
            lambda: image_ops.pad_and_crop(np.zeros((4, 4)), [0, 0], padding=1),
            r"\[H, W, C\]",
        ),
        (
            lambda: image_ops.erase(np.zeros((4, 4, 3)), {}, fill=(0, 0, 0)),
            r"\[N, H, W, C\]",
        ),
        (lambda: augment.TrainAugment(padding=-1), "padding"),
        (lambda: augment.TrainAugment(erasing_fill=(0.1,)), "erasing_fill"),
        (
            lambda: image_ops.normalize(
                np.zeros((1, 2, 2, 3)), mean=(0.0,) * 3, std=(1.0, 0.0, 1.0)
            ),
            "positive",
        ),
        (
            lambda: image_ops.resize(
                np.zeros((4, 4, 3), np.float32), height=2, width=2
            ),
            "uint8",
        ),
        (
            lambda: augment_reference.train_augment(
                np.zeros((2, 4, 4, 3), np.uint8), seed=SEED, positions=[0]
            ),
            "num_rows",
        ),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_to_grey_matches_luma_formula(images):
    grey = np.array([True, False, True, False, False, True])
    out = image_ops.to_grey(images, grey).numpy()
    luma = (
        0.299 * images[..., 0].astype(np.float64)
        + 0.587 * images[..., 1]
        + 0.114 * images[..., 2]
    )
    for n in range(6):
        if grey[n]:
            for c in range(3):
                np.testing.assert_allclose(out[n, ..., c], luma[n], atol=1e-3)
        else:
            np.testing.assert_array_equal(out[n], images[n])
    # A grey image stays as it is (infrared images are unchanged).
    flat = np.repeat(images[..., :1], 3, axis=-1)
    np.testing.assert_allclose(
        image_ops.to_grey(flat, np.ones(6, bool)).numpy(), flat, atol=1e-3
    )


def test_random_grey_in_the_chain_and_other_draws_unchanged(images):
    seed = augment.step_seed(2, 9)
    off = augment.TrainAugment(
        padding=0, flip_probability=0.0, erasing_probability=0.0
    )
    on = dataclasses.replace(off, grey_probability=0.5)
    # The option has its own seed: crop, flip and erasing draws are the
    # same with and without it.
    grey = augment_reference.option_draws(
        seed, without=off, with_option=on, key="grey", num=6, height=H, width=W
    )["grey"]
    out, jit = augment_reference.chain_eager_and_jit(
        images, seed=seed, config=on
    )
    want = augment_reference.numpy_colour_chain(images, grey=grey, config=on)
    np.testing.assert_allclose(out, want, atol=1e-5)
    np.testing.assert_allclose(jit, want, atol=1e-5)


def test_grey_rate():
    grey = augment.sample_grey(SEED, num=20000, probability=0.3).numpy()
    assert abs(grey.mean() - 0.3) < 0.015
    assert not augment.sample_grey(SEED, num=100, probability=0.0).numpy().any()
    assert augment.sample_grey(SEED, num=100, probability=1.0).numpy().all()


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: augment.TrainAugment(grey_probability=1.5),
            "grey_probability",
        ),
        (
            lambda: augment.sample_grey(SEED, num=2, probability=-0.1),
            "grey probability",
        ),
        (lambda: image_ops.to_grey(np.zeros((1, 2, 2, 1)), [True]), "RGB"),
    ],
)
def test_grey_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
