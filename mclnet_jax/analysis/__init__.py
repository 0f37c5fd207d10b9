"""Figures of a trained model: rank lists, CMC curves, t-SNE, distances.

`ranking` and `plots` draw from arrays (pure: arrays in, a PNG and the data
drawn out), `canvas` holds their shared helpers, and `driver` draws them all
from a split's features (`draw_figures`; the "figures" evaluator of
`config.evals`, `evaluators/figures.py`, calls it).
"""

from mclnet_jax.analysis.driver import FIGURES_DIR, display_loader, draw_figures

__all__ = ["FIGURES_DIR", "display_loader", "draw_figures"]
