"""Figures of a trained model: rank lists, CMC curves, t-SNE, distances.

`ranking` and `plots` draw from arrays (pure: arrays in, a PNG and the data
drawn out), `canvas` holds their shared helpers, and `driver` runs them on a
model's test split. The package's entry points are `write_figures` (end of
training) and `analyze_workdir` (`--mode=analyze`); README "Figures".
"""

from mclnet_jax.analysis.driver import analyze_workdir, write_figures

__all__ = ["analyze_workdir", "write_figures"]
