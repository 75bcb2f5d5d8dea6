"""Half-Space Trees vectorised with numpy, with scores identical to River's.

:class:`HalfSpaceTrees` builds the same trees as ``river.anomaly.HalfSpaceTrees`` (the
same ``random.Random(seed)`` calls) and keeps the same integer masses, so every score is
the same float; a batch costs a few numpy calls instead of a Python walk per row and tree.

Trees are read-only arrays in heap order (children of ``i`` at ``2i+1`` and ``2i+2``),
built once per parameter set and shared by all models. A batch finds all its leaves at
once (``searchsorted`` for one feature, one gather per level otherwise) and learns them as
a ``bincount`` of root-to-leaf paths. Masses never grow down a path, so River's early stop
keeps a node iff its parent is not light (``r_mass >= 0.1 * window_size``): the window
pivot zeroes the other nodes and a score is one gather and one integer dot product.

Per sensor, with the air-quality defaults (``n_trees=10, height=8, window_size=72``), a
model holds two ``uint8`` arrays of 5,110 masses (10,220 bytes); pickled, with the masses
zlib-compressed, it takes 560 to 850 bytes once past the first window (measured on a
simulated PM1.0 stream) and 155 bytes before its first row.

A key that is absent, ``None`` or NaN is a missing feature and takes River's missing-key
branch (to the child heavier in the current window). River itself only defines the absent
key: it fails on ``None`` and sends NaN right.

>>> from river import anomaly
>>> ours = HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)
>>> theirs = anomaly.HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)
>>> pairs = []
>>> for v in [0.5, 0.45, 0.43, 0.44, 0.445, 0.45, 0.0, 0.9]:
...     pairs.append((ours.score_one({"x": v}), theirs.score_one({"x": v})))
...     ours.learn_one({"x": v})
...     theirs.learn_one({"x": v})
>>> all(a == b for a, b in pairs), pairs[-2]
(True, (0.8533333333333333, 0.8533333333333333))
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import pickle
import random
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HalfSpaceTrees"]

_PADDING = 0.15  # River's make_padded_tree padding
_DEFAULT_LIMITS = (0.0, 1.0)

Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]


@dataclasses.dataclass(frozen=True)
class _Forest:
    """Shared read-only trees, flat: node ``i`` of tree ``t`` sits at ``t * n_nodes + i``."""

    height: int
    feature: Indices  # column of X tested at each node
    threshold: Floats  # go left iff value < threshold
    offset: Indices  # (n_trees,) t * n_nodes
    parent: Indices  # parent of each node (the root is its own parent)
    paths: Indices  # (n_trees * n_nodes, height + 1): a leaf's nodes, root first
    weights: npt.NDArray[np.int64]  # 2 ** depth along the paths of all trees
    nodes: tuple[tuple[int, float], ...]  # (feature, threshold) for plain-Python walks
    cuts: Floats | None = None  # one feature: the sorted distinct thresholds and ...
    table: Indices | None = None  # ... the leaves of a value in [cuts[j-1], cuts[j])


def _descend(forest: _Forest, X: Floats) -> Indices:
    """Leaf of every (row, tree) for rows without missing values; one gather per level."""
    if len(X) <= 4:  # plain Python beats numpy's cost per call on a few rows
        leaves = []
        for row in X.tolist():
            for base in forest.offset.tolist():
                node = base
                for _ in range(forest.height):
                    feature, threshold = forest.nodes[node]
                    node += node - base + 1 + (row[feature] >= threshold)
                leaves.append(node)
        return np.array(leaves, dtype=np.intp).reshape(len(X), -1)
    node = np.zeros((len(X), len(forest.offset)), dtype=np.intp)
    rows = np.arange(len(X))[:, None]
    for _ in range(forest.height):
        flat = node + forest.offset
        right = X[rows, forest.feature[flat]] >= forest.threshold[flat]
        node *= 2
        node += 1
        node += right
    node += forest.offset
    return node


@functools.lru_cache(maxsize=256)
def _forest(
    n_trees: int, height: int, seed: int, columns: tuple[int, ...], limits: tuple[Any, ...]
) -> _Forest:
    """Build the trees as River does; ``columns`` and ``limits`` in sorted-name order."""
    rng = random.Random(seed)
    n_nodes = 2 ** (height + 1) - 1
    feature = np.zeros((n_trees, n_nodes), dtype=np.intp)
    threshold = np.full((n_trees, n_nodes), np.inf)
    bounds = list(limits)
    population = range(len(bounds))

    def grow(t: int, node: int, depth: int) -> None:  # River's make_padded_tree, in DFS
        if depth == height:
            return
        on = rng.choices(population, weights=[high - low for low, high in bounds])[0]
        a, b = bounds[on]
        at = rng.uniform(a + _PADDING * (b - a), b - _PADDING * (b - a))
        feature[t, node], threshold[t, node] = columns[on], at
        bounds[on] = (a, at)
        grow(t, 2 * node + 1, depth + 1)
        bounds[on] = (at, b)
        grow(t, 2 * node + 2, depth + 1)
        bounds[on] = (a, b)

    for t in range(n_trees):
        grow(t, 0, 0)
    offset = np.arange(n_trees, dtype=np.intp) * n_nodes
    heap = np.arange(1, n_nodes + 1)  # 1-based heap numbers: ancestors by right shifts
    parent = (np.maximum(heap // 2, 1) - 1) + offset[:, None]
    paths = np.zeros((n_trees, n_nodes, height + 1), dtype=np.intp)
    paths[:, n_nodes // 2 :] = (heap[n_nodes // 2 :, None] >> np.arange(height, -1, -1)) - 1
    paths += offset[:, None, None]
    weights = np.tile(2 ** np.arange(height + 1, dtype=np.int64), n_trees)
    feature, threshold = feature.ravel(), threshold.ravel()
    nodes = tuple(zip(feature.tolist(), threshold.tolist(), strict=True))
    forest = _Forest(height, feature, threshold, offset, parent.ravel(),
                     paths.reshape(-1, height + 1), weights, nodes)  # fmt: skip
    if len(columns) == 1:  # every value between two cuts reaches the same leaves
        cuts = np.unique(threshold[np.isfinite(threshold)])  # leaves hold inf
        edges = np.concatenate([[-np.inf], cuts])[:, None]
        forest = dataclasses.replace(forest, cuts=cuts, table=_descend(forest, edges))
    for field in dataclasses.fields(forest)[1:]:
        if isinstance(array := getattr(forest, field.name), np.ndarray):
            array.flags.writeable = False
    return forest


class HalfSpaceTrees:
    """Half-Space Trees whose scores equal ``river.anomaly.HalfSpaceTrees`` bit for bit.

    High scores mean anomalies; scores are 0 during the first window. The trees are built
    on the first learned row, from the sorted feature names, exactly as River builds them.

    Args:
        n_trees: Number of trees.
        height: Height of each tree (``2 ** (height + 1) - 1`` nodes).
        window_size: Rows per window; the reference masses pivot after each window.
        limits: ``(low, high)`` per feature; ``(0.0, 1.0)`` where not given.
        seed: Seed of ``random.Random``, as in River. Models with equal parameters share
            one copy of their trees, so a fleet should set it. ``None`` draws a seed on the
            first learned row and keeps it, so that a pickled model restores exactly.
        features: Feature names, which are also the column order of batch arrays. When
            ``None``, the sorted keys of the first learned mapping.

    Raises:
        ValueError: If a size is below 1, a limit is not ``low < high`` or ``features``
            is empty or repeats a name.
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: Mapping[str, tuple[float, float]] | None = None,
        seed: int | None = None,
        features: Sequence[str] | None = None,
    ) -> None:
        sizes = {"n_trees": n_trees, "height": height, "window_size": window_size}
        problems = [f"{k} must be at least 1, got {v}" for k, v in sizes.items() if v < 1]
        problems += [f"limits[{k!r}] must have low < high, got {tuple(v)}"
                     for k, v in (limits or {}).items() if not v[0] < v[1]]  # fmt: skip
        if features is not None and (not features or len(set(features)) != len(features)):
            problems.append(f"features must be non-empty and unique, got {features!r}")
        if problems:
            msg = "; ".join(problems)
            raise ValueError(msg)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.limits = limits
        self.seed = seed
        self._features = None if features is None else tuple(features)
        self._seed = seed  # the drawn one when seed is None
        self._forest: _Forest | None = None
        self._l = np.zeros(0, dtype=np.uint8)  # current-window mass of every node
        self._r = np.zeros(0, dtype=np.uint8)  # last window's, zero below light nodes
        self._counter = 0
        self._first_window = True

    @property
    def features(self) -> tuple[str, ...] | None:
        """Feature names in batch column order; ``None`` until given or first learned."""
        return self._features

    def learn_one(self, x: Mapping[str, float | None]) -> None:
        """Learn one row (a missing feature is an absent key, ``None`` or NaN)."""
        if self._features is None:
            if not x:
                msg = "cannot take the features from an empty mapping"
                raise ValueError(msg)
            self._features = tuple(sorted(x))
        self._run(self._row(x), score=False, learn=True)

    def score_one(self, x: Mapping[str, float | None]) -> float:
        """Anomaly score of one row in ``[0, 1]``, without learning it."""
        if self._features is None:
            return 0.0
        return float(self._run(self._row(x), score=True, learn=False)[0])

    def score_many(self, X: npt.ArrayLike) -> Floats:
        """Scores of the rows of ``X`` (``(n, len(features))``, NaN = missing), no learning."""
        return self._run(self._matrix(X), score=True, learn=False)

    def learn_many(self, X: npt.ArrayLike) -> None:
        """Learn the rows of ``X`` in order, exactly as a loop of :meth:`learn_one`."""
        self._run(self._matrix(X), score=False, learn=True)

    def score_learn_many(self, X: npt.ArrayLike) -> Floats:
        """Score then learn each row of ``X`` in order, as ``score_one``/``learn_one`` do."""
        return self._run(self._matrix(X), score=True, learn=True)

    def state_bytes(self) -> int:
        """Size of this model pickled: what a snapshot of it costs."""
        return len(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    def __getstate__(self) -> dict[str, Any]:
        limits = None if self.limits is None else dict(self.limits)
        masses = zlib.compress(self._l.tobytes() + self._r.tobytes(), 9) if self._l.size else b""
        return {"params": (self.n_trees, self.height, self.window_size, limits, self.seed),
                "features": self._features, "seed": self._seed, "masses": masses,
                "counter": self._counter, "first": self._first_window}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["params"], features=state["features"])  # type: ignore[misc]
        self._seed, self._counter = state["seed"], state["counter"]
        self._first_window = state["first"]
        if state["masses"]:
            self._build()
            flat = np.frombuffer(zlib.decompress(state["masses"]), dtype=self._l.dtype)
            self._l[:], self._r[:] = flat[: self._l.size], flat[self._l.size :]

    def _build(self) -> _Forest:
        """Get the shared trees and allocate the masses (on first learn or restore)."""
        if self._forest is None:
            names = self._features or ()
            limits = {**dict.fromkeys(names, _DEFAULT_LIMITS), **(self.limits or {})}
            order = sorted(range(len(names)), key=names.__getitem__)
            if self._seed is None:
                self._seed = random.SystemRandom().getrandbits(64)
            self._forest = _forest(self.n_trees, self.height, self._seed, tuple(order),
                                   tuple(tuple(limits[names[i]]) for i in order))  # fmt: skip
            dtype = np.min_scalar_type(self.window_size)  # masses never exceed window_size
            self._l = np.zeros(len(self._forest.feature), dtype=dtype)
            self._r = np.zeros_like(self._l)
        return self._forest

    def _row(self, x: Mapping[str, float | None]) -> Floats:
        return np.array([[x.get(name) for name in self._features or ()]], dtype=np.float64)

    def _matrix(self, X: npt.ArrayLike) -> Floats:
        matrix = np.asarray(X, dtype=np.float64)
        d = len(self._features or ())
        if not d or matrix.ndim != 2 or matrix.shape[1] != d:
            msg = f"X must have shape (n, {d}) with features known, got {matrix.shape}"
            raise ValueError(msg)
        return matrix

    def _run(self, X: Floats, *, score: bool, learn: bool) -> Floats:
        """Score and/or learn rows in order, cutting the batch at window pivots."""
        scores = np.zeros(len(X), dtype=np.float64)
        if not learn and self._forest is None:
            return scores
        forest = self._build()
        if forest.cuts is None or forest.table is None:
            leaves = _descend(forest, X)  # rows with holes are walked again below
        else:
            leaves = forest.table[forest.cuts.searchsorted(X[:, 0], side="right")]
        missing = np.isnan(X)
        holes = np.flatnonzero(missing.any(axis=1)).tolist() if missing.any() else []
        start = 0
        while start < len(X):
            stop = min(len(X), start + self.window_size - self._counter) if learn else len(X)
            done = start
            for i in holes[bisect.bisect_left(holes, start) : bisect.bisect_left(holes, stop)]:
                if learn:  # a row with a missing value walks by the masses learned so far
                    self._add(forest.paths[leaves[done:i]])
                    done = i
                leaves[i] = self._walk_missing(forest, X[i])
            paths = forest.paths[leaves[start:stop]]
            if score and not self._first_window:
                total = self._r[paths].reshape(stop - start, -1) @ forest.weights
                scores[start:stop] = 1.0 - total / (self.window_size * len(forest.feature))
            if learn:
                self._add(paths[done - start :])
                self._counter += stop - start
                if self._counter == self.window_size:
                    self._pivot(forest)
            start = stop
        return scores

    def _pivot(self, forest: _Forest) -> None:
        """End of a window: its masses become the reference, kept where scores read them."""
        light = self._l[forest.parent] < math.ceil(0.1 * self.window_size)  # r < 0.1 * w
        np.copyto(self._r, self._l)
        self._r[light] = 0
        self._l.fill(0)
        self._first_window, self._counter = False, 0

    def _walk_missing(self, forest: _Forest, row: Floats) -> Indices:
        """River's walk of one row in every tree, reading current-window masses.

        Where a value is missing it goes to the heavier child, else left iff below.
        """
        node = forest.offset.copy()
        for _ in range(self.height):
            value = row[forest.feature[node]]
            left = 2 * node + 1 - forest.offset
            heavier_right = self._l[left] < self._l[left + 1]
            go_right = np.where(np.isnan(value), heavier_right, value >= forest.threshold[node])
            node = left + go_right
        return node

    def _add(self, paths: Indices) -> None:
        """Add one to the current-window mass of every node on the given paths."""
        if len(paths) == 1:  # one row's paths hold no node twice
            self._l[paths] += 1
        elif len(paths):
            counts = np.bincount(paths.ravel(), minlength=self._l.size)
            np.add(self._l, counts, out=self._l, casting="unsafe")
