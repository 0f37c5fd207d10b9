"""Tests of CAJ's channel augmentation (Ye et al., ICCV 2021) and its view.

References: CAJ's transforms written out below in numpy, in the release's
CHW layout and with its branches (ChannelAug.py and data_loader.py of
ICCV21_CAJ), driven by the draws of our samplers (which channel, which
branch, which box); the samplers' rates against the release's
`random.randint` / `random.uniform` distributions (inclusive bounds), with
5-sigma bounds over 30000 draws; the three-view stream against the records
(tiny synthetic SYSU-MM01 of conftest.py); one tiny step against the losses
recomputed on the concatenated batch.
"""

import dataclasses
import math
import random

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from tiny_steps import K, P, setup, tiny_batches, tiny_config

from data_pipeline import augment, datasets, records, train_pipeline
from mclnet_jax import config_checks, errors, losses
from mclnet_jax.configs import common, regdb, synthetic, sysu
from mclnet_jax.models import mclnet as mclnet_model

H, W = 32, 16
SEED = tf.constant([7, 3], tf.int64)
N = 30000  # Draws for the rates.
MEAN, STD = (
    np.array(augment.image_ops.IMAGENET_MEAN),
    np.array(augment.image_ops.IMAGENET_STD),
)


def _sigma_bound(count, n, p, sigmas=5):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


# ------------------------------------------------ CAJ's code, in numpy


def _caj_copy_or_grey(img, idx):
    """The body shared by ChannelExchange / ChannelAdapGray; img [3, H, W]."""
    img = img.copy()
    if idx == 0:
        img[1, :, :] = img[0, :, :]
        img[2, :, :] = img[0, :, :]
    elif idx == 1:
        img[0, :, :] = img[1, :, :]
        img[2, :, :] = img[1, :, :]
    elif idx == 2:
        img[0, :, :] = img[2, :, :]
        img[1, :, :] = img[2, :, :]
    else:
        tmp = 0.2989 * img[0, :, :] + 0.5870 * img[1, :, :] + 0.1140 * img[2]
        img[0, :, :] = tmp
        img[1, :, :] = tmp
        img[2, :, :] = tmp
    return img


def caj_channel_exchange(img, idx):
    """ChannelExchange given idx = randint(0, gray)."""
    return _caj_copy_or_grey(img, idx)


def caj_adaptive_grey(img, idx, u, probability):
    """ChannelAdapGray(probability) given idx = randint(0, 3), u = U(0, 1)."""
    if idx == 3 and u > probability:
        return img.copy()
    return _caj_copy_or_grey(img, idx)


def caj_channel_erasing(img, box, mean=(0.4914, 0.4822, 0.4465)):
    """ChannelRandomErasing given the box (x1 row, y1 column, h, w) or None."""
    img = img.copy()
    if box is not None:
        x1, y1, h, w = box
        for c in range(3):
            img[c, x1 : x1 + h, y1 : y1 + w] = mean[c]
    return img


def caj_erasing_loop(rng, height, width, probability=0.5):
    """ChannelRandomErasing's draws, in python: the box or None."""
    sl, sh, r1 = 0.02, 0.4, 0.3
    if rng.uniform(0, 1) > probability:
        return None
    for _ in range(100):
        target_area = rng.uniform(sl, sh) * height * width
        aspect_ratio = rng.uniform(r1, 1 / r1)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < width and h < height:
            return (rng.randint(0, height - h), rng.randint(0, width - w), h, w)
    return None


def _chw(image):
    return np.transpose(image, (2, 0, 1))


def _hwc(image):
    return np.transpose(image, (1, 2, 0))


@pytest.fixture(scope="module")
def normalised():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(10, H, W, 3)).astype(np.float32)
    return ((pixels / 255.0 - MEAN) / STD).astype(np.float32)


# --------------------------------------------------- deterministic ops


