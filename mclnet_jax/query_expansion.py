"""Average query expansion (AQE), fast-reid's one-round form, in numpy.

`average_query_expansion(features, k=5, alpha=3.0)` takes the query and
gallery features together ([N, D], N = Q + G) and replaces every row by
the mean, over its k most similar rows (cosine similarity of the
L2-normalised rows, the row itself included: it is its own nearest), of
those rows weighted by similarity ** alpha. As fast-reid's `aqe(...,
qe_times=1)`: the similarities come from the normalised rows, the rows
averaged are the given ones, and the result is not normalised (the
protocol normalises before its distances, as fast-reid's cosine metric
does). Distances are then recomputed from the expanded rows.

Differences, on purpose: the k nearest are chosen with `np.argpartition`
over the whole row (fast-reid: the same call with a sorted head), so only
exact ties at the k-th similarity can pick another row; k larger than N
uses all N rows (fast-reid fails); a negative similarity among the k
nearest with a non-integer alpha has no real power and is refused
(fast-reid returns NaN).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from mclnet_jax import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class AqeParams:
    """Parameters of `average_query_expansion` (fast-reid's defaults are
    k=5 in its configs, alpha=3.0)."""

    k: int = 5
    alpha: float = 3.0

    def __post_init__(self):
        _check_params(self.k, self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return {"k": int(self.k), "alpha": float(self.alpha)}

    def describe(self) -> str:
        return f"k={self.k}, alpha={self.alpha:g}"


def _check_params(k, alpha) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"AQE k must be a positive int, got {k!r} (e.g. 5).")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not np.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(
            f"AQE alpha must be a finite number >= 0, got {alpha!r} (e.g. 3)."
        )


def average_query_expansion(
    features: np.ndarray, *, k: int = 5, alpha: float = 3.0
) -> np.ndarray:
    """One round of average query expansion over query + gallery rows.

    Args:
        features: [N, D] float, the query rows and the gallery rows together
            (any order: every row is expanded among all N).
        k: rows averaged per row (itself included); min(k, N) are used.
        alpha: similarity exponent of the weights.

    Returns:
        [N, D] float64: row i = mean over its k nearest j of features[j] *
        cos(i, j) ** alpha (not normalised).

    Raises:
        ValueError: on malformed inputs, or a negative similarity among the
            k nearest with a non-integer alpha.
    """
    _check_params(k, alpha)
    features = np.asarray(features)
    if (
        features.ndim != 2
        or features.shape[0] == 0
        or not np.issubdtype(features.dtype, np.number)
    ):
        raise ValueError(
            f"features must be a non-empty numeric [N, D] array, got shape "
            f"{features.shape} ({features.dtype})."
        )
    num = features.shape[0]
    k = min(int(k), num)
    unit = metrics_lib.l2_normalize(features)
    sims = unit @ unit.T
    if k < num:
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    else:
        nearest = np.broadcast_to(np.arange(num), (num, num))
    top = np.take_along_axis(sims, nearest, axis=1).astype(np.float64)
    if float(alpha) != int(alpha) and np.any(top < 0):
        raise ValueError(
            f"AQE: a negative cosine similarity among the {k} nearest rows "
            f"has no real power {alpha:g}; use an integer alpha (e.g. 3) or "
            "a smaller k."
        )
    weights = np.power(top, float(alpha))
    values = features.astype(np.float64)
    out = np.zeros(values.shape, np.float64)
    for j in range(k):  # k gathers of [N, D], not one [N, k, D].
        out += weights[:, j, None] * values[nearest[:, j]]
    return out / k
