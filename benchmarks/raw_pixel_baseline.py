"""Raw-pixel nearest-neighbour rank-1 on the synthetic SYSU-MM01 layout.

Shows that the synthetic data has a real modality gap: matching raw pixels
works across visible cameras but much worse from infrared to visible.

What it computes (on the images of the *test* ids, or all ids with
--ids=all; every image is a float32 vector of its raw RGB pixels in [0, 1],
distance = Euclidean):

* cross-modality, all images: each infrared image (cams 3, 6) is a query, the
  gallery is every visible image (cams 1, 2, 4, 5); rank-1 = fraction of
  queries whose nearest gallery image shows the same person.
* cross-modality, grey gallery: the same with the visible gallery turned
  grey (ITU-R 601 luma), so that colour itself is not what differs.
* cross-modality, SYSU single-shot all-search: gallery = one image per id
  per visible camera drawn with seed t for t = 0..9, gallery images of
  camera 2 skipped for queries of camera 3 (SYSU's rule); mean over the 10
  trials.
* cross-modality, edge maps (not raw pixels; a check that the data is
  learnable): the same all-images search on per-image centred, L2-normalised
  grey gradient-magnitude maps, which keep shape, pattern and accessories but
  drop colour and brightness. Well above chance means that cues shared by the
  two modalities exist.
* same-modality visible: each visible image is a query, the gallery is every
  visible image of the *other* visible cameras.
* same-modality infrared: cam 3 queries against cam 6, and cam 6 against
  cam 3.

Usage::

    python benchmarks/raw_pixel_baseline.py               # default set
    python benchmarks/raw_pixel_baseline.py --data_dir=DIR --ids=all
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from data_pipeline import layouts, synthetic
from data_pipeline.constants import SYSU_VISIBLE_CAMERAS

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "A synthetic SYSU-layout folder; if unset the default set is generated "
    "in a temporary folder.",
)
_IDS = flags.DEFINE_enum(
    "ids", "test", ["test", "all"], "The test identities' images, or all."
)
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed (without --data_dir).")


def _load(root: str, records) -> np.ndarray:
    """[N, H*W*3] float32 pixels in [0, 1]."""
    return np.stack(
        [
            np.asarray(
                Image.open(os.path.join(root, r.file_name)).convert("RGB"),
                np.float32,
            ).reshape(-1)
            / 255.0
            for r in records
        ]
    )


def _grey(x: np.ndarray) -> np.ndarray:
    rgb = x.reshape(x.shape[0], -1, 3)
    y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(y[..., None], 3, axis=-1).reshape(x.shape)


def _edges(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centred, unit-norm grey gradient magnitudes: [N, (H-1)*(W-1)]."""
    g = _grey(x).reshape(x.shape[0], height, width, 3)[..., 0]
    gy = np.diff(g, axis=1)[:, :, :-1]
    gx = np.diff(g, axis=2)[:, :-1, :]
    e = np.sqrt(gx**2 + gy**2).reshape(x.shape[0], -1)
    e -= e.mean(axis=1, keepdims=True)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _nearest(
    query: np.ndarray, gallery: np.ndarray, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Index of the nearest gallery row per query; allowed: [Q, G] bool."""
    d = (
        np.sum(query**2, 1)[:, None]
        - 2.0 * query @ gallery.T
        + np.sum(gallery**2, 1)[None, :]
    )
    if allowed is not None:
        d = np.where(allowed, d, np.inf)
    return np.argmin(d, axis=1)


def _rank1(q_ids, g_ids, query, gallery, allowed=None) -> float:
    return float(np.mean(g_ids[_nearest(query, gallery, allowed)] == q_ids))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = _DATA_DIR.value
        if root is None:
            root = os.path.join(tmp, "sysu")
            summary = synthetic.generate_sysu(root, seed=_SEED.value)
            print(
                f"generated the default synthetic SYSU set "
                f"({summary.num_images} images) in {summary.seconds:.1f} s"
            )
        layout = layouts.read_sysu(root)
        if _IDS.value == "test":
            records = layout.records("test")
        else:
            records = sorted(
                (r for v in layout.images.values() for r in v),
                key=lambda r: r.file_name,
            )
        pixels = _load(root, records)
        ids = np.array([r.identity for r in records])
        cams = np.array([r.camera for r in records])
        vis = np.isin(cams, SYSU_VISIBLE_CAMERAS)
        ir = ~vis
        n_ids = len(set(ids.tolist()))
        print(
            f"{_IDS.value} ids: {n_ids}, images {len(records)} "
            f"({vis.sum()} visible, {ir.sum()} infrared), "
            f"{pixels.shape[1]} pixel values each; chance rank-1 ~ "
            f"{100.0 / n_ids:.1f}%"
        )
        start = time.perf_counter()
        results = {}
        results["cross IR->visible, all images"] = _rank1(
            ids[ir], ids[vis], pixels[ir], pixels[vis]
        )
        results["cross IR->visible, grey gallery"] = _rank1(
            ids[ir], ids[vis], pixels[ir], _grey(pixels[vis])
        )
        single = []
        for trial in range(10):
            rng = np.random.default_rng(trial)
            pick = []
            for pid in np.unique(ids):
                for cam in SYSU_VISIBLE_CAMERAS:
                    rows = np.flatnonzero((ids == pid) & (cams == cam))
                    if rows.size:
                        pick.append(rng.choice(rows))
            pick = np.array(pick)
            allowed = ~((cams[ir][:, None] == 3) & (cams[pick][None, :] == 2))
            single.append(
                _rank1(ids[ir], ids[pick], pixels[ir], pixels[pick], allowed)
            )
        results["cross IR->visible, SYSU single-shot all-search, 10 trials"] = (
            float(np.mean(single))
        )
        with Image.open(os.path.join(root, records[0].file_name)) as img:
            width, height = img.size
        edges = _edges(pixels, height, width)
        results["cross IR->visible, edge maps (learnability check)"] = _rank1(
            ids[ir], ids[vis], edges[ir], edges[vis]
        )
        other_cam = cams[vis][:, None] != cams[vis][None, :]
        results["same visible->visible, other cameras"] = _rank1(
            ids[vis], ids[vis], pixels[vis], pixels[vis], other_cam
        )
        q3, q6 = cams == 3, cams == 6
        hits = (
            np.sum(
                ids[pixel_rows][_nearest(pixels[q], pixels[pixel_rows])]
                == ids[q]
            )
            for q, pixel_rows in ((q3, q6), (q6, q3))
        )
        results["same IR->IR, other camera"] = float(sum(hits) / ir.sum())
        for name, value in results.items():
            print(f"  rank-1 {100 * value:5.1f}%  {name}")
        seconds = time.perf_counter() - start
        print(f"(nearest-neighbour search took {seconds:.1f} s)")


if __name__ == "__main__":
    app.run(main)