def test_channel_modes_match_caj_branches(normalised):
    modes = np.array([-1, 0, 1, 2, 3, 3, 2, 1, 0, -1])
    out = augment.apply_channel_modes(normalised, modes).numpy()
    for n, mode in enumerate(modes):
        img = _chw(normalised[n])
        if mode == augment.CHANNEL_KEEP:
            want = img
        else:
            want = caj_channel_exchange(img, int(mode))
        np.testing.assert_allclose(out[n], _hwc(want), rtol=0, atol=1e-6)
        if mode != augment.CHANNEL_KEEP:
            np.testing.assert_array_equal(out[n, ..., 0], out[n, ..., 1])
            np.testing.assert_array_equal(out[n, ..., 1], out[n, ..., 2])
    # A copied channel is the channel itself, bit for bit.
    for c in range(3):
        np.testing.assert_array_equal(
            out[1 + c, ..., 0], normalised[1 + c, ..., c]
        )


def test_sampled_exchange_matches_caj_randint():
    # Every gray: idx = randint(0, gray) inclusive, 3 and above is grey.
    for gray in (0, 1, 2, 3, 5):
        idx = augment.sample_channel_exchange(SEED, num=N, gray=gray).numpy()
        values = np.arange(gray + 1)
        for v in values:
            want = np.minimum(values, 3) == v
            p = want.mean()
            count = (idx == v).sum()
            assert _sigma_bound(count, N, p), (gray, v, count)
        assert set(np.unique(idx)) == set(np.minimum(values, 3))
    # The release's gray=2: R, G, B a third each, never grey.
    idx = augment.sample_channel_exchange(SEED, num=N).numpy()
    assert set(np.unique(idx)) == {0, 1, 2}


@pytest.mark.parametrize("apply", [1.0, 0.3])
def test_sampled_adaptive_grey_matches_caj_branches(apply):
    p = augment.CAJ_ADAPTIVE_GREY_PROBABILITY
    modes = augment.sample_adaptive_grey(
        SEED, num=N, probability=apply, grey_probability=p
    ).numpy()
    # The draws behind the modes, as the sampler takes them from its seed.
    s_apply, s_index, s_grey = tf.unstack(augment.split_seed(SEED, 3))
    applied = tf.random.stateless_uniform([N], s_apply, alg="philox").numpy()
    index = tf.random.stateless_uniform(
        [N], s_index, minval=0, maxval=4, dtype=tf.int32, alg="philox"
    ).numpy()
    u = tf.random.stateless_uniform([N], s_grey, alg="philox").numpy()
    img = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 2, 2)
    for n in range(200):  # CAJ's branches, row by row.
        want = img
        if applied[n] < apply:
            want = caj_adaptive_grey(img, int(index[n]), float(u[n]), p)
        got = _chw(
            augment.apply_channel_modes(_hwc(img)[None], modes[n : n + 1])
            .numpy()[0]
            .astype(np.float64)
        )
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=str(n))
    # Rates: R, G, B 1/4 each and grey 1/8 of the transformed images.
    for mode, rate in ((0, 0.25), (1, 0.25), (2, 0.25), (3, 0.125)):
        assert _sigma_bound((modes == mode).sum(), N, apply * rate), mode
    keep = 1 - apply + apply * 0.125
    assert _sigma_bound((modes == augment.CHANNEL_KEEP).sum(), N, keep)
    off = augment.sample_adaptive_grey(SEED, num=100, probability=0.0)
    assert (off.numpy() == augment.CHANNEL_KEEP).all()


def test_channel_erasing_distribution_matches_caj_loop():
    height, width = 288, 144
    boxes = {
        k: v.numpy()
        for k, v in augment.sample_channel_erasing(
            SEED, num=N, height=height, width=width
        ).items()
    }
    erased = boxes["erase"]
    h, w = boxes["height"][erased], boxes["width"][erased]
    top, left = boxes["top"][erased], boxes["left"][erased]
    assert np.all((h > 0) & (h < height) & (w > 0) & (w < width))
    assert np.all((top >= 0) & (top + h <= height))
    assert np.all((left >= 0) & (left + w <= width))
    area = h * w / (height * width)
    slack = (h + w + 1) / (height * width)  # Rounding of h and w.
    assert np.all(area >= 0.02 - slack) and np.all(area <= 0.4 + slack)
    rng = random.Random(0)
    ref = [caj_erasing_loop(rng, height, width) for _ in range(N)]
    ref = np.array([b for b in ref if b is not None])
    assert _sigma_bound(erased.sum(), N, len(ref) / N)
    ref_area = ref[:, 2] * ref[:, 3] / (height * width)
    se = ref_area.std() * math.sqrt(1 / len(ref_area) + 1 / len(area))
    assert abs(area.mean() - ref_area.mean()) < 5 * se
    aspect, ref_aspect = h / w, ref[:, 2] / ref[:, 3]
    se = ref_aspect.std() * math.sqrt(1 / len(ref_aspect) + 1 / len(aspect))
    assert abs(aspect.mean() - ref_aspect.mean()) < 5 * se
    # Corners uniform over every position, both ends included.
    for corner, size, extent in ((top, h, height), (left, w, width)):
        frac = corner / np.maximum(extent - size, 1)
        assert abs(frac.mean() - 0.5) < 0.02
        assert (corner == 0).any() and (corner == extent - size).any()


