"""TFDS builder for SYSU-MM01, and what both re-id builders share.

Reads the authors' folder from `manual_dir` (it cannot be downloaded) and
writes ArrayRecord files by default, for random access through
`builder.as_data_source(split)`. The images are stored as the release's own
preprocessing makes them (PIL decode, `convert("RGB")`, Lanczos resize to
288x144), by default as raw uint8 pixels. Configs ``288x144`` (default) and
``original`` (the size of the files), each with a ``_png`` (lossless,
smaller, slower to decode) and a ``_jpeg`` (lossy, smallest) variant; splits
``train`` (train + val ids), ``train_only``, ``val`` and ``test``. See the
docs/datasets.md.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from collections.abc import Iterable

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging
from PIL import Image

from data_pipeline import (
    datasets,
    layouts,
    tf_setup,  # noqa: F401 (hides accelerators from TF)
)
from mclnet_jax import errors

DEFAULT_FILE_FORMAT = "array_record"
# How the pixels are stored: "raw" uint8 (lossless, no decoding: the
# default), "png" (lossless, about half the size, decoded at every read) or
# "jpeg" (lossy quality 95, smallest; see docs/datasets.md for how far it
# is from the release's pixels).
IMAGE_FORMATS = ("raw", "png", "jpeg")
DEFAULT_IMAGE_FORMAT = "raw"
JPEG_QUALITY = 95
# The size the release resizes every image to, (height, width).
RELEASE_IMAGE_SIZE = (288, 144)

VERSION = tfds.core.Version("2.0.0")
RELEASE_NOTES = {
    "2.0.0": (
        "Images stored as the release's preprocessing makes them (PIL "
        "decode, RGB, Lanczos to 288x144), losslessly by default (raw uint8; "
        "_png and _jpeg configs); RegDB resized at build time too."
    ),
    "1.0.0": (
        "Initial release: resized images re-encoded as JPEG (quality 95), "
        "RegDB kept at its original size."
    ),
}

_DESCRIPTION = """
SYSU-MM01: 491 people seen by four visible cameras (1, 2 indoor; 4, 5
outdoor) and two near-infrared cameras (3 indoor, 6 outdoor). Infrared images
are stored as 3-channel grey JPEGs. Per example: the encoded image, the
original person id ("identity"), the contiguous index of that id among the
sorted ids of the split ("label"), the camera (1..6), the modality (0 visible,
1 infrared) and the file name relative to the dataset root.
"""

_CITATION = """
@inproceedings{wu2017rgb,
  title={RGB-Infrared Cross-Modality Person Re-Identification},
  author={Wu, Ancong and Zheng, Wei-Shi and Yu, Hong-Xing and Gong, Shaogang
          and Lai, Jianhuang},
  booktitle={ICCV},
  year={2017}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
SYSU-MM01 cannot be downloaded automatically. {layouts.SYSU_SOURCE}
Unpack it and pass the folder that holds cam1 .. cam6 and exp/ as the manual
directory (`manual_dir`). Expected layout:
{layouts.SYSU_LAYOUT}
"""


class CorruptImageError(ValueError):
    """An image file cannot be decoded."""


class OutdatedRecordsError(datasets.DatasetUnavailableError):
    """Only records of an older builder version are prepared."""


def contiguous_labels(identities: Iterable[int]) -> dict[int, int]:
    """Maps each identity to its index among the sorted distinct identities."""
    return {pid: i for i, pid in enumerate(sorted(set(identities)))}


def check_image_format(image_format: str) -> str:
    """`image_format` if it is one of IMAGE_FORMATS, else a ValueError."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(
            f"image_format must be one of {IMAGE_FORMATS}, got "
            f"{image_format!r}."
        )
    return image_format


def config_name(base: str, image_format: str) -> str:
    """The builder config storing `base` ("288x144", "trial_1", ...) in
    `image_format`: `base` itself for "raw", else `base`_`image_format`."""
    check_image_format(image_format)
    return base if image_format == "raw" else f"{base}_{image_format}"


