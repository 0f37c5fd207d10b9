"""The datasets' fixed facts: modalities, cameras, splits and trials.

Every module that needs one of these imports it from here (docs/datasets.md
says where they come from).
"""

# Modality ids, as stored in the TFDS records and used by the model's stems.
VISIBLE = 0
INFRARED = 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}

# SYSU-MM01: six cameras; 3 and 6 are infrared. Cameras 1, 2 (visible) and
# 3 (infrared) are indoors; the indoor-search gallery uses 1 and 2.
SYSU_CAMERAS = (1, 2, 3, 4, 5, 6)
SYSU_VISIBLE_CAMERAS = (1, 2, 4, 5)
SYSU_INFRARED_CAMERAS = (3, 6)
SYSU_INDOOR_CAMERAS = (1, 2, 3)
# Visible gallery cameras of each search mode.
SYSU_GALLERY_CAMERAS = {"all": SYSU_VISIBLE_CAMERAS, "indoor": (1, 2)}
# Identities in the official train / val / test id files.
SYSU_SPLIT_SIZES = (296, 99, 96)
# The evaluation protocol's random gallery draws (seeds 0..9).
SYSU_TRIALS = tuple(range(10))

# RegDB: one visible and one thermal camera; ten published train/test splits.
REGDB_VISIBLE_CAMERA = 1
REGDB_THERMAL_CAMERA = 2
REGDB_TRIALS = tuple(range(1, 11))
REGDB_DIRECTIONS = ("visible_to_infrared", "infrared_to_visible")

# LLCM: nine cameras, each recording visible light by day and near-infrared
# in low light; a camera keeps its number in both modalities. The test set
# has visible images from cameras 1..9 and infrared ones from all but 3.
LLCM_CAMERAS = tuple(range(1, 10))
LLCM_VISIBLE_CAMERAS = LLCM_CAMERAS
LLCM_INFRARED_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)
# The evaluation protocol's random gallery draws (seeds 0..9).
LLCM_TRIALS = tuple(range(10))
LLCM_DIRECTIONS = ("infrared_to_visible", "visible_to_infrared")

# Cameras per dataset (the number of CCA centers per identity).
NUM_CAMERAS = {
    "sysu_mm01": len(SYSU_CAMERAS),
    "regdb": 2,
    "llcm": len(LLCM_CAMERAS),
}