def test_chain_erases_then_exchanges_as_caj():
    # normalise -> ChannelRandomErasing -> channel op, given the draws.
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(12, H, W, 3)).astype(np.uint8)
    config = augment.TrainAugment(
        padding=0,
        flip_probability=0.0,
        erasing_probability=0.0,
        channel_exchange=True,
        channel_adaptive_grey=1.0,
        channel_erasing=1.0,
    )
    params = augment.sample_step_params(
        augment.step_seed(3, 4), rows=4, height=H, width=W, config=config
    )
    for fn in (augment.normalize_and_erase, augment.jit_normalize_and_erase):
        out = fn(pixels, params, config=config, dtype=tf.float32).numpy()
        for n in range(12):
            img = _chw((pixels[n] / 255.0 - MEAN) / STD)
            box = None
            if params["channel_erase"][n]:
                box = tuple(
                    int(params[f"channel_{k}"][n])
                    for k in ("top", "left", "height", "width")
                )
            img = caj_channel_erasing(img, box)
            mode = int(params["channel"][n])
            if mode != augment.CHANNEL_KEEP:
                img = _caj_copy_or_grey(img, mode)
            np.testing.assert_allclose(out[n], _hwc(img), atol=1e-5)
    # Rows by view: visible kept, infrared adaptive, exchanged R/G/B.
    modes = params["channel"].numpy()
    assert (modes[:4] == augment.CHANNEL_KEEP).all()
    assert set(modes[8:]) <= {0, 1, 2}
    assert params["channel_erase"].numpy().any()


def test_step_params_keep_the_two_view_draws():
    seed = augment.step_seed(1, 2)
    off = augment.TrainAugment()
    on = augment.TrainAugment(
        erasing_probability=0.0, channel_exchange=True, channel_erasing=0.5
    )
    two = augment.sample_train_params(
        seed, num=8, height=H, width=W, config=off
    )
    three = augment.sample_step_params(
        seed, rows=4, height=H, width=W, config=on
    )
    assert three["offsets"].shape[0] == 12
    # Visible and infrared rows: the draws of the two-view path.
    for key in ("offsets", "flips", "grey", "remap", "curves"):
        np.testing.assert_array_equal(three[key][:8], two[key])
    # The exchanged rows: draws of their own.
    third = augment.sample_train_params(
        augment.exchanged_view_seed(seed), num=4, height=H, width=W, config=on
    )
    np.testing.assert_array_equal(three["offsets"][8:], third["offsets"])
    # Off: the two-view draws, every row kept.
    plain = augment.sample_step_params(
        seed, rows=4, height=H, width=W, config=off
    )
    for key, value in two.items():
        np.testing.assert_array_equal(plain[key], value)


