"""Who is seen and how: identities, cameras and per-image views.

Identity lives in cues both modalities share (body shape, clothing pattern,
accessories) and in cues of one modality: colours in visible light and an
infrared intensity signature drawn independently of the colours. Cameras
differ in background, illumination, viewpoint, scale and noise. See the
docs/datasets.md "Synthetic data".
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Part codes of the label map drawn by the renderer.
BACKGROUND, SKIN, HAIR, UPPER, LOWER, SHOES, HAT, BAG, STRAP = range(9)
NUM_PARTS = 9


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
    vis = np.zeros((n, NUM_PARTS, 2, 3))
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
    vis[:, SKIN, :] = skin[:, None]
    vis[:, HAIR, :] = hair[:, None]
    for part in (UPPER, LOWER, HAT, BAG):
        base = _random_colours(rng, n)
        vis[:, part, 0] = base
        vis[:, part, 1] = _contrasting_colour(rng, base)
    vis[:, SHOES, :] = (_random_colours(rng, n) * 0.4)[:, None]
    vis[:, STRAP, :] = (_random_colours(rng, n) * 0.6)[:, None]
    # Infrared signature: drawn independently of every colour above.
    ir = np.zeros((n, NUM_PARTS, 2, 1))
    ir[:, SKIN, :, 0] = u(0.55, 0.95)[:, None]
    ir[:, HAIR, :, 0] = u(0.05, 0.5)[:, None]
    for part in (UPPER, LOWER, HAT, BAG):
        base = u(0.08, 0.95)
        ir[:, part, 0, 0] = base
        ir[:, part, 1, 0] = _contrasting_level(rng, base)
    ir[:, SHOES, :, 0] = u(0.05, 0.4)[:, None]
    ir[:, STRAP, :, 0] = u(0.1, 0.9)[:, None]
    a["visible_palette"] = vis
    a["infrared_palette"] = ir
    check_pattern_scale(pattern_scale)
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


def check_pattern_scale(pattern_scale: float) -> None:
    """Raises `SyntheticDataError` unless 0 < `pattern_scale` <= 10."""
    if not (
        isinstance(pattern_scale, (int, float, np.floating))
        and 0 < pattern_scale <= 10
    ):
        raise SyntheticDataError(
            f"pattern_scale must be a number in (0, 10], got "
            f"{pattern_scale!r} (1: the default pattern frequencies)."
        )
