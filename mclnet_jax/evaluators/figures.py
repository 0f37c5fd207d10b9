"""The "figures" evaluator: rank lists, CMC, t-SNE and distance histograms
of the features another evaluator of the run has extracted (never extracted
again), drawn by `analysis.draw_figures` into `WORKDIR/figures/`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

from mclnet_jax import analysis
from mclnet_jax.evaluators import common


class FiguresEvaluator(common.Evaluator):
    """Draws the figures of a protocol evaluator's features and results.

    Args:
        name: the entry's name.
        of: the protocol evaluator (model features) whose split, features,
            results and rank-list views are drawn.
        baseline: a raw-pixel protocol evaluator whose CMC is overlaid, or
            None.
        load_images: indices of the split -> [m, H, W, 3] uint8 display
            images (`analysis.display_loader`).
        folder: where to draw.
        label: what the evaluated states are, for the figures' README
            ("final", "latest", "best").
        every_steps, at_end: see `common.Evaluator`.
    """

    def __init__(
        self,
        name: str,
        *,
        of: common.ProtocolEvaluator,
        baseline: common.ProtocolEvaluator | None,
        load_images: Callable[[np.ndarray], np.ndarray],
        folder: str,
        label: str = "final",
        every_steps: int = 0,
        at_end: bool = True,
    ):
        super().__init__(name, every_steps=every_steps, at_end=at_end)
        self.of = of
        self.baseline = baseline
        self.load_images = load_images
        self.folder = folder
        self.label = label
        self.paths: dict[str, str] = {}

    def run(self, state) -> Iterator[tuple[str, float]]:
        """Draws (process 0); a failure is logged and never fails the run."""
        start = time.perf_counter()
        # Every process takes part in extracting the features.
        features = self.of.features(state)
        results = self.of.results(state)
        raw = self.baseline.results(state) if self.baseline else None
        if jax.process_index() != 0:
            return
        try:
            self.paths = analysis.draw_figures(
                self.folder,
                features=features,
                protocol=self.of.protocol,
                results=results,
                raw_pixel_results=raw,
                load_images=self.load_images,
                step=int(jax.device_get(state.step)),
                checkpoint=self.label,
            )
        except Exception:
            logging.exception(
                "Drawing the figures failed (the results are saved); retry "
                "with --mode=analyze."
            )
            return
        yield f"{self.name}/seconds", time.perf_counter() - start
