"""Vectorised numpy rendering of synthetic people, in memory-bounded chunks.

Infrared cameras give 3-channel grey images, as SYSU-MM01 stores them. See
the docs/datasets.md "Synthetic data".
"""

from __future__ import annotations

import numpy as np

from data_pipeline.synthetic import appearance

# Pixels rendered per chunk (bounds the memory of the temporaries).
_PIXELS_PER_CHUNK = 4_000_000


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
    camera: appearance.CameraStyle,
    *,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Renders one image per row of `identity` / `views`.

    Args:
      identity: identity attributes (`appearance.sample_identities`),
        gathered per image: arrays with leading dimension N.
      views: viewing parameters (`appearance.sample_views`), arrays [N].
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
    part = np.where(
        in_legs,
        np.where(v < trouser_end, appearance.LOWER, appearance.SKIN),
        part,
    )
    part = np.where(in_legs & (v > 0.965), appearance.SHOES, part)
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
    part = np.where(in_torso, appearance.UPPER, part)
    pattern = np.where(in_torso, upper_pat, pattern)

    # Arms on both sides of the torso; sleeves cover them down to `sleeve_end`.
    in_arms = (
        (v >= neck + 0.02)
        & (v < waist + 0.12)
        & (au >= torso_w)
        & (au < torso_w + arm_w)
    )
    sleeve_end = neck + 0.03 + col(identity["sleeve"]) * (waist + 0.1 - neck)
    part = np.where(
        in_arms,
        np.where(v < sleeve_end, appearance.UPPER, appearance.SKIN),
        part,
    )
    pattern = np.where(in_arms, (v < sleeve_end) & upper_pat, pattern)

    # Neck, head and hair.
    in_neck = (
        (v >= 2.0 * head_r - 0.01) & (v < neck + 0.01) & (au < 0.45 * head_r)
    )
    in_head = (u / (0.85 * head_r)) ** 2 + ((v - head_c) / head_r) ** 2 < 1.0
    part = np.where(in_neck | in_head, appearance.SKIN, part)
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
    part = np.where(in_hair | in_long_hair, appearance.HAIR, part)
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
    part = np.where(in_hat, appearance.HAT, part)
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
    part = np.where(in_bag, appearance.BAG, part)
    pattern = np.where(in_bag, np.abs(v - bag_top - 0.05) < 0.012, pattern)
    strap_u = u * col(identity["strap_direction"])
    in_strap = (
        identity["strap"].reshape(n, 1, 1)
        & in_torso
        & (np.abs(strap_u - (v - neck) * 0.55 + 0.6 * shoulder) < 0.014)
    )
    part = np.where(in_strap, appearance.STRAP, part)
    pattern = np.where(in_strap, False, pattern)

    # Colour every pixel from its identity's palette with one gather.
    palette = identity[
        "infrared_palette" if camera.infrared else "visible_palette"
    ].astype(np.float32)
    channels = palette.shape[-1]
    flat = (
        np.arange(n).reshape(n, 1, 1) * appearance.NUM_PARTS + part
    ) * 2 + pattern
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
    np.copyto(
        image, background, where=(part == appearance.BACKGROUND)[..., None]
    )
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
    camera: appearance.CameraStyle,
    *,
    height: int,
    width: int,
    rng: np.random.Generator,
):
    """Renders many images of one camera in memory-bounded chunks.

    Args:
      identities: from `appearance.sample_identities` (leading dimension I).
      identity_index: int [N], row of `identities` for each image.
      views: from `appearance.sample_views`, arrays [N].
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
    camera: appearance.CameraStyle,
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
