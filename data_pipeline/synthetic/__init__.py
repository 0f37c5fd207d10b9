"""Synthetic visible-infrared re-id data: SYSU-MM01, RegDB and LLCM layouts.

Lets every code path that reads the real datasets (TFDS builders, sampling,
input pipelines, training, evaluation) run, and learn, without them. Equal
seeds give byte-identical files. See the docs/datasets.md "Synthetic data".

Modules: `appearance` (identities, cameras, views), `rendering` (images),
`writing` (the folders), `cli` (the command line and the size presets).
"""

from data_pipeline.synthetic.appearance import (
    CameraStyle,
    SyntheticDataError,
    make_camera,
    sample_identities,
    sample_views,
)
from data_pipeline.synthetic.cli import (
    LLCM_PRESETS,
    REGDB_PRESETS,
    SYSU_PRESETS,
)
from data_pipeline.synthetic.rendering import (
    iter_render_camera,
    render,
    render_camera,
)
from data_pipeline.synthetic.writing import (
    GenerationSummary,
    generate_llcm,
    generate_regdb,
    generate_sysu,
    llcm_split,
    regdb_split,
    sysu_split,
)

__all__ = [
    "LLCM_PRESETS",
    "REGDB_PRESETS",
    "SYSU_PRESETS",
    "CameraStyle",
    "GenerationSummary",
    "SyntheticDataError",
    "generate_llcm",
    "generate_regdb",
    "generate_sysu",
    "iter_render_camera",
    "llcm_split",
    "make_camera",
    "regdb_split",
    "render",
    "render_camera",
    "sample_identities",
    "sample_views",
    "sysu_split",
]