def release_pixels(
    path: str, *, size: tuple[int, int] | None
) -> tuple[np.ndarray, bytes, str]:
    """The release's preprocessing of one image file.

    PIL decode, `convert("RGB")`, and a Lanczos resize to `size` (PIL's
    `resize((w, h), Image.LANCZOS)`, as the authors' pre_process_sysu.py and
    RegDB loader do; they resize every image, and PIL returns an image that
    already has the size unchanged, so one of that size is kept as is).

    Args:
      path: the image file.
      size: (height, width), or None to keep the size.

    Returns:
      (pixels uint8 [H, W, 3], the file's bytes, PIL's name of its format).

    Raises:
      CorruptImageError: the file cannot be read or decoded; names the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            # Decodes fully: truncated files fail here.
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise CorruptImageError(
            f"cannot decode image {path}: {e}. Replace the file with an intact "
            "copy from the original dataset archive."
        ) from e
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(rgb), data, fmt


def load_image(
    path: str,
    *,
    size: tuple[int, int] | None = None,
    image_format: str = DEFAULT_IMAGE_FORMAT,
) -> np.ndarray | bytes:
    """Reads an image file into what the builders store (`features`).

    Args:
      path: the image file.
      size: (height, width) to resize to (Lanczos), or None to keep the size.
      image_format: "raw": the pixels of `release_pixels`; "png": those
        pixels PNG-encoded; "jpeg": a 3-channel JPEG already of that size
        passed through unchanged (it decodes to the same pixels with the
        accurate DCT), anything else JPEG-encoded at quality 95, 4:4:4.

    Returns:
      uint8 [H, W, 3] for "raw", else the encoded bytes.

    Raises:
      CorruptImageError: the file cannot be read or decoded; names the file.
    """
    check_image_format(image_format)
    pixels, data, fmt = release_pixels(path, size=size)
    if image_format == "raw":
        return pixels
    if image_format == "jpeg" and fmt == "JPEG" and _is_rgb_jpeg(data, size):
        return data
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(buf, format="PNG")
    else:
        # 4:4:4 chroma: one re-encode should not blur colour edges.
        Image.fromarray(pixels).save(
            buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0
        )
    return buf.getvalue()


def _is_rgb_jpeg(data: bytes, size: tuple[int, int] | None) -> bool:
    """Whether a JPEG file is 3-channel and already (height, width) `size`."""
    with Image.open(io.BytesIO(data)) as img:
        right_size = size is None or img.size == (size[1], size[0])
        return img.mode == "RGB" and right_size


@dataclasses.dataclass
class SysuMm01Config(tfds.core.BuilderConfig):
    """Stored image size, (height, width) or None for the files' size, and
    how the pixels are stored (one of IMAGE_FORMATS)."""

    image_size: tuple[int, int] | None = RELEASE_IMAGE_SIZE
    image_format: str = DEFAULT_IMAGE_FORMAT


def features(
    image_format: str = DEFAULT_IMAGE_FORMAT,
) -> tfds.features.FeaturesDict:
    """The feature spec shared by the SYSU-MM01 and RegDB builders.

    "raw" pixels are a uint8 tensor of any [H, W, 3] (serialized as the
    bytes "image/value" and the shape "image/shape"); "png" and "jpeg" an
    encoded image ("image").
    """
    check_image_format(image_format)
    if image_format == "raw":
        image = tfds.features.Tensor(
            shape=(None, None, 3),
            dtype=np.uint8,
            encoding=tfds.features.Encoding.BYTES,
        )
    else:
        image = tfds.features.Image(
            shape=(None, None, 3), encoding_format=image_format
        )
    return tfds.features.FeaturesDict(
        {
            "image": image,
            "identity": tfds.features.Scalar(dtype=np.int64),
            "label": tfds.features.Scalar(dtype=np.int64),
            "camera": tfds.features.Scalar(dtype=np.int64),
            "modality": tfds.features.Scalar(dtype=np.int64),
            "file_name": tfds.features.Text(),
        }
    )


def generate_examples(
    root: str,
    records: list[layouts.ImageRecord],
    *,
    image_size: tuple[int, int] | None,
    image_format: str = DEFAULT_IMAGE_FORMAT,
):
    """Yields (key, example) for `records`; labels are contiguous per split.

    Raises:
      CorruptImageError: an image cannot be decoded (names the file).
    """
    label = contiguous_labels(r.identity for r in records)
    for r in records:
        yield (
            r.file_name,
            {
                "image": load_image(
                    os.path.join(root, r.file_name),
                    size=image_size,
                    image_format=image_format,
                ),
                "identity": r.identity,
                "label": label[r.identity],
                "camera": r.camera,
                "modality": r.modality,
                "file_name": r.file_name,
            },
        )


def manual_root(
    dl_manager: tfds.download.DownloadManager, instructions: str
) -> str:
    """The manual directory, or a `DatasetLayoutError` saying how to get it."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError as e:
        # TFDS says which folder is missing or empty in its first line.
        raise layouts.DatasetLayoutError(
            f"{str(e).splitlines()[0]}{instructions}"
        ) from None


