"""Mergeable quantile sketches of scores: Apache DataSketches' KLL sketch of floats.

A KLL sketch of ``k`` keeps about ``k * log2(n / k)`` of ``n`` scores and answers ranks
and quantiles within a normalised rank error :func:`rank_error` (``k=200``: 1.33% for one
query, 1.65% for a whole CDF, each with 99% confidence), whatever the stream, and merges
with the same guarantee: it is what a fleet's thresholds pool. Serialised, a sketch of
``k=200`` takes about 2.2 KB after 10,000 scores (8 bytes empty). Merges draw random bits,
so merging in another order gives another sketch, within the same error.

>>> s = sketch_of(np.arange(100.0))  # under k values: kept exactly
>>> s.n, s.get_quantile(0.5), s.get_quantile(0.99), round(rank_error(s), 4)
(100, 50.0, 99.0, 0.0133)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from datasketches import kll_floats_sketch  # type: ignore[import-untyped]

__all__ = ["DEFAULT_K", "from_bytes", "ks_distance", "merged", "rank_error", "sketch_of"]

DEFAULT_K = 200
"""DataSketches' default ``k``: 1.33% rank error for one query, 99% of the time."""

Sketch = Any  # datasketches.kll_floats_sketch, which ships no type hints


def sketch_of(scores: npt.ArrayLike, k: int = DEFAULT_K) -> Sketch:
    """A sketch of the finite values of ``scores`` (as float32)."""
    values = np.asarray(scores, dtype=np.float32).ravel()
    sketch = kll_floats_sketch(k)
    sketch.update(values[np.isfinite(values)])
    return sketch


def from_bytes(data: bytes) -> Sketch:
    """The sketch that ``sketch.serialize()`` wrote.

    Raises:
        ValueError: If the bytes are no sketch (DataSketches checks their bounds).
    """
    try:
        return kll_floats_sketch.deserialize(bytes(data))
    except (IndexError, RuntimeError, ValueError) as error:
        msg = f"not a KLL floats sketch: {error}"
        raise ValueError(msg) from error


def merged(sketches: Iterable[Sketch], k: int = DEFAULT_K) -> Sketch:
    """A new sketch of the union of what ``sketches`` saw."""
    result = kll_floats_sketch(k)
    for sketch in sketches:
        result.merge(sketch)
    return result


def rank_error(sketch: Sketch, *, whole_cdf: bool = False) -> float:
    """The normalised rank error bound (99% confidence) of one query, or of a whole CDF."""
    return float(sketch.normalized_rank_error(whole_cdf))


def ks_distance(a: Sketch, b: Sketch) -> float:
    """Kolmogorov-Smirnov distance of the sketches' CDFs: the largest gap, in ``[0, 1]``.

    Exact for the two sketches (taken at every value either retains), so within about
    twice the whole-CDF :func:`rank_error` of the streams' own distance. 0 when both are
    empty, 1 when only one is.
    """
    if a.is_empty() or b.is_empty():
        return float(a.is_empty() != b.is_empty())
    points = np.unique(np.array([v for s in (a, b) for v, _ in s], dtype=np.float32))
    split = points.tolist()
    gaps = np.subtract(a.get_cdf(split, True)[:-1], b.get_cdf(split, True)[:-1])
    return float(np.abs(gaps).max())
