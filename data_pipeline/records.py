"""The records of a prepared split, and the one reader of their metadata.

A split is a random-access sequence of serialized `tf.train.Example` records:
`open_source(builder, split)` (a TFDS split's `as_data_source` with raw
bytes), or any list of such records. A record holds its image either as raw
pixels ("image/value" bytes and "image/shape", the builders' default) or as
an encoded file ("image": PNG, JPEG, ...; also `image_files.FileSource`):
`image_storage` tells which, `parse_images` parses them out in the graph and
`image_ops.decode_stored` turns them into pixels. `read_metadata` is the
one reader of the other features (labels, cameras, modalities, file names).
See the docs/datasets.md "The input pipeline".
"""

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from data_pipeline.constants import INFRARED, VISIBLE
from data_pipeline.tf_setup import tf

_INT_KEYS = ("label", "identity", "camera", "modality")


def open_source(builder, split: str) -> Sequence[bytes]:
    """The random-access records of one split of a prepared TFDS builder.

    Args:
      builder: a prepared `tfds.core.DatasetBuilder` stored as array_record
        (e.g. `SysuMm01(data_dir=...)` after `download_and_prepare`).
      split: split name, e.g. "train" or "test".

    Returns:
      Sequence of serialized `tf.train.Example` bytes (len, [i], __getitems__).
    """
    import tensorflow_datasets as tfds  # Heavy import, only needed here.

    try:
        return builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
    except NotImplementedError as e:
        raise ValueError(
            f"{builder.name} is not stored in a random-access format; prepare "
            "it with file_format='array_record' (the builders' default)."
        ) from e


def read_records(source, indices) -> np.ndarray:
    """`source[i]` for each i in `indices`, in one call where it can.

    Returns:
      [len(indices)] object array of the serialized records.
    """
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        items = list(getitems(indices))
    else:
        items = [source[i] for i in indices]
    if items:
        _check_records(items)
    return _object_array(items)


def check_source(source) -> None:
    """Raises ValueError unless `source` is a non-empty sequence of records."""
    if len(source) == 0:
        raise ValueError("the split is empty: no examples to read.")
    read_records(source, [0])


# How a record stores its image (`image_storage`).
RAW = "raw"
ENCODED = "encoded"


def image_storage(source) -> str:
    """`RAW` or `ENCODED`: how the records of `source` store their image.

    Read from the first record (a split is written with one feature spec).

    Raises:
      ValueError: the records hold no image feature.
    """
    example = tf.train.Example.FromString(read_records(source, [0])[0])
    keys = set(example.features.feature)
    if {"image/value", "image/shape"} <= keys:
        return RAW
    if "image" in keys:
        return ENCODED
    raise ValueError(
        f"the records hold no image: features {sorted(keys)}, expected "
        "'image' (encoded) or 'image/value' and 'image/shape' (raw pixels). "
        "Open a split of the sysu_mm01, regdb or llcm builders."
    )


def parse_images(records: tf.Tensor, *, storage: str) -> dict[str, tf.Tensor]:
    """[n] serialized records -> their images' fields (in the graph).

    Args:
      records: [n] string, serialized `tf.train.Example`s.
      storage: `image_storage(source)`.

    Returns:
      `RAW`: {"raw": [n] string (H * W * 3 bytes), "shape": [n, 3] int64};
      `ENCODED`: {"encoded": [n] string}. Row i of each is record i's,
      `image_ops.decode_stored` decodes one row.
    """
    if storage == RAW:
        spec = {
            "image/value": tf.io.FixedLenFeature([], tf.string),
            "image/shape": tf.io.FixedLenFeature([3], tf.int64),
        }
        parsed = tf.io.parse_example(records, spec)
        return {"raw": parsed["image/value"], "shape": parsed["image/shape"]}
    if storage == ENCODED:
        spec = {"image": tf.io.FixedLenFeature([], tf.string)}
        return {"encoded": tf.io.parse_example(records, spec)["image"]}
    raise ValueError(
        f"storage must be {RAW!r} or {ENCODED!r}, got {storage!r}."
    )


@dataclasses.dataclass(frozen=True)
class SplitMetadata:
    """Per-example metadata of one split (everything but the pixels).

    Attributes (all [N], row i = example i of the source):
      label: int64 contiguous identity index within the split.
      identity: int64 original person id.
      camera: int64 camera id (SYSU 1..6; RegDB 1 visible, 2 thermal;
        LLCM 1..9 in both modalities).
      modality: int64, `constants.VISIBLE` or `constants.INFRARED`.
      file_name: object array of str, the path relative to the dataset
        root, e.g. "cam3/0001/0004.jpg".
    """

    label: np.ndarray
    identity: np.ndarray
    camera: np.ndarray
    modality: np.ndarray
    file_name: np.ndarray

    def __post_init__(self):
        n = len(self.label)
        for field in dataclasses.fields(self):
            rows = len(getattr(self, field.name))
            if rows != n:
                raise ValueError(
                    f"SplitMetadata.{field.name} has {rows} rows, label has "
                    f"{n}: all fields must align."
                )
        bad = np.setdiff1d(self.modality, [VISIBLE, INFRARED])
        if bad.size:
            raise ValueError(
                f"modality must be {VISIBLE} (visible) or {INFRARED} "
                f"(infrared), found {bad.tolist()}."
            )

    def __len__(self) -> int:
        return int(self.label.size)

    @property
    def num_examples(self) -> int:
        return len(self)

    @functools.cached_property
    def visible_indices(self) -> np.ndarray:
        """[N_vis] int64 source indices of the visible examples."""
        return np.flatnonzero(self.modality == VISIBLE)

    @functools.cached_property
    def infrared_indices(self) -> np.ndarray:
        """[N_ir] int64 source indices of the infrared examples."""
        return np.flatnonzero(self.modality == INFRARED)

    @property
    def num_classes(self) -> int:
        """Number of distinct labels (the classifier size for a train split)."""
        return int(np.unique(self.label).size)


def _check_records(items: list) -> None:
    if not isinstance(items[0], (bytes, np.bytes_)):
        raise ValueError(
            "source items must be serialized tf.train.Example records "
            "(open_source(builder, split)), got "
            f"{type(items[0]).__name__}."
        )


def read_metadata(source, *, chunk_size: int = 256) -> SplitMetadata:
    """Reads every feature but the image of every example of a split.

    Streams the records in chunks (memory ~ chunk_size records: 256 raw
    288x144 images are 32 MB).

    Args:
      source: the split's records (see the module docstring).
      chunk_size: records per read.

    Returns:
      SplitMetadata, row i = source[i].
    """
    n = len(source)
    if n == 0:
        raise ValueError("the split is empty: no examples to read.")
    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in _INT_KEYS}
    spec["file_name"] = tf.io.FixedLenFeature([], tf.string)
    columns = {k: [] for k in spec}
    for start in range(0, n, chunk_size):
        items = read_records(
            source, np.arange(start, min(n, start + chunk_size))
        )
        parsed = tf.io.parse_example(tf.constant(items), spec)
        for k in _INT_KEYS:
            columns[k].append(parsed[k].numpy().astype(np.int64))
        columns["file_name"].append(
            _object_array(
                [b.decode("utf-8") for b in parsed["file_name"].numpy()]
            )
        )
    return SplitMetadata(**{k: np.concatenate(v) for k, v in columns.items()})


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
