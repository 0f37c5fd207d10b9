r"""How far the images the network sees are from the release's preprocessing.

For every split, compares `data_pipeline.datasets.iter_images` (what the
training and evaluation pipelines feed the network, before augmentation)
with the authors' preprocessing done here with PIL: open the original file,
`convert("RGB")`, `resize((144, 288), Image.LANCZOS)`. Prints the mean and
max absolute difference in grey levels and the PSNR per split (want 0 / 0 /
inf).

On your copy of a dataset:

  python benchmarks/release_pixels.py --dataset=sysu_mm01 \
      --manual_dir=/data/SYSU-MM01 --data_dir=/data/tfds

On synthetic folders whose files are larger than, smaller than and exactly
at 288x144 (generated under --workdir), in each storage format:

  python benchmarks/release_pixels.py --mixed_sizes --workdir=/tmp/pixels \
      --image_format=raw
"""

import os

# Quiet TensorFlow's C++ logging; must precede its import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags, logging
from PIL import Image

from data_pipeline import datasets, synthetic
from data_pipeline.sysu_mm01 import sysu_mm01
from mclnet_jax.configs import regdb, sysu

_DATASET = flags.DEFINE_enum(
    "dataset", "sysu_mm01", ["sysu_mm01", "regdb"], "Dataset to compare."
)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The dataset folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
_IMAGE_FORMAT = flags.DEFINE_enum(
    "image_format", None, sysu_mm01.IMAGE_FORMATS, "How pixels are stored."
)
_SPLITS = flags.DEFINE_list("splits", None, "Splits (default: train and test).")
_MIXED = flags.DEFINE_bool(
    "mixed_sizes",
    False,
    "Generate synthetic SYSU-MM01 and RegDB folders with files larger "
    "than, smaller than and at 288x144 under --workdir, and compare both.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for --mixed_sizes data and records."
)

RELEASE_SIZE = (144, 288)  # PIL's (width, height).
# (height, width) of the rewritten synthetic files, in turn.
MIXED_SIZES = ((360, 180), (300, 170), (128, 64), (48, 24), (288, 144))


def release_pixels(path: str) -> np.ndarray:
    """The authors' preprocessing of one file: uint8 [288, 144, 3]."""
    with Image.open(path) as img:
        return np.asarray(
            img.convert("RGB").resize(RELEASE_SIZE, Image.Resampling.LANCZOS)
        )


def compare(data_config, split: str) -> dict[str, float]:
    """Mean/max absolute difference and PSNR of one split, all pixels."""
    total = squares = count = 0
    worst = 0
    images = 0
    for item in datasets.iter_images(data_config, split):
        want = release_pixels(
            os.path.join(data_config.manual_dir, item["file_name"])
        ).astype(np.int64)
        diff = np.abs(item["image"].astype(np.int64) - want)
        total += int(diff.sum())
        squares += int((diff**2).sum())
        count += diff.size
        worst = max(worst, int(diff.max()))
        images += 1
    mse = squares / count
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    return {"images": images, "mean": total / count, "max": worst, "psnr": psnr}


def _mixed_folders(workdir: str) -> dict[str, str]:
    """Synthetic SYSU-MM01 and RegDB folders with files of MIXED_SIZES."""
    roots = {
        "sysu_mm01": os.path.join(workdir, "sysu_raw"),
        "regdb": os.path.join(workdir, "regdb_raw"),
    }
    if not os.path.isdir(roots["sysu_mm01"]):
        synthetic.generate_sysu(
            roots["sysu_mm01"],
            num_identities=24,
            visible_images_per_camera=3,
            infrared_images_per_camera=3,
            height=128,
            width=64,
            seed=0,
        )
        _rewrite(roots["sysu_mm01"])
    if not os.path.isdir(roots["regdb"]):
        synthetic.generate_regdb(
            roots["regdb"],
            num_identities=20,
            images_per_modality=4,
            height=128,
            width=64,
            seed=0,
            num_trials=1,
        )
        _rewrite(roots["regdb"])
    return roots


def _rewrite(root: str) -> None:
    """Resizes every image under `root` to MIXED_SIZES in turn (same
    format; JPEG quality 90)."""
    paths = sorted(
        os.path.join(d, n)
        for d, _, names in os.walk(root)
        for n in names
        if n.endswith((".jpg", ".bmp"))
    )
    for i, path in enumerate(paths):
        h, w = MIXED_SIZES[i % len(MIXED_SIZES)]
        with Image.open(path) as img:
            img = img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        if path.endswith(".jpg"):
            img.save(path, format="JPEG", quality=90)
        else:
            img.save(path, format="BMP")


def _data_config(dataset: str, manual_dir: str, data_dir: str | None):
    config = sysu.get_config() if dataset == "sysu_mm01" else regdb.get_config()
    dc = config.data
    dc.manual_dir = manual_dir
    dc.data_dir = data_dir
    dc.image_format = _IMAGE_FORMAT.value
    return dc


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TFDS's build and reuse logs.
    if _MIXED.value:
        if not _WORKDIR.value:
            raise app.UsageError("--mixed_sizes needs --workdir.")
        roots = _mixed_folders(_WORKDIR.value)
        data_dir = os.path.join(_WORKDIR.value, "tfds")
        jobs = [(name, root, data_dir) for name, root in roots.items()]
    else:
        if not _MANUAL_DIR.value:
            raise app.UsageError("Pass --manual_dir (or --mixed_sizes).")
        jobs = [(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value)]
    print(f"image_format: {_IMAGE_FORMAT.value or 'the config default (raw)'}")
    print("| split | images | mean abs. difference | max | PSNR |")
    print("|---|---|---|---|---|")
    for dataset, root, data_dir in jobs:
        dc = _data_config(dataset, root, data_dir)
        for split in _SPLITS.value or ("train", "test"):
            r = compare(dc, split)
            print(
                f"| {dataset} {split} | {r['images']} | {r['mean']:.4f} | "
                f"{r['max']} | {r['psnr']:.1f} dB |"
            )


if __name__ == "__main__":
    app.run(main)
