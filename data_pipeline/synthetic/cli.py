"""The command line of the synthetic data generator, and its size presets.

    python -m data_pipeline.synthetic --layout=sysu --out=/tmp/sysu_synth
    mclnet-synthetic --layout=regdb --preset=tiny --out=/tmp/regdb_synth
    python -m data_pipeline.synthetic --layout=llcm --out=/tmp/llcm_synth

See the docs/datasets.md "Synthetic data".
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from data_pipeline.synthetic import appearance, writing

# Sizes of the presets (keyword arguments of `generate_sysu`).
SYSU_PRESETS = {
    # A few hundred identities at reduced resolution.
    "default": dict(
        num_identities=300,
        visible_images_per_camera=10,
        infrared_images_per_camera=10,
        height=96,
        width=48,
    ),
    # About the size of SYSU-MM01's training set, at the size the release
    # stores (288x144), to benchmark input pipelines.
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
# Sizes of the presets (keyword arguments of `generate_regdb`).
REGDB_PRESETS = {
    "default": dict(
        num_identities=412, images_per_modality=10, height=128, width=64
    ),
    "tiny": dict(num_identities=8, images_per_modality=2, height=32, width=16),
}
# Sizes of the presets (keyword arguments of `generate_llcm`): 17 camera
# folders per identity (9 visible, 8 infrared).
LLCM_PRESETS = {
    "default": dict(
        num_identities=300,
        visible_images_per_camera=3,
        infrared_images_per_camera=3,
        height=96,
        width=48,
    ),
    "tiny": dict(
        num_identities=8,
        visible_images_per_camera=1,
        infrared_images_per_camera=1,
        height=32,
        width=16,
    ),
}
# Each layout's presets and generator.
PRESETS = {"sysu": SYSU_PRESETS, "regdb": REGDB_PRESETS, "llcm": LLCM_PRESETS}
_GENERATORS = {
    "sysu": writing.generate_sysu,
    "regdb": writing.generate_regdb,
    "llcm": writing.generate_llcm,
}

_SYSU_ONLY = (
    "images_per_camera",
    "visible_images_per_camera",
    "infrared_images_per_camera",
)
_REGDB_ONLY = ("images_per_modality", "image_format")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command line's flags in `flag_values`.

    Called by `run` only, so that importing the package defines no flag.
    """
    fv = flag_values
    flags.DEFINE_enum(
        "layout", None, sorted(PRESETS), "Folder layout.", flag_values=fv
    )
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)
    flags.DEFINE_string(
        "preset",
        "default",
        "Size preset: sysu: default, sysu_sized, tiny; regdb, llcm: "
        "default, tiny. Explicit size flags override it.",
        flag_values=fv,
    )
    flags.DEFINE_integer("num_identities", None, "Identities.", flag_values=fv)
    flags.DEFINE_integer(
        "images_per_camera",
        None,
        "sysu, llcm: images per id per camera (both modalities).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "visible_images_per_camera",
        None,
        "sysu, llcm: images per id per visible camera.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "infrared_images_per_camera",
        None,
        "sysu, llcm: images per id per infrared camera.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "images_per_modality",
        None,
        "regdb only: images per id per modality.",
        flag_values=fv,
    )
    flags.DEFINE_integer("height", None, "Image height.", flag_values=fv)
    flags.DEFINE_integer("width", None, "Image width.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=fv)
    flags.DEFINE_float(
        "pattern_scale",
        None,
        "Clothing-pattern frequency factor (default 1; < 1: coarser patterns).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "image_format",
        None,
        ["bmp", "jpg"],
        "regdb only (default bmp).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "overwrite", False, "Replace an existing dataset.", flag_values=fv
    )
    flags.mark_flags_as_required(["layout", "out"], flag_values=fv)


def generator_kwargs(fv: flags.FlagValues) -> dict:
    """Keyword arguments of the generator for the parsed flags.

    Raises:
      SyntheticDataError: unknown preset, or a flag of the other layout.
    """
    presets = PRESETS[fv.layout]
    if fv.preset not in presets:
        raise appearance.SyntheticDataError(
            f"unknown preset {fv.preset!r} for layout {fv.layout}; choose "
            f"one of {sorted(presets)}."
        )
    kwargs = dict(presets[fv.preset])
    common = ("num_identities", "height", "width", "pattern_scale")
    if fv.layout in ("sysu", "llcm"):
        if any(fv[name].value is not None for name in _REGDB_ONLY):
            raise appearance.SyntheticDataError(
                "--images_per_modality and --image_format apply to "
                "--layout=regdb only."
            )
        if fv.images_per_camera is not None:
            kwargs["visible_images_per_camera"] = fv.images_per_camera
            kwargs["infrared_images_per_camera"] = fv.images_per_camera
        names = common + _SYSU_ONLY[1:]
    else:
        if any(fv[name].value is not None for name in _SYSU_ONLY):
            raise appearance.SyntheticDataError(
                "--*images_per_camera apply to --layout=sysu and "
                "--layout=llcm; use --images_per_modality for regdb."
            )
        names = common + _REGDB_ONLY
    for name in names:
        if fv[name].value is not None:
            kwargs[name] = fv[name].value
    return kwargs


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> int:
    """Writes the dataset the parsed flags describe.

    Returns:
      0 on success, 2 on bad arguments (the reason is printed to stderr).
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    fv = flag_values
    logging.set_verbosity(logging.INFO)
    generate = _GENERATORS[fv.layout]
    try:
        summary = generate(
            fv.out,
            seed=fv.seed,
            overwrite=fv.overwrite,
            **generator_kwargs(fv),
        )
    except (appearance.SyntheticDataError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # The CLI's result is for a person at a terminal.
    print(
        f"Wrote {summary.num_images} images ({summary.num_visible} visible, "
        f"{summary.num_infrared} infrared; {len(summary.identities)} ids) to "
        f"{summary.root} in {summary.seconds:.1f} s."
    )
    return 0


def run() -> None:
    """Entry point of `python -m data_pipeline.synthetic` and of the
    `mclnet-synthetic` console script."""
    define_flags()
    # --help lists the key flags of the main module: make ours key to it.
    for flag in flags.FLAGS.get_flags_for_module(__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
