"""Half-Space Tree summaries by baseline level: what a fleet's windows look like near a level.

Sensors of one fleet sit at different levels (a PurpleAir sensor's usual PM1.0 is 3 or 30
µg/m³), so the average window of the whole fleet fits a new sensor badly. An ``"hst"``
summary therefore keeps the reference masses of finished windows *per level bucket*:
a window's level is the median of its first feature, and buckets are a geometric grid of
that feature's range (:func:`level_edges`: ratio :data:`LEVEL_RATIO` from ``2**-10`` of
the range up to all of it, measured from the lower limit). Arrays, all ``uint32``:
``buckets`` (the present bucket indices, ascending), ``windows`` (windows in each) and
``masses`` (their summed masses, one row per bucket). A merge sums bucket by bucket:
exact, associative, in any order.

:class:`LevelPrior` turns a fleet summary into a new sensor's model: the average window of
the buckets around the sensor's level (``spread`` either side), times ``gain``, capped at
the window size (see ``PriorStore`` in :mod:`operators.fleet_sync` for why a gain).

>>> edges = level_edges((0.0, 1200.0))
>>> len(edges), round(edges[0], 2), round(edges[-1], 1), bucket_of(20.0, edges)
(20, 1.17, 848.5, 9)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.halfspace import HalfSpaceTrees
from models.summaries import TOO_LARGE, Summary, SummaryError

__all__ = ["LEVEL_OCTAVES", "LEVEL_RATIO", "LevelPrior", "bucket_of", "hst_arrays",
           "hst_distribution", "hst_merge", "level_edges"]  # fmt: skip

LEVEL_RATIO = 2**0.5
"""Ratio of two consecutive level bucket edges."""
LEVEL_OCTAVES = 10
"""The lowest edge is ``2 ** -LEVEL_OCTAVES`` of the range above the lower limit."""


def level_edges(limits: Sequence[float]) -> tuple[float, ...]:
    """Bucket edges of a feature with ``limits`` ``(low, high)``: geometric from ``low``."""
    low, high = float(limits[0]), float(limits[1])
    steps = round(LEVEL_OCTAVES * math.log(2) / math.log(LEVEL_RATIO))
    return tuple(low + (high - low) * LEVEL_RATIO ** (k - steps) for k in range(steps))


def bucket_of(level: float, edges: Sequence[float]) -> int:
    """The bucket of ``level``: how many edges lie at or below it (NaN: bucket 0)."""
    if math.isnan(level):
        return 0
    return int(np.searchsorted(np.asarray(edges), level, side="right"))


def hst_arrays(masses: npt.ArrayLike, bucket: int, windows: int = 1) -> dict[str, Any]:
    """The arrays of a one-bucket summary."""
    return {"buckets": np.array([bucket], np.uint32), "windows": np.array([windows], np.uint32),
            "masses": np.asarray(masses, np.uint32)[None]}  # fmt: skip


def hst_merge(parts: Sequence[Summary]) -> dict[str, Any]:
    """The bucket-by-bucket sum of the parts' arrays.

    Raises:
        SummaryError: ``too_large`` if a sum overflows ``uint32``.
    """
    index = np.unique(np.concatenate([p.arrays["buckets"] for p in parts]))
    width = parts[0].arrays["masses"].shape[1]
    masses = np.zeros((len(index), width), np.int64)
    windows = np.zeros(len(index), np.int64)
    for p in parts:
        rows = np.searchsorted(index, p.arrays["buckets"])
        masses[rows] += p.arrays["masses"]
        windows[rows] += p.arrays["windows"]
    if max(masses.max(initial=0), windows.max(initial=0)) > np.iinfo(np.uint32).max:
        msg = "merged masses overflow uint32"
        raise SummaryError(TOO_LARGE, msg)
    return {"buckets": index.astype(np.uint32), "windows": windows.astype(np.uint32),
            "masses": masses.astype(np.uint32)}  # fmt: skip


def hst_distribution(summary: Summary, buckets: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The summary's masses laid out on ``buckets`` (a superset of its own), summing to 1."""
    out = np.zeros((len(buckets), summary.arrays["masses"].shape[1]))
    out[np.searchsorted(buckets, summary.arrays["buckets"])] = summary.arrays["masses"]
    total = out.sum()
    return out.ravel() / total if total else out.ravel()


class LevelPrior:
    """A fleet ``"hst"`` summary, ready to seed sensors by their level.

    Args:
        fleet: A merged ``"hst"`` summary with at least one window.
        gain: Multiplies the average masses (capped at ``window_size``).
        spread: Buckets either side of a sensor's that its prior pools.
    """

    def __init__(self, fleet: Summary, gain: float = 1.0, spread: int = 1) -> None:
        self.fleet, self.gain, self.spread = fleet, gain, spread
        meta = fleet.meta
        self.edges: tuple[float, ...] = tuple(meta["level_edges"])
        self.window_size = int(meta["window_size"])
        self._buckets = fleet.arrays["buckets"].astype(np.int64)
        self._windows = fleet.arrays["windows"].astype(np.int64)
        self._cache: dict[int | None, npt.NDArray[Any]] = {}

    def bucket(self, level: float) -> int:
        """The bucket of ``level``."""
        return bucket_of(level, self.edges)

    def masses(self, bucket: int | None = None) -> npt.NDArray[Any]:
        """The prior's masses near ``bucket`` (all buckets: ``None``, or none near it)."""
        cached = self._cache.get(bucket)
        if cached is None:
            near = np.ones(len(self._buckets), bool)
            if bucket is not None:
                near = np.abs(self._buckets - bucket) <= self.spread
                near = near if self._windows[near].sum() else np.ones_like(near)
            total = self.fleet.arrays["masses"][near].sum(axis=0, dtype=np.float64)
            mean = total * self.gain / max(1, int(self._windows[near].sum()))
            cached = np.minimum(np.rint(mean), self.window_size).astype(
                np.min_scalar_type(self.window_size))  # fmt: skip
            self._cache[bucket] = cached
        return cached

    def model(self, level: float | None = None) -> HalfSpaceTrees:
        """A fresh model holding the prior of ``level`` (of the whole fleet: ``None``)."""
        meta = self.fleet.meta
        limits = {name: (low, high) for name, (low, high) in meta["limits"].items()}
        model = HalfSpaceTrees(meta["n_trees"], meta["height"], meta["window_size"], limits,
                               meta["seed"], meta["features"])  # fmt: skip
        model.set_reference_masses(self.masses(None if level is None else self.bucket(level)))
        return model
