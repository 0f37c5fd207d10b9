"""Synthetic visible-infrared person re-identification data.

Renders small pictures of people and writes them in the on-disk layout of
SYSU-MM01 (``cam1..cam6/<pid:04d>/<img:04d>.jpg`` plus ``exp/*_id.txt``) or of
RegDB (``Visible/``, ``Thermal/``,
``idx/{train,test}_{visible,thermal}_{t}.txt``), so that every code path that
reads the real datasets (TFDS builders, sampling, input pipelines, training,
evaluation) can run, and learn, without them.

What carries identity:

* shared by both modalities: body shape and proportions (height, head size,
  shoulder / hip width, leg and arm thickness, sleeve and trouser length, hair
  length), the clothing *pattern* (stripes, checks, dots, two-tone blocks, with
  their frequencies and phases) and accessories (hat, side bag, strap);
* visible only: the colours of skin, hair, clothes and accessories;
* infrared only: a per-identity intensity signature (how bright each part is
  in the infrared), drawn independently of the colours, so the infrared image
  cannot be predicted from the visible one pixel by pixel.

What varies with the camera: background (colour or grey level, gradient,
floor line, pillars), illumination (gain, colour tint), viewpoint (mirroring
probability, shear), person scale and position, and noise level. Per image:
position, scale, gait phase and illumination jitter, noise.

Everything is deterministic given the seed; rendering is vectorised numpy over
chunks of images. Infrared images are written as 3-channel grey, like SYSU's.

Command line::

    python -m data_pipeline.synthetic --layout=sysu --out=/tmp/sysu_synth
    python -m data_pipeline.synthetic --layout=regdb --out=/tmp/regdb_synth
    python -m data_pipeline.synthetic --layout=sysu --preset=sysu_sized \
        --out=/tmp/sysu_sized
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image

# SYSU-MM01 cameras: 1, 2 indoor visible; 3 indoor infrared; 4, 5 outdoor
# visible; 6 outdoor infrared.
SYSU_VISIBLE_CAMERAS = (1, 2, 4, 5)
SYSU_INFRARED_CAMERAS = (3, 6)
SYSU_INDOOR_CAMERAS = (1, 2, 3)
# The SYSU-MM01 identity split: 296 train, 99 val, 96 test of 491 ids.
SYSU_SPLIT_SIZES = (296, 99, 96)
REGDB_NUM_TRIALS = 10

# Sizes of the presets (keyword arguments of `generate_sysu`).
SYSU_PRESETS = {
    # A few hundred identities at reduced resolution; generates in well under
    # a minute on 2 cores.
    "default": dict(
        num_identities=300,
        visible_images_per_camera=10,
        infrared_images_per_camera=10,
        height=96,
        width=48,
    ),
    # About the size of SYSU-MM01's training set (395 train+val ids: 22,120
    # visible + 11,850 infrared images), at the size the release stores
    # (288x144), to benchmark input pipelines.
    "sysu_sized": dict(
        num_identities=491,
        visible_images_per_camera=14,
        infrared_images_per_camera=15,
        height=288,
        width=144,
    ),
    # Tiny, for tests.
    "tiny": dict(
        num_identities=8,
        visible_images_per_camera=2,
        infrared_images_per_camera=2,
        height=32,
        width=16,
    ),
}
REGDB_PRESETS = {
    "default": dict(
        num_identities=412, images_per_modality=10, height=128, width=64
    ),
    "tiny": dict(num_identities=8, images_per_modality=2, height=32, width=16),
}

# Part codes of the label map drawn by the renderer.
_BACKGROUND, _SKIN, _HAIR, _UPPER, _LOWER, _SHOES, _HAT, _BAG, _STRAP = range(9)
_NUM_PARTS = 9
# Pixels rendered per chunk (bounds memory at about 0.5 GB of temporaries).
_PIXELS_PER_CHUNK = 4_000_000


class SyntheticDataError(ValueError):
    """Bad arguments to the synthetic data generator."""


@dataclasses.dataclass(frozen=True)
class CameraStyle:
    """How one camera sees people.

    Attributes:
      camera: camera number as written on disk.
      infrared: whether the camera is infrared (grey output).
      background: [3] float, base background colour (grey for infrared).
      floor: [3] float, floor colour.
      floor_level: fraction of the height where the floor starts.
      gradient: [3] float, added linearly from top (0) to bottom (1).
      pillar_x: [2] float, horizontal centres of two background pillars.
      pillar_width: [2] float, their widths (fraction of the image width).
      pillar_colour: [2, 3] float.
      gain: illumination gain.
      tint: [3] float, per-channel multiplier (ones for infrared).
      offset: added after the gain (infrared cameras lift the blacks).
      scale: mean person height as a fraction of the image height.
      shear: mean horizontal shear of the person (viewpoint).
      mirror_probability: probability that a person is seen mirrored.
      noise: standard deviation of the additive pixel noise.
    """

    camera: int
    infrared: bool
    background: np.ndarray
    floor: np.ndarray
    floor_level: float
    gradient: np.ndarray
    pillar_x: np.ndarray
    pillar_width: np.ndarray
    pillar_colour: np.ndarray
    gain: float
    tint: np.ndarray
    offset: float
    scale: float
    shear: float
    mirror_probability: float
    noise: float


@dataclasses.dataclass(frozen=True)
class GenerationSummary:
    """What a generator wrote.

    Attributes:
      root: the dataset root.
      num_images: number of image files written.
      num_visible: visible images among them.
      num_infrared: infrared images among them.
      identities: all person ids, sorted.
      splits: split name -> sorted person ids (SYSU: "train", "val", "test";
        RegDB: "train_{t}", "test_{t}").
      seconds: wall time of the generation.
    """

    root: str
    num_images: int
    num_visible: int
    num_infrared: int
    identities: tuple[int, ...]
    splits: dict[str, tuple[int, ...]]
    seconds: float


# ---------------------------------------------------------------------------
# Identities and cameras.
# ---------------------------------------------------------------------------


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs [...] in [0, 1], output [..., 3]."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p = v * (1.0 - s)
    q = v * (1.0 - f * s)
    t = v * (1.0 - (1.0 - f) * s)
    choices = [
        np.stack(c, axis=-1)
        for c in (
            (v, t, p),
            (q, v, p),
            (p, v, t),
            (p, q, v),
            (t, p, v),
            (v, p, q),
        )
    ]
    out = np.zeros(h.shape + (3,), dtype=np.float64)
    for k, c in enumerate(choices):
        out = np.where((i == k)[..., None], c, out)
    return out


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3] clothing-like colours: a third of them nearly grey."""
    hue = rng.uniform(0.0, 1.0, n)
    sat = np.where(
        rng.uniform(size=n) < 0.3,
        rng.uniform(0.0, 0.15, n),
        rng.uniform(0.35, 0.95, n),
    )
    val = rng.uniform(0.12, 0.95, n)
    return _hsv_to_rgb(hue, sat, val)


