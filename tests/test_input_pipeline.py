"""End-to-end tests of the records, training and evaluation pipelines.

The tiny synthetic SYSU-MM01 of conftest.py (32x16 images, "original"
config: the images kept at their size, raw pixels) is generated and built
once per session. References: the split read through TFDS's own feature
decoding (labels, cameras, the stored pixels), and plain numpy
augmentation.
"""

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import (
    augment,
    datasets,
    eval_pipeline,
    image_ops,
    records,
    train_pipeline,
)
from mclnet_jax.configs import synthetic

H, W = 32, 16
P, K = 2, 2
SEED = 5
ATOL = 1e-5


@pytest.fixture(scope="module")
def builder(sysu_raw, sysu_builder):
    # The references below crop and pad the records themselves: the
    # pipeline's image size must be the stored one.
    assert (sysu_raw.params["height"], sysu_raw.params["width"]) == (H, W)
    return sysu_builder("original")


@pytest.fixture(scope="module")
def source(builder):
    return records.open_source(builder, "train")


def _reference(builder, split):
    """A split as feature dicts; "image" uint8 [h, w, 3] as TFDS decodes
    the stored pixels."""
    examples = [dict(ex) for ex in builder.as_data_source(split)]
    for ex in examples:
        assert ex["image"].dtype == np.uint8 and ex["image"].shape[-1] == 3
    return examples


@pytest.fixture(scope="module")
def reference(builder):
    return _reference(builder, "train")


@pytest.fixture(scope="module")
def metadata(source):
    return records.read_metadata(source)


def _take(source, n, **kwargs):
    args = dict(
        seed=SEED,
        num_identities=P,
        num_instances=K,
        image_size=(H, W),
        num_steps=n,
    )
    args.update(kwargs)
    return list(
        train_pipeline.make_train_dataset(source, **args).as_numpy_iterator()
    )


@pytest.fixture(scope="module")
def stream(source, metadata):
    """Steps 0 .. spe + 2 of an uninterrupted run (crosses an epoch)."""
    spe = train_pipeline.train_steps_per_epoch(
        metadata, num_identities=P, num_instances=K
    )
    return _take(source, spe + 3, metadata=metadata)


def test_metadata_matches_tfds_decoding(metadata, builder):
    reference = list(builder.as_data_source("train"))  # TFDS decodes all.
    for key in ("label", "identity", "camera", "modality"):
        np.testing.assert_array_equal(
            getattr(metadata, key), [int(ex[key]) for ex in reference]
        )
    names = [ex["file_name"] for ex in reference]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    assert list(metadata.file_name) == names
    assert metadata.num_classes == len({int(ex["label"]) for ex in reference})
    assert set(metadata.camera[metadata.infrared_indices]) <= {3, 6}


def test_stream_contract(stream, metadata):
    spe = train_pipeline.train_steps_per_epoch(
        metadata, num_identities=P, num_instances=K
    )
    # One epoch covers the larger modality once, P * K images a step.
    assert (
        spe
        == max(metadata.visible_indices.size, metadata.infrared_indices.size)
        // (P * K)
        + 1
    )
    for step, batch in enumerate(stream):
        assert set(batch) == {
            "visible",
            "infrared",
            "visible_labels",
            "infrared_labels",
            "visible_cameras",
            "infrared_cameras",
            "step",
        }
        assert batch["step"] == step
        for key in ("visible", "infrared"):
            assert batch[key].shape == (P * K, H, W, 3)
            assert batch[key].dtype == np.float32
        for key in (
            "visible_labels",
            "infrared_labels",
            "visible_cameras",
            "infrared_cameras",
        ):
            assert batch[key].shape == (P * K,) and batch[key].dtype == np.int32
        labels = batch["visible_labels"]
        np.testing.assert_array_equal(labels, batch["infrared_labels"])
        # Identity-major rows: K equal labels per identity, P distinct ids.
        per_id = labels.reshape(P, K)
        assert np.all(per_id == per_id[:, :1])
        assert len(set(per_id[:, 0].tolist())) == P
        assert set(batch["visible_cameras"]) <= {1, 2, 4, 5}
        assert set(batch["infrared_cameras"]) <= {3, 6}


