r"""Training input pipeline throughput and memory on a SYSU-sized dataset.

Streams `data_pipeline.train_pipeline.make_train_dataset` (8 ids x 4 images
per modality, 288x144, the release's augmentation) over a prepared SYSU-MM01
TFDS dataset and prints the size of its records on disk, images/s (median
over windows, process CPU time per image) and the peak resident memory of
the process (ru_maxrss) while streaming. With --profile it then times
prefixes of the pipeline (read, decode, normalise, crop + flip, erasing; and
op-by-op TF instead of XLA) to show what limits the rate.

A SYSU-sized synthetic set (491 ids, 27.5k visible + 14.7k infrared images at
288x144; the "train" split has about 22k + 12k like the real one) is
generated and built on first use (about 10 + 10 minutes on 2 cores):

  python benchmarks/input_pipeline.py --data_dir=/tmp/sysu_tfds \
      --manual_dir=/tmp/sysu_raw --generate --profile
  python benchmarks/input_pipeline.py --data_dir=/tmp/sysu_tfds  # afterwards
  # the same images stored as PNG (lossless) or JPEG (lossy) instead of raw:
  python benchmarks/input_pipeline.py --data_dir=/tmp/sysu_tfds \
      --manual_dir=/tmp/sysu_raw --image_format=png

The figures depend on the machine and on what else runs on it: compare
runs made back to back.
"""

import os
import resource
import statistics
import time

from absl import app, flags, logging

