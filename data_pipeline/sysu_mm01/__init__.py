"""SYSU-MM01 TFDS builder (registers "sysu_mm01" with TFDS on import)."""

from data_pipeline.sysu_mm01.sysu_mm01 import SysuMm01, prepare

__all__ = ["SysuMm01", "prepare"]