def test_exchanged_view_draws_are_its_own_as_caj():
    # CAJ's transform_color and transform_color1 crop, flip and erase the
    # same image with independent draws: row r of the exchanged view agrees
    # with visible row r at chance rates, not always.
    rows, pad = 2000, 10
    config = augment.TrainAugment(
        padding=pad,
        erasing_probability=0.0,
        channel_exchange=True,
        channel_exchange_gray=3,
        channel_erasing=0.5,
    )
    params = {
        k: v.numpy()
        for k, v in augment.sample_step_params(
            augment.step_seed(2, 9), rows=rows, height=H, width=W, config=config
        ).items()
    }
    vis, ex = slice(0, rows), slice(2 * rows, 3 * rows)
    same_flip = (params["flips"][vis] == params["flips"][ex]).sum()
    assert _sigma_bound(same_flip, rows, 0.5), same_flip
    # A crop offset is randint(0, 2 pad) per axis: equal with p 1/(2 pad + 1).
    same_offset = (params["offsets"][vis] == params["offsets"][ex]).sum()
    assert _sigma_bound(same_offset, 2 * rows, 1 / (2 * pad + 1)), same_offset
    erased_v, erased_x = (
        params["channel_erase"][vis],
        params["channel_erase"][ex],
    )
    p_v, p_x = erased_v.mean(), erased_x.mean()
    agree = p_v * p_x + (1 - p_v) * (1 - p_x)
    assert _sigma_bound((erased_v == erased_x).sum(), rows, agree)
    # The config's gray reaches the exchanged rows: randint(0, 3), 3 grey.
    modes = params["channel"]
    assert (modes[: 2 * rows] == augment.CHANNEL_KEEP).all()
    for mode in range(4):
        assert _sigma_bound((modes[ex] == mode).sum(), rows, 0.25), mode


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(channel_erasing=0.5), "replaces the release's"),
        (dict(channel_erasing=1.5, erasing_probability=0.0), "channel_erasing"),
        (dict(channel_adaptive_grey=-0.1), "channel_adaptive_grey"),
        (dict(channel_exchange=1), "True or False"),
        (dict(channel_exchange_gray=-1), "integer in"),
        (dict(channel_exchange_gray=2.5), "integer in"),
        (dict(channel_exchange_gray=2**31), "integer in"),
        (
            dict(
                channel_exchange=True,
                mean=(0.5,),
                std=(0.5,),
                erasing_fill=(0.0,),
            ),
            "RGB",
        ),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        augment.TrainAugment(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="RGB"):
        augment.apply_channel_modes(np.zeros((1, 2, 2, 1)), [0])
    # One mode per image: a single mode is not broadcast over the batch.
    with pytest.raises(ValueError, match="one mode per image"):
        augment.apply_channel_modes(np.zeros((2, 2, 2, 3)), [0])
    with pytest.raises(ValueError, match="one mode per image"):
        augment.apply_channel_modes(np.zeros((2, 2, 2, 3)), [[0], [1]])
    with pytest.raises(ValueError, match="views"):
        augment.sample_train_params(SEED, num=3, height=8, width=8, views=[0])
    # An unknown view code is an error, not a silently kept row.
    with pytest.raises(ValueError, match="view codes"):
        augment.sample_train_params(
            SEED, num=3, height=8, width=8, views=[0, 1, 5]
        )


# ----------------------------------------------------- the three views


@pytest.fixture(scope="module")
def builder(sysu_raw, sysu_builder):
    assert (sysu_raw.params["height"], sysu_raw.params["width"]) == (H, W)
    return sysu_builder("original")


@pytest.fixture(scope="module")
def source(builder):
    return records.open_source(builder, "train")


@pytest.fixture(scope="module")
def metadata(source):
    return records.read_metadata(source)


def _take(source, metadata, config, num_steps=2, **kwargs):
    return list(
        train_pipeline.make_train_dataset(
            source,
            seed=5,
            num_identities=2,
            num_instances=2,
            image_size=(H, W),
            num_steps=num_steps,
            augmentation=config,
            metadata=metadata,
            **kwargs,
        ).as_numpy_iterator()
    )