class ArrayRecordByDefault:
    """Builder mixin: ArrayRecord files by default, one version at a time.

    ArrayRecord gives the random access (`as_data_source`) that the
    identity-balanced sampler needs; an explicit `file_format=` wins, and an
    already prepared dataset keeps the format it was written with.

    TFDS keeps each builder version in its own folder and, when only an
    older one is prepared, would quietly start building the current one
    from `manual_dir` (or fail asking for the dataset folder). Records of an
    older version hold other pixels (before 2.0.0: JPEG re-encoded), so a
    builder whose version is not prepared but an older one is raises
    `OutdatedRecordsError` naming the rebuild command, unless it is made
    with `build_over_outdated=True` (what that command does).

    Building says so in one line of ours, instead of TFDS's "Downloading
    and preparing dataset Unknown size ..." printed to stdout.
    """

    def __init__(
        self, *, file_format=None, build_over_outdated=False, **kwargs
    ):
        super().__init__(file_format=file_format, **kwargs)
        if not self.info.splits:
            if not build_over_outdated:
                check_not_outdated(self)
            elif old := outdated_versions(self):
                logging.info(
                    "Building %s %s beside version(s) %s, which you may "
                    "delete.",
                    self.name,
                    self.version,
                    ", ".join(old),
                )
            if file_format is None:
                self.info.set_file_format(DEFAULT_FILE_FORMAT, override=True)

    # TFDS's hooks around a build (its own prints to stdout; there is no
    # public option to silence them).
    def _log_download_bytes(self) -> None:
        logging.info(
            "Building the %s records (%s, version %s) once, into %s.",
            self.name,
            self.builder_config.name,
            self.version,
            self.data_dir,
        )

    def _log_download_done(self) -> None:
        logging.info("The %s records are ready.", self.name)


def outdated_versions(builder) -> list[str]:
    """Versions older than `builder.version` prepared beside it, sorted."""
    folder = builder.data_path.parent
    if not folder.exists():
        return []
    found = []
    for path in folder.iterdir():
        try:
            version = tfds.core.Version(path.name)
        except ValueError:
            continue  # Not a version folder (e.g. a partial download).
        if version < builder.version and (path / "dataset_info.json").exists():
            found.append(version)
    return [str(v) for v in sorted(found)]


def check_not_outdated(builder) -> None:
    """Raises `OutdatedRecordsError` if only older versions are prepared."""
    old = outdated_versions(builder)
    if not old:
        return
    folder = builder.data_path.parent
    module = type(builder).__module__.rsplit(".", 1)[0]
    config = builder.builder_config.name
    raise OutdatedRecordsError(
        f"{builder.name}/{config} under {builder.data_dir_root} holds records "
        f"of version {', '.join(old)} only; this code reads version "
        f"{builder.version} and never mixes versions.\n"
        f"  {builder.version}: {RELEASE_NOTES[str(builder.version)]}\n"
        f"  {old[-1]}: {RELEASE_NOTES.get(old[-1], '')}\n"
        "Rebuild the records from the dataset folder:\n"
        f"  python -m {module} --manual_dir=DATASET_FOLDER "
        f"--data_dir={builder.data_dir_root} --config={config}\n"
        f"then delete the old ones: rm -r {folder / old[-1]}"
    )