@pytest.mark.parametrize("epoch", [0, 1])
def test_stream_images_are_the_augmented_planned_records(
    stream, metadata, reference, epoch
):
    # Step 0, and the second step of the second epoch.
    spe = train_pipeline.train_steps_per_epoch(
        metadata, num_identities=P, num_instances=K
    )
    step = epoch * (spe + 1)
    assert step < len(stream)
    batch = stream[step]
    visible, infrared = train_pipeline.step_indices(
        metadata, seed=SEED, step=step, num_identities=P, num_instances=K
    )
    index = np.concatenate([visible, infrared])
    assert np.all(metadata.modality[visible] == 0)
    assert np.all(metadata.modality[infrared] == 1)
    np.testing.assert_array_equal(
        np.concatenate([batch["visible_labels"], batch["infrared_labels"]]),
        [int(reference[i]["label"]) for i in index],
    )
    np.testing.assert_array_equal(
        np.concatenate([batch["visible_cameras"], batch["infrared_cameras"]]),
        [int(reference[i]["camera"]) for i in index],
    )
    # Augmentation parameters of the step (rows = positions in the batch).
    params = augment.sample_train_params(
        augment.step_seed(SEED, step), num=2 * P * K, height=H, width=W
    )
    params = {k: v.numpy() for k, v in params.items()}
    config = augment.TrainAugment()
    images = np.concatenate([batch["visible"], batch["infrared"]])
    for row, i in enumerate(index):
        pixels = np.pad(reference[i]["image"], ((10, 10), (10, 10), (0, 0)))
        dy, dx = params["offsets"][row]
        img = pixels[dy : dy + H, dx : dx + W]
        if params["flips"][row]:
            img = img[:, ::-1]
        img = (img / 255.0 - np.array(config.mean)) / np.array(config.std)
        if params["erase"][row]:
            t, left = params["top"][row], params["left"][row]
            img[
                t : t + params["height"][row],
                left : left + params["width"][row],
            ] = config.erasing_fill
        np.testing.assert_allclose(images[row], img, atol=ATOL)


def test_resume_yields_exactly_the_uninterrupted_stream(
    stream, source, metadata
):
    start = len(stream) - 5  # Crosses the epoch boundary.
    resumed = _take(source, 5, start_step=start, metadata=metadata)
    for a, b in zip(stream[start:], resumed, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_two_hosts_tile_the_single_host_batch(stream, source, metadata):
    parts = [
        _take(
            source,
            2,
            start_step=1,
            metadata=metadata,
            process_index=i,
            process_count=2,
        )
        for i in range(2)
    ]
    for step in range(2):
        whole = stream[1 + step]
        for key in (
            "visible",
            "infrared",
            "visible_labels",
            "infrared_labels",
            "visible_cameras",
            "infrared_cameras",
        ):
            got = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(got, whole[key], err_msg=key)
    with pytest.raises(ValueError, match="does not split evenly"):
        _take(source, 1, metadata=metadata, process_count=3)


def test_bfloat16(source, stream, metadata):
    got = _take(source, 2, dtype=tf.bfloat16, metadata=metadata)
    assert got[0]["visible"].dtype == tf.bfloat16.as_numpy_dtype
    for a, b in zip(stream[:2], got, strict=True):
        np.testing.assert_allclose(
            b["visible"].astype(np.float32), a["visible"], atol=0.02, rtol=0.01
        )
        np.testing.assert_array_equal(
            b["infrared_labels"], a["infrared_labels"]
        )


def test_non_serialized_source_is_rejected(builder, metadata):
    with pytest.raises(ValueError, match="serialized tf.train.Example"):
        _take(builder.as_data_source("train"), 1, metadata=metadata)
    with pytest.raises(ValueError, match="serialized tf.train.Example"):
        eval_pipeline.make_eval_dataset(
            builder.as_data_source("test"), batch_size=4
        )


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _record(label, modality, image=b"\xff\xd8"):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": _int64(label),
        "identity": _int64(label),
        "camera": _int64(1 + 2 * modality),
        "modality": _int64(modality),
        "file_name": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[f"{label}.jpg".encode()])
        ),
    }
    return tf.train.Example(
        features=tf.train.Features(feature=feature)
    ).SerializeToString()