def test_three_view_stream(source, metadata, builder):
    caj = augment.TrainAugment(
        erasing_probability=0.0,
        channel_exchange=True,
        channel_adaptive_grey=1.0,
        channel_erasing=0.5,
    )
    three = _take(source, metadata, caj)
    two = _take(
        source, metadata, dataclasses.replace(caj, channel_exchange=False)
    )
    for step, (batch, plain) in enumerate(zip(three, two, strict=True)):
        assert set(batch) == set(plain) | {"visible_exchanged"}
        assert batch["visible_exchanged"].shape == (4, H, W, 3)
        assert batch["visible_exchanged"].dtype == np.float32
        # The visible and infrared views are those of the two-view stream.
        for key, value in plain.items():
            np.testing.assert_array_equal(batch[key], value, err_msg=key)
        # The visible rows are the plan's records (the exchanged view's
        # images are checked against them below, without augmentation).
        vis, _ = train_pipeline.step_indices(
            metadata, seed=5, step=step, num_identities=2, num_instances=2
        )
        np.testing.assert_array_equal(
            batch["visible_labels"], metadata.label[vis]
        )
    # Without crop, flip or erasing: the exchanged view is the visible
    # record, normalised, with one of its channels in all three; an infrared
    # image is its record, one of its channels in all three, or CAJ's grey.
    bare = augment.TrainAugment(
        padding=0,
        flip_probability=0.0,
        erasing_probability=0.0,
        channel_exchange=True,
        channel_adaptive_grey=1.0,
    )
    batches = _take(source, metadata, bare, num_steps=4)
    reference = [dict(ex) for ex in builder.as_data_source("train")]
    picked = {"visible_exchanged": [], "infrared": []}
    for step, batch in enumerate(batches):
        indices = train_pipeline.step_indices(
            metadata, seed=5, step=step, num_identities=2, num_instances=2
        )
        for key, index in zip(
            ("visible_exchanged", "infrared"), indices, strict=True
        ):
            for row, i in enumerate(index):
                img = _chw((reference[i]["image"] / 255.0 - MEAN) / STD)
                candidates = [img] * (key == "infrared") + [
                    caj_channel_exchange(img, c)
                    for c in range(3 + (key == "infrared"))
                ]
                got = _chw(batch[key][row])
                match = [
                    c
                    for c, want in enumerate(candidates)
                    if np.allclose(got, want, atol=1e-5)
                ]
                assert match, (key, step, row)
                picked[key].append(match[0])
            if key == "visible_exchanged":
                img = (reference[index[0]]["image"] / 255.0 - MEAN) / STD
                np.testing.assert_allclose(batch["visible"][0], img, atol=1e-5)
    # Several branches taken (16 rows each; fixed seed, no flakiness).
    assert len(set(picked["visible_exchanged"])) >= 2
    assert len(set(picked["infrared"])) >= 3


def test_three_view_stream_split_over_hosts(source, metadata):
    caj = augment.TrainAugment(
        erasing_probability=0.0,
        channel_exchange=True,
        channel_adaptive_grey=1.0,
        channel_erasing=0.5,
    )
    whole = _take(source, metadata, caj, num_steps=1)[0]
    halves = [
        _take(
            source, metadata, caj, num_steps=1, process_index=i, process_count=2
        )[0]
        for i in range(2)
    ]
    for key in ("visible", "infrared", "visible_exchanged", "visible_labels"):
        np.testing.assert_array_equal(
            np.concatenate([h[key] for h in halves]), whole[key], err_msg=key
        )


def test_off_by_default_and_the_config_reaches_the_pipeline():
    for config in (
        sysu.get_config(),
        regdb.get_config(),
        synthetic.get_config(),
    ):
        got = datasets.train_augment(config.data)
        assert not got.channel_exchange
        assert got.channel_adaptive_grey == got.channel_erasing == 0.0
        assert got.num_views == 2
    caj = sysu.get_config("mclnet_caj")
    got = datasets.train_augment(caj.data)
    assert got.channel_exchange and got.num_views == 3
    assert (got.channel_adaptive_grey, got.channel_erasing) == (1.0, 0.5)
    assert got.erasing_probability == 0.0
    assert caj.loss.mcm and caj.loss.ica and caj.loss.cca
    # Otherwise the mclnet row.
    mclnet = sysu.get_config("mclnet")
    common.override(
        mclnet,
        {
            "variant": "mclnet_caj",
            "data.random_erasing": 0.0,
            "data.channel_exchange": True,
            "data.channel_adaptive_grey": 1.0,
            "data.channel_erasing": 0.5,
        },
    )
    assert mclnet.to_dict() == caj.to_dict()
    config_checks.check(caj, mode="evaluate")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"data.channel_erasing": 0.5}, "replaces config.data.random_erasing"),
        ({"data.channel_adaptive_grey": 2.0}, "channel_adaptive_grey must be"),
        ({"data.channel_erasing": -1.0}, "channel_erasing must be"),
    ],
)
def test_config_checks(overrides, match):
    config = sysu.get_config()
    common.override(config, overrides)
    with pytest.raises(errors.ConfigurationError, match=match):
        config_checks.check(config, mode="evaluate")