# Quiet TensorFlow's C++ logging; must precede its import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from data_pipeline import (
    augment,
    image_ops,
    records,
    sampling,
    synthetic,
    train_pipeline,
)
from data_pipeline.sysu_mm01 import sysu_mm01
from data_pipeline.tf_setup import tf

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "TFDS data_dir holding (or to hold) sysu_mm01.",
    required=True,
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "SYSU-MM01 folder to build from if data_dir lacks it."
)
_GENERATE = flags.DEFINE_bool(
    "generate",
    False,
    "Write a SYSU-sized synthetic set into --manual_dir first if it is empty.",
)
_CONFIG = flags.DEFINE_string("config", "288x144", "sysu_mm01 builder config.")
_IMAGE_FORMAT = flags.DEFINE_enum(
    "image_format",
    None,
    sysu_mm01.IMAGE_FORMATS,
    "How the records store pixels (None: the config's, raw by default).",
)
_SPLIT = flags.DEFINE_string("split", "train", "Split to stream.")
_HEIGHT = flags.DEFINE_integer("height", 288, "Output image height.")
_WIDTH = flags.DEFINE_integer("width", 144, "Output image width.")
_P = flags.DEFINE_integer("num_identities", 8, "P identities per batch.")
_K = flags.DEFINE_integer("num_instances", 4, "K images per id and modality.")
_STEPS = flags.DEFINE_integer("steps", 240, "Timed steps (headline run).")
_WINDOW = flags.DEFINE_integer("window", 20, "Steps per timing window.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed steps first.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also time pipeline prefixes.")
_PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps", 160, "Timed steps per profiled prefix."
)
_THREADS = flags.DEFINE_integer(
    "threads", 0, "tf.data private thread pool size (0: TF default)."
)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB.


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _time(dataset, *, images_per_element, steps, window, warmup):
    """(median images/s over windows, [rates], CPU microseconds per image)."""
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    rates = []
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    for _ in range(max(1, steps // window)):
        start = time.perf_counter()
        for _ in range(window):
            next(it)
        seconds = time.perf_counter() - start
        rates.append(window * images_per_element / seconds)
    cpu = _cpu_seconds() - cpu0
    done = max(1, steps // window) * window * images_per_element
    del wall0
    return statistics.median(rates), rates, cpu / done * 1e6


def _builder():
    config = sysu_mm01.resolve_config(
        _CONFIG.value, _IMAGE_FORMAT.value, default="288x144"
    )
    builder = sysu_mm01.SysuMm01(data_dir=_DATA_DIR.value, config=config)
    if builder.info.splits:
        return builder
    if not _MANUAL_DIR.value:
        raise app.UsageError(
            f"sysu_mm01/{config} is not prepared under "
            f"{_DATA_DIR.value}; pass --manual_dir (and --generate for a "
            "synthetic set)."
        )
    if _GENERATE.value and not os.path.isdir(
        os.path.join(_MANUAL_DIR.value, "exp")
    ):
        logging.info(
            "Generating a SYSU-sized synthetic set in %s ...", _MANUAL_DIR.value
        )
        synthetic.generate_sysu(
            _MANUAL_DIR.value, seed=0, **synthetic.SYSU_PRESETS["sysu_sized"]
        )
    logging.info("Building sysu_mm01/%s into %s ...", config, _DATA_DIR.value)
    start = time.perf_counter()
    builder = sysu_mm01.prepare(
        manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value, config=config
    )
    print(f"built in {time.perf_counter() - start:.0f} s")
    return builder


def _record_sizes(builder, split: str) -> tuple[float, float, float]:
    """(MiB of all the config's record files, MiB of `split`'s, KiB per
    image of `split`) on disk."""
    total = split_bytes = 0
    for path in builder.data_path.iterdir():
        size = tf.io.gfile.stat(os.fspath(path)).length
        if ".array_record-" in path.name or ".tfrecord-" in path.name:
            total += size
            if f"-{split}." in path.name:
                split_bytes += size
    n = builder.info.splits[split].num_examples
    return total / 2**20, split_bytes / 2**20, split_bytes / 2**10 / n


def _options():
    options = tf.data.Options()
    if _THREADS.value:
        options.threading.private_threadpool_size = _THREADS.value
    return options


def _prefixes(source, metadata):
    """Pipelines that stop after each stage (same parallelism as the real one).

    Yields:
      (name, dataset of steps, divisor of the number of timed steps).
    """
    rows = 2 * _P.value * _K.value
    size = (_HEIGHT.value, _WIDTH.value)
    steps = tf.data.Dataset.range(10**9)

    plan = sampling.epoch_plan(
        visible_labels=metadata.label[metadata.visible_indices],
        infrared_labels=metadata.label[metadata.infrared_indices],
        seed=0,
        epoch=0,
        num_identities=_P.value,
        num_instances=_K.value,
    )

    def fetch(step):
        batch = int(step) % plan.num_batches
        index = np.concatenate(
            [
                metadata.visible_indices[plan.visible[batch]],
                metadata.infrared_indices[plan.infrared[batch]],
            ]
        )
        return records.read_records(source, index)

    storage = records.image_storage(source)

    def read(step):
        serialized = tf.numpy_function(fetch, [step], tf.string, stateful=False)
        return records.parse_images(
            tf.ensure_shape(serialized, [rows]), storage=storage
        )

    def decode(stored):
        return image_ops.decode_and_resize(
            stored, height=size[0], width=size[1]
        )

    encoded = steps.map(read, num_parallel_calls=2, deterministic=True)
    per_image = encoded.unbatch().map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    yield "read + parse records (per step)", encoded, 1
    yield f"+ decode ({storage}), batch (uint8)", per_image.batch(rows), 1

    def train(**kwargs):
        return train_pipeline.make_train_dataset(
            source,
            seed=0,
            num_identities=_P.value,
            num_instances=_K.value,
            image_size=size,
            metadata=metadata,
            **kwargs,
        )

    no_crop = augment.TrainAugment(
        padding=0, flip_probability=0.0, erasing_probability=0.0
    )
    no_erasing = augment.TrainAugment(erasing_probability=0.0)
    yield ("+ draw params, normalise (XLA)", train(augmentation=no_crop), 1)
    yield (
        "+ pad/crop + flip (per image, uint8)",
        train(augmentation=no_erasing),
        1,
    )
    yield "+ random erasing (fused in XLA) = full", train(), 1
    # Several times slower: time fewer steps.
    yield (
        "full, normalise + erase op by op (no XLA)",
        train(jit_compile=False),
        4,
    )


def main(argv):
    del argv
    load_start = os.getloadavg()
    builder = _builder()
    total_mib, split_mib, kib = _record_sizes(builder, _SPLIT.value)
    print(
        f"records sysu_mm01/{builder.builder_config.name} "
        f"{builder.version}: {total_mib:.0f} MiB on disk (all splits), "
        f"split {_SPLIT.value} {split_mib:.0f} MiB = {kib:.1f} KiB/image"
    )
    source = records.open_source(builder, _SPLIT.value)
    rss_before = _current_rss_mb()
    start = time.perf_counter()
    metadata = records.read_metadata(source)
    metadata_s = time.perf_counter() - start
    rows = 2 * _P.value * _K.value
    steps_per_epoch = train_pipeline.train_steps_per_epoch(
        metadata, num_identities=_P.value, num_instances=_K.value
    )
    print(
        f"split {_SPLIT.value}: {metadata.visible_indices.size} visible + "
        f"{metadata.infrared_indices.size} infrared images, "
        f"{metadata.num_classes} ids; metadata read in {metadata_s:.1f} s; "
        f"{steps_per_epoch} steps/epoch"
    )
    print(
        f"load average at start: {load_start[0]:.1f} (1 min), "
        f"{os.cpu_count()} CPUs"
    )

    dataset = train_pipeline.make_train_dataset(
        source,
        seed=0,
        num_identities=_P.value,
        num_instances=_K.value,
        image_size=(_HEIGHT.value, _WIDTH.value),
        metadata=metadata,
    ).with_options(_options())
    median, rates, cpu_us = _time(
        dataset,
        images_per_element=rows,
        steps=_STEPS.value,
        window=_WINDOW.value,
        warmup=_WARMUP.value,
    )
    print(
        f"training pipeline {_HEIGHT.value}x{_WIDTH.value}, "
        f"{_P.value}x({_K.value}+{_K.value}) per step: "
        f"{median:.0f} images/s median over {len(rates)} windows of "
        f"{_WINDOW.value} steps (min {min(rates):.0f}, "
        f"max {max(rates):.0f}); "
        f"process CPU {cpu_us:.0f} us/image "
        f"(= {1e6 / cpu_us * os.cpu_count():.0f} images/s if "
        f"{os.cpu_count()} cores were free)"
    )
    print(
        f"peak RSS while streaming: {_peak_rss_mb():.0f} MB "
        f"(RSS before reading metadata {rss_before:.0f} MB, now "
        f"{_current_rss_mb():.0f} MB)"
    )
    del dataset

    if _PROFILE.value:
        print(
            "\nprofile (each row adds one stage; CPU us/image is process "
            "CPU time over images, all threads):"
        )
        previous = 0.0
        for name, ds, divisor in _prefixes(source, metadata):
            window = max(1, _WINDOW.value // divisor)
            median, _, cpu_us = _time(
                ds.with_options(_options()),
                images_per_element=rows,
                steps=_PROFILE_STEPS.value // divisor,
                window=window,
                warmup=2,
            )
            delta = cpu_us - previous if not name.startswith("full,") else 0.0
            print(
                f"  {name:44s} {median:7.0f} images/s  {cpu_us:6.0f} us/img"
                + (f"  (+{delta:.0f})" if delta else "")
            )
            if not name.startswith("full,"):
                previous = cpu_us
    print(f"load average at end: {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    app.run(main)