class SysuMm01(ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """SYSU-MM01 visible-infrared person re-identification dataset."""

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        SysuMm01Config(
            name=config_name(base, image_format),
            image_size=size,
            image_format=image_format,
            description=f"{description}, stored as {image_format}.",
        )
        for base, size, description in (
            (
                "288x144",
                RELEASE_IMAGE_SIZE,
                "Images resized to 288x144 (h x w)",
            ),
            ("original", None, "Images at their original size"),
        )
        for image_format in IMAGE_FORMATS
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "288x144"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=features(self.builder_config.image_format),
            supervised_keys=None,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = manual_root(dl_manager, MANUAL_DOWNLOAD_INSTRUCTIONS)
        layout = layouts.read_sysu(root)
        return {
            split: generate_examples(
                root,
                layout.records(split),
                image_size=self.builder_config.image_size,
                image_format=self.builder_config.image_format,
            )
            for split in ("train", "train_only", "val", "test")
        }

    def _generate_examples(self, **kwargs):  # pragma: no cover
        # `_split_generators` returns ready generators; TFDS never calls this.
        raise NotImplementedError


def resolve_config(
    config: str | None, image_format: str | None, *, default: str
) -> str:
    """The builder config name for a base config and an image format.

    Args:
      config: a config name ("288x144", "trial_3", or one with a format
        suffix such as "288x144_png"), or None for `default`.
      image_format: one of IMAGE_FORMATS, or None to keep `config`'s.
      default: the builder's default base config.

    Raises:
      errors.ConfigurationError (a ValueError): `config` already names
        another format.
    """
    config = config or default
    if image_format is None:
        return config
    check_image_format(image_format)
    base, stored = config, "raw"
    for fmt in IMAGE_FORMATS[1:]:
        if config.endswith("_" + fmt):
            base, stored = config[: -len(fmt) - 1], fmt
    if stored != "raw" and stored != image_format:
        raise errors.ConfigurationError(
            f"builder config {config!r} stores {stored}, but image_format is "
            f"{image_format!r}; give the config without its suffix "
            f"({base!r}) or the same format."
        )
    return config_name(base, image_format)


def prepare(
    *,
    manual_dir: str,
    data_dir: str | None = None,
    config: str | None = None,
    image_format: str | None = None,
    file_format: str = DEFAULT_FILE_FORMAT,
    build_over_outdated: bool = False,
) -> SysuMm01:
    """Builds the dataset (once) and returns the builder.

    Args:
      manual_dir: the SYSU-MM01 folder (holding cam1 .. cam6 and exp/).
      data_dir: where TFDS writes the records (TFDS default if None).
      config: "288x144" (default) or "original", optionally with a format
        suffix ("288x144_png").
      image_format: "raw", "png" or "jpeg" (`IMAGE_FORMATS`); None: the
        config's (raw unless its name says otherwise).
      file_format: "array_record" (random access) or "tfrecord".
      build_over_outdated: build even though records of an older version
        are prepared (they are left as they are); otherwise that is an
        `OutdatedRecordsError`.

    Returns:
      The prepared `SysuMm01` builder.

    Raises:
      OutdatedRecordsError: only an older version is prepared.
    """
    builder = SysuMm01(
        data_dir=data_dir,
        config=resolve_config(config, image_format, default="288x144"),
        file_format=file_format,
        build_over_outdated=build_over_outdated,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def build_main(prepare_fn, *, default_config: str) -> None:
    """The `python -m data_pipeline.<builder>` command: builds the records.

    Flags: --manual_dir (the dataset folder), --data_dir, --config,
    --image_format. Records of an older version are left beside the new
    ones (delete them afterwards).
    """
    flags.DEFINE_string("manual_dir", None, "The dataset folder.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir for the records.")
    flags.DEFINE_string("config", default_config, "Builder config.")
    flags.DEFINE_enum(
        "image_format", None, IMAGE_FORMATS, "How pixels are stored."
    )
    flags.mark_flag_as_required("manual_dir")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        fv = flags.FLAGS
        try:
            builder = prepare_fn(
                manual_dir=fv.manual_dir,
                data_dir=fv.data_dir,
                config=fv.config,
                image_format=fv.image_format,
                build_over_outdated=True,
            )
        except Exception as e:
            # A missing or damaged dataset folder, a config that names
            # another format, a full disk: one message, `errors`' exit code.
            foreseen = errors.classify(e, workdir=fv.data_dir)
            if foreseen is None:
                raise
            print(f"\nERROR: {foreseen[1]}", file=sys.stderr)
            sys.exit(foreseen[0])
        print(
            f"{builder.name}/{builder.builder_config.name} "
            f"{builder.version} ready in {builder.data_dir}: "
            + ", ".join(
                f"{name} {split.num_examples}"
                for name, split in builder.info.splits.items()
            )
        )

    app.run(main)