def test_config_check_of_a_non_boolean_exchange():
    # A ConfigDict keeps the field a bool; a config read from JSON may not.
    config = sysu.get_config()
    config.data = ml_collections.ConfigDict(
        {**config.data.to_dict(), "channel_exchange": 1}
    )
    with pytest.raises(
        errors.ConfigurationError, match="channel_exchange must be True or"
    ):
        config_checks.check(config, mode="evaluate")


# --------------------------------------------------------- the step


def test_three_view_step_matches_losses_on_the_concatenated_batch(fast_compile):
    del fast_compile
    config = tiny_config()
    model, _, _, state, step = setup(config)
    batch = tiny_batches(1)[0]
    batch["visible_exchanged"] = (
        np.random.default_rng(9)
        .normal(size=batch["visible"].shape)
        .astype(np.float32)
    )
    new_state, metrics = jax.jit(step)(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics

    lc = config.loss
    n = P * K
    visible = np.concatenate([batch["visible"], batch["visible_exchanged"]])
    labels = np.concatenate(
        [batch["visible_labels"]] * 2 + [batch["infrared_labels"]]
    )
    cameras = (
        np.concatenate(
            [batch["visible_cameras"]] * 2 + [batch["infrared_cameras"]]
        )
        - 1
    )
    modality = np.repeat([0, 1], [2 * n, n])
    mcm = mclnet_model.ModalityClassifier()

    @jax.jit
    def reference():
        out = model.apply(
            state.model_variables(),
            jnp.asarray(visible),
            jnp.asarray(batch["infrared"]),
            train=True,
            mutable=["batch_stats"],
        )[0]
        assert out["pool"].shape[0] == 3 * n

        def mcm_logits(params, stats):
            return mcm.apply(
                {"params": params, "batch_stats": stats},
                out["pool"],
                train=True,
                mutable=["batch_stats"],
            )[0]

        terms = {
            "loss_id": losses.identity_loss(
                logits=out["logits"], labels=labels
            ),
            "loss_triplet": losses.wrt_triplet_loss(
                features=out["pool"], labels=labels, variant=lc.wrt_variant
            ),
            "loss_mcm": losses.modality_classifier_loss(
                logits=mcm_logits(state.mcm_params, state.mcm_batch_stats),
                modality=modality,
            ),
            "loss_confusion": losses.modality_confusion_loss(
                logits=mcm_logits(new_state.mcm_params, state.mcm_batch_stats)
            ),
        }
        for name, target in (("ica", labels), ("cca", cameras)):
            terms[f"loss_{name}"] = losses.center_aggregation_loss(
                features=out["bn"],
                labels=target,
                centers=state.centers[name],
                sigma=lc.sigma,
                rho=lc.rho,
                variant=lc.center_variant,
            )
        terms["loss"] = (
            terms["loss_id"]
            + terms["loss_triplet"]
            + lc.confusion_weight * terms["loss_confusion"]
            + lc.center_weight * (terms["loss_ica"] + terms["loss_cca"])
        )
        return terms

    for key, want in reference().items():
        np.testing.assert_allclose(metrics[key], want, rtol=1e-5, err_msg=key)
    # The exchanged view changes the step: without it, another loss.
    plain = {k: v for k, v in batch.items() if k != "visible_exchanged"}
    _, plain_metrics = jax.jit(step)(state, plain)
    assert not np.isclose(plain_metrics["loss"], metrics["loss"])


def test_exchanged_view_of_another_shape_is_an_error():
    config = tiny_config()
    _, _, _, state, step = setup(config)
    batch = tiny_batches(1)[0]
    batch["visible_exchanged"] = batch["visible"][:2]
    with pytest.raises(ValueError, match="visible_exchanged"):
        jax.eval_shape(step, state, batch)
