"""LLCM TFDS builder (registers "llcm" with TFDS on import)."""

from data_pipeline.llcm.llcm import Llcm, prepare

__all__ = ["Llcm", "prepare"]