def _contrasting_colour(
    rng: np.random.Generator, base: np.ndarray
) -> np.ndarray:
    """[n, 3] colours that differ visibly from `base` [n, 3]."""
    other = _random_colours(rng, base.shape[0])
    # Push the pair apart in brightness so that the pattern stays visible.
    diff = other.mean(-1) - base.mean(-1)
    push = np.where(np.abs(diff) < 0.2, np.sign(diff + 1e-6) * 0.25, 0.0)
    return np.clip(other + push[:, None], 0.0, 1.0)


def _contrasting_level(
    rng: np.random.Generator, base: np.ndarray
) -> np.ndarray:
    """[n] grey levels at least 0.18 away from `base` [n], inside [0, 1]."""
    delta = rng.uniform(0.18, 0.5, base.shape)
    up = base + delta
    down = base - delta
    coin = rng.uniform(size=base.shape) < 0.5
    go_up = np.where(up > 1.0, False, np.where(down < 0.0, True, coin))
    return np.clip(np.where(go_up, up, down), 0.0, 1.0)


def sample_identities(
    num_identities: int, *, seed: int, pattern_scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Draws the appearance of every identity.

    Args:
      num_identities: number of people.
      seed: random seed.
      pattern_scale: multiplies every clothing-pattern frequency (stripes,
        checks, dots per body height); < 1 draws coarser patterns, which
        stay visible on small images. The random draws do not depend on it.

    Returns:
      Dict of arrays with leading dimension `num_identities`: shape parameters
      (float [I]), pattern codes (int [I]) and frequencies, accessory flags, and
      the two palettes "visible_palette" [I, 9, 2, 3] and "infrared_palette"
      [I, 9, 2, 1] (part x pattern phase x channel, values in [0, 1]).
    """
    rng = np.random.default_rng([seed, 0])
    n = num_identities

    def u(lo, hi):
        return rng.uniform(lo, hi, n)

    a = {
        # Shape, in units of the body height.
        "body_height": u(0.86, 1.0),
        "head_radius": u(0.05, 0.075),
        "shoulder": u(0.09, 0.16),
        "hip": u(0.075, 0.12),
        "waist": u(0.44, 0.56),
        "leg_width": u(0.03, 0.055),
        "arm_width": u(0.022, 0.042),
        "stride": u(0.0, 0.08),
        "sleeve": u(0.0, 1.0),  # 0: sleeveless .. 1: long sleeves
        "trouser": u(0.35, 1.0),  # fraction of the legs covered
        "hair_length": np.where(rng.uniform(size=n) < 0.35, u(0.08, 0.3), 0.0),
        # Clothing patterns: 0 solid, 1 horizontal stripes, 2 vertical stripes,
        # 3 checks, 4 dots, 5 two-tone (upper/lower block), 6 open jacket.
        "upper_pattern": rng.integers(0, 7, n),
        "upper_freq_v": u(6.0, 16.0),
        "upper_freq_u": u(10.0, 24.0),
        "upper_phase": u(0.0, 1.0),
        "upper_split": u(0.3, 0.7),
        "lower_pattern": rng.choice(6, n, p=[0.45, 0.1, 0.15, 0.15, 0.05, 0.1]),
        "lower_freq_v": u(6.0, 14.0),
        "lower_freq_u": u(10.0, 24.0),
        "lower_phase": u(0.0, 1.0),
        "lower_split": u(0.3, 0.7),
        # Accessories.
        "hat": rng.uniform(size=n) < 0.25,
        "bag": rng.uniform(size=n) < 0.35,
        "bag_side": rng.choice([-1.0, 1.0], n),
        "bag_width": u(0.04, 0.08),
        "bag_height": u(0.12, 0.25),
        "strap": rng.uniform(size=n) < 0.3,
        "strap_direction": rng.choice([-1.0, 1.0], n),
    }
    # Visible palette: part x {primary, secondary} x RGB.
    vis = np.zeros((n, _NUM_PARTS, 2, 3))
    skin_tones = np.array(
        [
            [0.96, 0.80, 0.69],
            [0.87, 0.67, 0.52],
            [0.72, 0.52, 0.38],
            [0.55, 0.37, 0.25],
            [0.36, 0.24, 0.16],
        ]
    )
    t = rng.uniform(0.0, len(skin_tones) - 1.0, n)
    lo = np.floor(t).astype(int)
    frac = (t - lo)[:, None]
    skin = (
        skin_tones[lo] * (1 - frac) + skin_tones[np.minimum(lo + 1, 4)] * frac
    )
    hair = _hsv_to_rgb(
        u(0.02, 0.12),
        u(0.2, 0.7),
        np.where(rng.uniform(size=n) < 0.8, u(0.05, 0.3), u(0.4, 0.85)),
    )
    vis[:, _SKIN, :] = skin[:, None]
    vis[:, _HAIR, :] = hair[:, None]
    for part in (_UPPER, _LOWER, _HAT, _BAG):
        base = _random_colours(rng, n)
        vis[:, part, 0] = base
        vis[:, part, 1] = _contrasting_colour(rng, base)
    vis[:, _SHOES, :] = (_random_colours(rng, n) * 0.4)[:, None]
    vis[:, _STRAP, :] = (_random_colours(rng, n) * 0.6)[:, None]
    # Infrared signature: drawn independently of every colour above.
    ir = np.zeros((n, _NUM_PARTS, 2, 1))
    ir[:, _SKIN, :, 0] = u(0.55, 0.95)[:, None]
    ir[:, _HAIR, :, 0] = u(0.05, 0.5)[:, None]
    for part in (_UPPER, _LOWER, _HAT, _BAG):
        base = u(0.08, 0.95)
        ir[:, part, 0, 0] = base
        ir[:, part, 1, 0] = _contrasting_level(rng, base)
    ir[:, _SHOES, :, 0] = u(0.05, 0.4)[:, None]
    ir[:, _STRAP, :, 0] = u(0.1, 0.9)[:, None]
    a["visible_palette"] = vis
    a["infrared_palette"] = ir
    _check_pattern_scale(pattern_scale)
    for key in ("upper_freq_v", "upper_freq_u", "lower_freq_v", "lower_freq_u"):
        a[key] = a[key] * pattern_scale
    return a


def make_camera(
    camera: int, *, infrared: bool, outdoor: bool, seed: int
) -> CameraStyle:
    """Draws the look of one camera (deterministic in `seed` and `camera`)."""
    rng = np.random.default_rng([seed, 1, camera])
    if infrared:
        grey = rng.uniform(0.25, 0.6) if outdoor else rng.uniform(0.15, 0.45)
        background = np.full(3, grey)
        floor = np.full(3, np.clip(grey + rng.uniform(-0.15, 0.15), 0, 1))
        gradient = np.full(3, rng.uniform(-0.15, 0.15))
        pillar_colour = np.repeat(rng.uniform(0.05, 0.7, (2, 1)), 3, axis=1)
        tint = np.ones(3)
        gain = rng.uniform(0.8, 1.1)
        offset = rng.uniform(0.0, 0.12)
    else:
        background = _random_colours(rng, 1)[0] * (0.7 if not outdoor else 1.0)
        floor = _random_colours(rng, 1)[0] * 0.8
        gradient = rng.uniform(-0.2, 0.2, 3)
        pillar_colour = _random_colours(rng, 2)
        tint = rng.uniform(0.8, 1.2, 3)
        gain = rng.uniform(0.9, 1.25) if outdoor else rng.uniform(0.65, 0.95)
        offset = 0.0
    return CameraStyle(
        camera=camera,
        infrared=infrared,
        background=background,
        floor=floor,
        floor_level=float(rng.uniform(0.6, 0.9)),
        gradient=gradient,
        pillar_x=rng.uniform(0.0, 1.0, 2),
        pillar_width=rng.uniform(0.08, 0.25, 2),
        pillar_colour=pillar_colour,
        gain=float(gain),
        tint=tint,
        offset=float(offset),
        scale=float(rng.uniform(0.72, 0.9)),
        shear=float(rng.uniform(-0.15, 0.15)),
        mirror_probability=float(rng.uniform(0.15, 0.85)),
        noise=float(
            rng.uniform(0.01, 0.035)
            if not infrared
            else rng.uniform(0.025, 0.05)
        ),
    )


def sample_views(
    camera: CameraStyle, num_images: int, *, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per-image viewing parameters for `num_images` shots by `camera`.

    Returns:
      Dict of float [num_images] arrays: "scale", "center_x", "top_jitter",
      "shear", "mirror" (+1 / -1), "phase" (gait, 0..1), "gain" and
      "background_shift".
    """
    n = num_images
    return {
        "scale": camera.scale * (1.0 + rng.normal(0.0, 0.05, n)),
        "center_x": 0.5 + rng.normal(0.0, 0.05, n),
        "top_jitter": rng.normal(0.0, 0.02, n),
        "shear": camera.shear + rng.normal(0.0, 0.04, n),
        "mirror": np.where(
            rng.uniform(size=n) < camera.mirror_probability, -1.0, 1.0
        ),
        "phase": rng.uniform(0.0, 1.0, n),
        "gain": 1.0 + rng.normal(0.0, 0.08, n),
        "background_shift": rng.normal(0.0, 0.08, n),
    }


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


def _garment_pattern(
    kind: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    freq_u: np.ndarray,
    freq_v: np.ndarray,
    phase: np.ndarray,
    split: np.ndarray,
    half_width: np.ndarray,
) -> np.ndarray:
    """Binary pattern [N, H, W]; all parameters broadcast as [N, 1, 1].

    `v` is measured from the top of the garment in body units and `u` from the
    body axis, so the pattern moves with the person.
    """
    sin_v = np.sin(2.0 * np.pi * (freq_v * v + phase))
    sin_u = np.sin(2.0 * np.pi * (freq_u * u + phase))
    h = sin_v > 0.0
    w = sin_u > 0.0
    dots = (sin_u > 0.55) & (sin_v > 0.55)
    block = v > split * 0.3
    jacket = np.abs(u) < 0.35 * half_width
    return np.select(
        [kind == 1, kind == 2, kind == 3, kind == 4, kind == 5, kind == 6],
        [h, w, h ^ w, dots, block, jacket],
        default=False,
    )


def render(
    identity: dict[str, np.ndarray],
    views: dict[str, np.ndarray],
    camera: CameraStyle,
    *,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Renders one image per row of `identity` / `views`.

    Args:
      identity: identity attributes (as from `sample_identities`) already
        gathered per image: arrays with leading dimension N.
      views: viewing parameters (as from `sample_views`), arrays [N].
      camera: the camera that takes all N pictures.
      height: image height in pixels.
      width: image width in pixels.
      rng: source of the pixel noise.

    Returns:
      uint8 [N, height, width, 3]; grey (equal channels) for infrared cameras.
    """
    n = views["scale"].shape[0]

    def col(x):
        """Per-image values as [N, 1, 1] float32, to broadcast over pixels."""
        return np.asarray(x, np.float32).reshape(n, 1, 1)

    yy = ((np.arange(height, dtype=np.float32) + 0.5) / height)[None, :, None]
    xx = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, None, :]

    # Person frame: v from 0 (top of head) to 1 (soles), u across the body in
    # the same units (aspect-corrected), sheared and possibly mirrored.
    person_h = col(views["scale"] * identity["body_height"])
    top = (1.0 - person_h) / 2.0 + col(views["top_jitter"])
    v = (yy - top) / person_h
    u = (xx - col(views["center_x"])) * (width / height) / person_h
    u = (u - col(views["shear"]) * (v - 0.5)) * col(views["mirror"])
    au = np.abs(u)

    head_r = col(identity["head_radius"])
    head_c = head_r + 0.005
    neck = 2.0 * head_r + 0.015
    shoulder = col(identity["shoulder"])
    hip = col(identity["hip"])
    waist = col(identity["waist"])
    leg_w = col(identity["leg_width"])
    arm_w = col(identity["arm_width"])

    part = np.zeros((n, height, width), np.int8)
    pattern = np.zeros((n, height, width), bool)

    # Legs: two columns that spread with the gait phase towards the feet.
    t = np.clip((v - waist) / (1.0 - waist), 0.0, 1.0)
    spread = col(identity["stride"] * views["phase"]) * t
    leg_sep = np.maximum(hip - leg_w, 0.0)
    in_legs = (
        (v >= waist)
        & (v <= 1.0)
        & (
            (np.abs(u + leg_sep + spread) < leg_w)
            | (np.abs(u - leg_sep - 0.5 * spread) < leg_w)
            | ((v < waist + 0.06) & (au < hip))
        )
    )
    trouser_end = waist + col(identity["trouser"]) * (1.0 - waist)
    lower_pat = _garment_pattern(
        identity["lower_pattern"].reshape(n, 1, 1),
        u,
        v - waist,
        col(identity["lower_freq_u"]),
        col(identity["lower_freq_v"]),
        col(identity["lower_phase"]),
        col(identity["lower_split"]),
        hip,
    )
    part = np.where(in_legs, np.where(v < trouser_end, _LOWER, _SKIN), part)
    part = np.where(in_legs & (v > 0.965), _SHOES, part)
    pattern |= in_legs & (v < trouser_end) & lower_pat

    # Torso, tapering from the shoulders to the hips.
    s = np.clip((v - neck) / (waist - neck), 0.0, 1.0)
    torso_w = shoulder + (hip - shoulder) * s
    in_torso = (v >= neck) & (v < waist + 0.005) & (au < torso_w)
    upper_pat = _garment_pattern(
        identity["upper_pattern"].reshape(n, 1, 1),
        u,
        v - neck,
        col(identity["upper_freq_u"]),
        col(identity["upper_freq_v"]),
        col(identity["upper_phase"]),
        col(identity["upper_split"]),
        shoulder,
    )
    part = np.where(in_torso, _UPPER, part)
    pattern = np.where(in_torso, upper_pat, pattern)

    # Arms on both sides of the torso; sleeves cover them down to `sleeve_end`.
    in_arms = (
        (v >= neck + 0.02)
        & (v < waist + 0.12)
        & (au >= torso_w)
        & (au < torso_w + arm_w)
    )
    sleeve_end = neck + 0.03 + col(identity["sleeve"]) * (waist + 0.1 - neck)
    part = np.where(in_arms, np.where(v < sleeve_end, _UPPER, _SKIN), part)
    pattern = np.where(in_arms, (v < sleeve_end) & upper_pat, pattern)

    # Neck, head and hair.
    in_neck = (
        (v >= 2.0 * head_r - 0.01) & (v < neck + 0.01) & (au < 0.45 * head_r)
    )
    in_head = (u / (0.85 * head_r)) ** 2 + ((v - head_c) / head_r) ** 2 < 1.0
    part = np.where(in_neck | in_head, _SKIN, part)
    in_hair = (
        (u / (0.92 * head_r)) ** 2 + ((v - head_c) / (1.08 * head_r)) ** 2 < 1.0
    ) & (v < head_c - 0.25 * head_r)
    hair_len = col(identity["hair_length"])
    in_long_hair = (
        (hair_len > 0)
        & (v >= head_c - 0.25 * head_r)
        & (v < head_c + hair_len)
        & (au >= 0.55 * head_r)
        & (au < 1.05 * head_r)
    )
    part = np.where(in_hair | in_long_hair, _HAIR, part)
    pattern = np.where(in_hair | in_long_hair, False, pattern)

    # Accessories (asymmetric: they swap sides when the view is mirrored).
    hat = identity["hat"].reshape(n, 1, 1)
    in_hat = hat & (
        (
            (v < head_c - 0.35 * head_r)
            & (v > head_c - 1.3 * head_r)
            & (au < 1.1 * head_r)
        )
        | (
            (np.abs(v - (head_c - 0.4 * head_r)) < 0.1 * head_r)
            & (au < 1.45 * head_r)
        )
    )
    part = np.where(in_hat, _HAT, part)
    pattern = np.where(in_hat, v < head_c - 0.8 * head_r, pattern)
    side_u = u * col(identity["bag_side"])
    bag_top = neck + 0.04
    in_bag = (
        identity["bag"].reshape(n, 1, 1)
        & (side_u > shoulder - 0.02)
        & (side_u < shoulder + col(identity["bag_width"]))
        & (v > bag_top)
        & (v < bag_top + col(identity["bag_height"]))
    )
    part = np.where(in_bag, _BAG, part)
    pattern = np.where(in_bag, np.abs(v - bag_top - 0.05) < 0.012, pattern)
    strap_u = u * col(identity["strap_direction"])
    in_strap = (
        identity["strap"].reshape(n, 1, 1)
        & in_torso
        & (np.abs(strap_u - (v - neck) * 0.55 + 0.6 * shoulder) < 0.014)
    )
    part = np.where(in_strap, _STRAP, part)
    pattern = np.where(in_strap, False, pattern)

    # Colour every pixel from its identity's palette with one gather.
    palette = identity[
        "infrared_palette" if camera.infrared else "visible_palette"
    ].astype(np.float32)
    channels = palette.shape[-1]
    flat = (np.arange(n).reshape(n, 1, 1) * _NUM_PARTS + part) * 2 + pattern
    person = palette.reshape(-1, channels)[flat]  # [N, H, W, C]
    # Rounded shading across the body.
    shade = 1.0 - 0.3 * np.clip(au / (shoulder + arm_w), 0.0, 1.0) ** 2
    person *= shade[..., None]

    # Background: gradient, then two pillars (columns shifted per image),
    # then the floor.
    wall = (
        camera.background[:channels]
        + camera.gradient[:channels] * yy[..., None]
    ).astype(np.float32)  # [1, H, 1, C]
    shifted_x = (xx + col(views["background_shift"]))[..., None]  # [N,1,W,1]
    pillars = np.zeros((n, 1, width, channels), np.float32)
    in_pillars = np.zeros((n, 1, width, 1), bool)
    for k in range(2):
        in_pillar = (
            np.abs(shifted_x - camera.pillar_x[k]) < camera.pillar_width[k] / 2
        )
        pillar = camera.pillar_colour[k, :channels].astype(np.float32)
        pillars = np.where(in_pillar, pillar, pillars)
        in_pillars |= in_pillar
    background = np.where(in_pillars, pillars, wall)  # [N, H, W, C]
    floor_rows = yy[0, :, 0] > camera.floor_level
    background[:, floor_rows] = camera.floor[:channels].astype(np.float32)

    image = person
    np.copyto(image, background, where=(part == _BACKGROUND)[..., None])
    # Illumination (gain, tint, offset), then sensor noise.
    image *= (
        col(views["gain"])[..., None]
        * camera.gain
        * camera.tint[:channels].astype(np.float32)
    )
    image += camera.offset + 0.5 / 255.0
    # Uniform noise with the camera's standard deviation (cheaper to draw
    # than Gaussian; the distribution's shape does not matter here).
    noise = rng.random(image.shape, dtype=np.float32)
    noise -= 0.5
    noise *= camera.noise * np.sqrt(12.0)
    image += noise
    image *= 255.0
    np.clip(image, 0.0, 255.0, out=image)
    image = image.astype(np.uint8)
    if channels == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def _gather(
    identities: dict[str, np.ndarray], index: np.ndarray
) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in identities.items()}


def iter_render_camera(
    identities: dict[str, np.ndarray],
    identity_index: np.ndarray,
    views: dict[str, np.ndarray],
    camera: CameraStyle,
    *,
    height: int,
    width: int,
    rng: np.random.Generator,
):
    """Renders many images of one camera in memory-bounded chunks.

    Args:
      identities: from `sample_identities` (leading dimension I).
      identity_index: int [N], row of `identities` for each image.
      views: from `sample_views`, arrays [N].
      camera: the camera.
      height: image height.
      width: image width.
      rng: pixel-noise source.

    Yields:
      (start, images): images uint8 [n, height, width, 3] are rows
      start .. start + n - 1.
    """
    total = identity_index.shape[0]
    chunk = max(1, _PIXELS_PER_CHUNK // (height * width))
    for start in range(0, total, chunk):
        sl = slice(start, min(total, start + chunk))
        yield (
            start,
            render(
                _gather(identities, identity_index[sl]),
                {k: v[sl] for k, v in views.items()},
                camera,
                height=height,
                width=width,
                rng=rng,
            ),
        )


def render_camera(
    identities: dict[str, np.ndarray],
    identity_index: np.ndarray,
    views: dict[str, np.ndarray],
    camera: CameraStyle,
    *,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """`iter_render_camera` gathered into one uint8 [N, height, width, 3]."""
    out = np.empty((identity_index.shape[0], height, width, 3), np.uint8)
    for start, images in iter_render_camera(
        identities,
        identity_index,
        views,
        camera,
        height=height,
        width=width,
        rng=rng,
    ):
        out[start : start + images.shape[0]] = images
    return out


# ---------------------------------------------------------------------------
# Writing the layouts.
# ---------------------------------------------------------------------------


def _encode(image: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    else:
        Image.fromarray(image).save(buf, format="BMP")
    return buf.getvalue()


def _prepare_root(root: str, owned: Sequence[str], overwrite: bool) -> None:
    """Creates `root`; refuses to mix with an existing dataset unless asked."""
    existing = [d for d in owned if os.path.exists(os.path.join(root, d))]
    if existing and not overwrite:
        raise FileExistsError(
            f"{root} already holds {', '.join(existing)}; pass overwrite=True "
            "(--overwrite) to replace them, or choose an empty --out."
        )
    for d in existing:
        path = os.path.join(root, d)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(root, exist_ok=True)


def _check_size(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise SyntheticDataError(
            f"{name} must be an integer >= {minimum}, got {value!r}."
        )


def _check_pattern_scale(pattern_scale: float) -> None:
    if not (
        isinstance(pattern_scale, (int, float, np.floating))
        and 0 < pattern_scale <= 10
    ):
        raise SyntheticDataError(
            f"pattern_scale must be a number in (0, 10], got "
            f"{pattern_scale!r} (1: the default pattern frequencies)."
        )


def _check_image_size(height: int, width: int) -> None:
    """The smallest images the synthetic renderer accepts: 16 x 8."""
    _check_size("height", height, 16)
    _check_size("width", width, 8)


def sysu_split(
    identities: Sequence[int], *, seed: int
) -> dict[str, tuple[int, ...]]:
    """Splits ids into train / val / test in SYSU-MM01's 296:99:96 proportion.

    Args:
      identities: person ids (at least 3).
      seed: random seed of the split.

    Returns:
      {"train": ..., "val": ..., "test": ...}, sorted tuples of ids; each split
      has at least one id.
    """
    ids = np.array(sorted(identities))
    n = len(ids)
    if n < 3:
        raise SyntheticDataError(f"need at least 3 identities, got {n}.")
    total = sum(SYSU_SPLIT_SIZES)
    n_val = max(1, int(round(n * SYSU_SPLIT_SIZES[1] / total)))
    n_test = max(1, int(round(n * SYSU_SPLIT_SIZES[2] / total)))
    n_train = n - n_val - n_test
    if n_train < 1:
        n_train, n_val, n_test = n - 2, 1, 1
    perm = np.random.default_rng([seed, 3]).permutation(ids)
    parts = np.split(perm, [n_train, n_train + n_val])
    return {
        name: tuple(int(i) for i in sorted(p))
        for name, p in zip(("train", "val", "test"), parts, strict=True)
    }


def generate_sysu(
    root: str,
    *,
    num_identities: int = 300,
    visible_images_per_camera: int = 10,
    infrared_images_per_camera: int = 10,
    height: int = 96,
    width: int = 48,
    seed: int = 0,
    jpeg_quality: int = 90,
    pattern_scale: float = 1.0,
    overwrite: bool = False,
) -> GenerationSummary:
    """Writes a synthetic dataset in the SYSU-MM01 layout.

    Layout: ``root/cam{1..6}/{pid:04d}/{k:04d}.jpg`` (k from 1; visible cameras
    1, 2, 4, 5; infrared 3, 6) and ``root/exp/{train,val,test}_id.txt``, each
    one line of comma-separated ids. Person ids are 1..num_identities; every
    identity appears in every camera.

    Args:
      root: output folder (created).
      num_identities: number of people (>= 3).
      visible_images_per_camera: images per identity per visible camera.
      infrared_images_per_camera: images per identity per infrared camera.
      height: image height in pixels (>= 16).
      width: image width in pixels (>= 8).
      seed: random seed; equal seeds give byte-identical files.
      jpeg_quality: JPEG quality (1..95).
      pattern_scale: clothing-pattern frequency factor (see
        `sample_identities`).
      overwrite: replace cam*/exp folders already under `root`.

    Returns:
      A `GenerationSummary`.
    """
    start = time.perf_counter()
    _check_size("num_identities", num_identities, 3)
    _check_size("visible_images_per_camera", visible_images_per_camera, 1)
    _check_size("infrared_images_per_camera", infrared_images_per_camera, 1)
    _check_image_size(height, width)
    if not 1 <= jpeg_quality <= 95:
        raise SyntheticDataError(
            f"jpeg_quality must be in 1..95, got {jpeg_quality}."
        )
    _check_pattern_scale(pattern_scale)
    _prepare_root(root, [f"cam{c}" for c in range(1, 7)] + ["exp"], overwrite)

    identities = sample_identities(
        num_identities, seed=seed, pattern_scale=pattern_scale
    )
    pids = np.arange(1, num_identities + 1)
    counts = {"visible": 0, "infrared": 0}
    for cam in range(1, 7):
        infrared = cam in SYSU_INFRARED_CAMERAS
        per_id = (
            infrared_images_per_camera
            if infrared
            else visible_images_per_camera
        )
        camera = make_camera(
            cam,
            infrared=infrared,
            outdoor=cam not in SYSU_INDOOR_CAMERAS,
            seed=seed,
        )
        rng = np.random.default_rng([seed, 2, cam])
        index = np.repeat(np.arange(num_identities), per_id)
        views = sample_views(camera, index.size, rng=rng)
        # Written chunk by chunk: memory stays bounded at any dataset size.
        for first, images in iter_render_camera(
            identities,
            index,
            views,
            camera,
            height=height,
            width=width,
            rng=rng,
        ):
            for row, image in enumerate(images, start=first):
                ident = index[row]
                folder = os.path.join(root, f"cam{cam}", f"{pids[ident]:04d}")
                k = row - ident * per_id + 1
                if k == 1:
                    os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{k:04d}.jpg"), "wb") as f:
                    f.write(_encode(image, "jpg", jpeg_quality))
        counts["infrared" if infrared else "visible"] += index.size

    splits = sysu_split(pids.tolist(), seed=seed)
    os.makedirs(os.path.join(root, "exp"), exist_ok=True)
    for name, ids in splits.items():
        with open(os.path.join(root, "exp", f"{name}_id.txt"), "w") as f:
            f.write(",".join(str(i) for i in ids) + "\n")
    seconds = time.perf_counter() - start
    total = counts["visible"] + counts["infrared"]
    logging.info(
        "Wrote %d synthetic SYSU-MM01 images (%d ids) to %s in %.1f s.",
        total,
        num_identities,
        root,
        seconds,
    )
    return GenerationSummary(
        root=root,
        num_images=total,
        num_visible=counts["visible"],
        num_infrared=counts["infrared"],
        identities=tuple(int(p) for p in pids),
        splits=splits,
        seconds=seconds,
    )


def regdb_split(
    identities: Sequence[int], *, trial: int, seed: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Random half/half split of `identities` for one RegDB trial.

    Returns:
      (train ids, test ids), sorted; train gets the smaller half when odd.
    """
    ids = np.array(sorted(identities))
    perm = np.random.default_rng([seed, 4, trial]).permutation(ids)
    half = len(ids) // 2
    return (
        tuple(int(i) for i in sorted(perm[:half])),
        tuple(int(i) for i in sorted(perm[half:])),
    )


def generate_regdb(
    root: str,
    *,
    num_identities: int = 412,
    images_per_modality: int = 10,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    image_format: str = "bmp",
    num_trials: int = REGDB_NUM_TRIALS,
    pattern_scale: float = 1.0,
    overwrite: bool = False,
) -> GenerationSummary:
    """Writes a synthetic dataset in the RegDB layout.

    Layout: ``root/Visible/{pid}/visible_{pid:04d}_{k:02d}.{fmt}``,
    ``root/Thermal/{pid}/thermal_{pid:04d}_{k:02d}.{fmt}`` (pid from 1, k from
    1) and, for t in 1..num_trials,
    ``root/idx/{train,test}_{visible,thermal}_{t}.txt`` with lines
    ``<path relative to root> <label>``. Each trial splits the ids
    at random half/half (seeded by `seed` and t). Labels: train files number
    the train ids 0..n_train-1 in id order (what the AGW-family training code
    expects of RegDB's train files); test files continue from n_train.
    As in RegDB, the k-th visible and k-th thermal image of a person are taken
    at the same moment (same pose), by two differently placed cameras.

    Args:
      root: output folder (created).
      num_identities: number of people (>= 2).
      images_per_modality: images per identity per modality.
      height: image height (>= 16).
      width: image width (>= 8).
      seed: random seed; equal seeds give byte-identical files.
      image_format: "bmp" (as RegDB) or "jpg".
      num_trials: number of trial split files (RegDB has 10).
      pattern_scale: clothing-pattern frequency factor (see
        `sample_identities`).
      overwrite: replace Visible/Thermal/idx folders already under `root`.

    Returns:
      A `GenerationSummary` (splits "train_{t}" and "test_{t}").
    """
    start = time.perf_counter()
    _check_size("num_identities", num_identities, 2)
    _check_size("images_per_modality", images_per_modality, 1)
    _check_image_size(height, width)
    _check_size("num_trials", num_trials, 1)
    _check_pattern_scale(pattern_scale)
    if image_format not in ("bmp", "jpg"):
        raise SyntheticDataError(
            f"image_format must be 'bmp' or 'jpg', got {image_format!r}."
        )
    _prepare_root(root, ["Visible", "Thermal", "idx"], overwrite)

    identities = sample_identities(
        num_identities, seed=seed, pattern_scale=pattern_scale
    )
    pids = np.arange(1, num_identities + 1)
    index = np.repeat(np.arange(num_identities), images_per_modality)
    # Both cameras see the same moment: share the pose, not the camera style.
    pose_rng = np.random.default_rng([seed, 2, 0])
    phase = pose_rng.uniform(0.0, 1.0, index.size)
    mirror = np.where(pose_rng.uniform(size=index.size) < 0.5, -1.0, 1.0)
    files = {}
    for cam, folder, prefix in (
        (1, "Visible", "visible"),
        (2, "Thermal", "thermal"),
    ):
        camera = make_camera(cam, infrared=cam == 2, outdoor=False, seed=seed)
        rng = np.random.default_rng([seed, 2, cam])
        views = sample_views(camera, index.size, rng=rng)
        views["phase"] = phase
        views["mirror"] = mirror
        names = []
        for first, images in iter_render_camera(
            identities,
            index,
            views,
            camera,
            height=height,
            width=width,
            rng=rng,
        ):
            for row, image in enumerate(images, start=first):
                pid = int(pids[index[row]])
                k = row - index[row] * images_per_modality + 1
                rel = (
                    f"{folder}/{pid}/{prefix}_{pid:04d}_{k:02d}.{image_format}"
                )
                if k == 1:
                    os.makedirs(
                        os.path.join(root, folder, str(pid)), exist_ok=True
                    )
                with open(os.path.join(root, rel), "wb") as f:
                    f.write(_encode(image, image_format, 95))
                names.append((pid, rel))
        files[prefix] = names

    os.makedirs(os.path.join(root, "idx"), exist_ok=True)
    splits = {}
    for trial in range(1, num_trials + 1):
        train, test = regdb_split(pids.tolist(), trial=trial, seed=seed)
        splits[f"train_{trial}"] = train
        splits[f"test_{trial}"] = test
        label = {pid: i for i, pid in enumerate(train + test)}
        for split, ids in (("train", set(train)), ("test", set(test))):
            for prefix in ("visible", "thermal"):
                lines = [
                    f"{rel} {label[pid]}\n"
                    for pid, rel in files[prefix]
                    if pid in ids
                ]
                name = f"{split}_{prefix}_{trial}.txt"
                with open(os.path.join(root, "idx", name), "w") as f:
                    f.writelines(lines)
    seconds = time.perf_counter() - start
    n = index.size
    logging.info(
        "Wrote %d synthetic RegDB images (%d ids) to %s in %.1f s.",
        2 * n,
        num_identities,
        root,
        seconds,
    )
    return GenerationSummary(
        root=root,
        num_images=2 * n,
        num_visible=n,
        num_infrared=n,
        identities=tuple(int(p) for p in pids),
        splits=splits,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.synthetic",
        description="Write a synthetic visible-infrared re-id dataset in the "
        "SYSU-MM01 or RegDB on-disk layout.",
    )
    parser.add_argument("--layout", choices=("sysu", "regdb"), required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--preset",
        default="default",
        help="size preset: sysu: default, sysu_sized, tiny; "
        "regdb: default, tiny. Explicit size flags override "
        "it.",
    )
    parser.add_argument("--num_identities", type=int)
    parser.add_argument(
        "--images_per_camera",
        type=int,
        help="sysu: images per id per camera (both modalities)",
    )
    parser.add_argument("--visible_images_per_camera", type=int)
    parser.add_argument("--infrared_images_per_camera", type=int)
    parser.add_argument("--images_per_modality", type=int, help="regdb only")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pattern_scale",
        type=float,
        help="clothing-pattern frequency factor (default 1; "
        "< 1: coarser patterns)",
    )
    parser.add_argument(
        "--image_format",
        choices=("bmp", "jpg"),
        help="regdb only (default bmp)",
    )
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def _generator_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of the generator for the parsed command line."""
    presets = SYSU_PRESETS if args.layout == "sysu" else REGDB_PRESETS
    if args.preset not in presets:
        raise SyntheticDataError(
            f"unknown preset {args.preset!r} for layout {args.layout}; choose "
            f"one of {sorted(presets)}."
        )
    kwargs = dict(presets[args.preset])
    common = ("num_identities", "height", "width", "pattern_scale")
    if args.layout == "sysu":
        if (
            args.images_per_modality is not None
            or args.image_format is not None
        ):
            raise SyntheticDataError(
                "--images_per_modality and --image_format apply to "
                "--layout=regdb only."
            )
        if args.images_per_camera is not None:
            kwargs["visible_images_per_camera"] = args.images_per_camera
            kwargs["infrared_images_per_camera"] = args.images_per_camera
        names = common + (
            "visible_images_per_camera",
            "infrared_images_per_camera",
        )
    else:
        if any(
            getattr(args, a) is not None
            for a in (
                "images_per_camera",
                "visible_images_per_camera",
                "infrared_images_per_camera",
            )
        ):
            raise SyntheticDataError(
                "--*images_per_camera apply to --layout=sysu; use "
                "--images_per_modality for regdb."
            )
        names = common + ("images_per_modality", "image_format")
    for name in names:
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (also the `mclnet-synthetic` console script).

    Returns:
      0 on success, 2 on bad arguments (the reason is printed to stderr).
    """
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.set_verbosity(logging.INFO)
    generate = generate_sysu if args.layout == "sysu" else generate_regdb
    try:
        summary = generate(
            args.out,
            seed=args.seed,
            overwrite=args.overwrite,
            **_generator_kwargs(args),
        )
    except (SyntheticDataError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # The CLI's result is for a person at a terminal.
    print(
        f"Wrote {summary.num_images} images ({summary.num_visible} visible, "
        f"{summary.num_infrared} infrared; {len(summary.identities)} ids) to "
        f"{summary.root} in {summary.seconds:.1f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
