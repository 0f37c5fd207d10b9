"""RegDB TFDS builder (registers "regdb" with TFDS on import)."""

from data_pipeline.regdb.regdb import Regdb, prepare

__all__ = ["Regdb", "prepare"]