def test_unpaired_identity_is_rejected():
    examples = [
        _record(0, 0),
        _record(0, 1),
        _record(1, 0),
        _record(1, 1),
        _record(2, 0),
    ]
    with pytest.raises(ValueError, match="only visible: \\[2\\]"):
        train_pipeline.make_train_dataset(
            examples, seed=0, num_identities=2, num_instances=1
        )


@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_covers_every_image_once(builder, hosts):
    source = records.open_source(builder, "test")
    reference = _reference(builder, "test")
    n = len(source)
    batch_size = 12  # Even (two hosts); the test split has 16 per identity.
    assert n % batch_size  # The last batch is padded.
    parts = [
        list(
            eval_pipeline.make_eval_dataset(
                source,
                batch_size=batch_size,
                image_size=(H, W),
                process_index=i,
                process_count=hosts,
            ).as_numpy_iterator()
        )
        for i in range(hosts)
    ]
    assert len({len(p) for p in parts}) == 1  # Same number of batches.
    seen = []
    for part in parts:
        for batch in part:
            assert batch["image"].shape == (batch_size // hosts, H, W, 3)
            assert batch["mask"].dtype == bool
            real = batch["mask"]
            assert np.all(batch["index"][~real] == -1)
            assert np.all(batch["image"][~real] == 0)
            seen.extend(batch["index"][real].tolist())
            for row in np.flatnonzero(real):
                img = reference[batch["index"][row]]["image"]
                want = (
                    img / 255.0 - np.array(image_ops.IMAGENET_MEAN)
                ) / np.array(image_ops.IMAGENET_STD)
                np.testing.assert_allclose(batch["image"][row], want, atol=ATOL)
    assert sorted(seen) == list(range(n))


def test_eval_subset_keeps_order(builder):
    source = records.open_source(builder, "test")
    subset = np.array([9, 2, 20, 2, 17])  # Order and repeats are kept.
    batches = list(
        eval_pipeline.make_eval_dataset(
            source, batch_size=4, image_size=(H, W), indices=subset
        ).as_numpy_iterator()
    )
    index = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(index[mask], subset)
    assert mask.sum() == subset.size and len(batches) == 2
    with pytest.raises(ValueError, match="indices must be in"):
        eval_pipeline.make_eval_dataset(
            source, batch_size=4, indices=[len(source)]
        )


def test_random_grey_turns_the_planned_visible_images_grey(
    source, metadata, reference
):
    # Ours (not the release's): with probability 1 every visible image is
    # its luma; infrared images (grey already) are unchanged. Crop, flip
    # and erasing off so the images are the records themselves.
    config = augment.TrainAugment(
        padding=0,
        flip_probability=0.0,
        erasing_probability=0.0,
        grey_probability=1.0,
    )
    batch = _take(source, 1, metadata=metadata, augmentation=config)[0]
    visible, infrared = train_pipeline.step_indices(
        metadata, seed=SEED, step=0, num_identities=P, num_instances=K
    )
    mean, std = np.array(config.mean), np.array(config.std)
    for images, index, grey in (
        (batch["visible"], visible, True),
        (batch["infrared"], infrared, False),
    ):
        for img, i in zip(images, index, strict=True):
            pixels = reference[i]["image"].astype(np.float64)
            if grey:
                luma = pixels @ np.array([0.299, 0.587, 0.114])
                pixels = np.repeat(luma[..., None], 3, axis=-1)
            want = (pixels / 255.0 - mean) / std
            np.testing.assert_allclose(img, want, atol=ATOL)
    # Really grey: the three channels agree once un-normalised.
    rgb = batch["visible"] * std + mean
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-5)
    np.testing.assert_allclose(rgb[..., 1], rgb[..., 2], atol=1e-5)


def test_train_augment_follows_the_config():
    # Every augmentation field of config.data reaches the pipeline (a
    # missing one would silently train without it).
    demo = synthetic.get_config()
    got = datasets.train_augment(demo.data)
    assert (got.padding, got.erasing_probability, got.grey_probability) == (
        demo.data.pad,
        demo.data.random_erasing,
        demo.data.random_grey,
    )
    assert got.grey_probability == 0.5
    demo.data.random_erasing = 0.8
    demo.data.random_grey = 0.0
    got = datasets.train_augment(demo.data)
    assert (got.erasing_probability, got.grey_probability) == (0.8, 0.0)
