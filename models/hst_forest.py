"""The shared, read-only trees of :mod:`models.halfspace`, built exactly as River builds them.

A forest depends only on ``(n_trees, height, seed, features, limits)``, so every model
with the same parameters shares one (``build_forest`` is cached). Trees are flat arrays in
heap order: node ``i`` of tree ``t`` sits at ``t * n_nodes + i``, children of ``i`` at
``2i+1`` and ``2i+2``. For one feature, :class:`Line` adds the step functions that make
scoring a batch one ``searchsorted`` and one gather.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Floats", "Forest", "Indices", "Ints", "Line", "build_forest", "build_line", "descend"]

_PADDING = 0.15  # River's make_padded_tree padding
_DEFAULT_LIMITS = (0.0, 1.0)

Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]
Ints = npt.NDArray[np.int64]


@dataclasses.dataclass(frozen=True)
class Line:
    """One feature: the values between two cuts reach the same leaves in every tree.

    Interval ``j`` is ``[edges[j], edges[j+1])``, with ``edges`` the sorted distinct
    thresholds after ``-inf``; those that reach a node are a run ``low <= j < high``.
    """

    edges: Floats
    span: Indices  # (2, n_trees * n_nodes): low and high of each node
    signed: Ints  # (2, n_trees * n_nodes): 2 ** depth of each node, and its opposite
    inner: Indices  # (2, n_trees * n_inner): low and high of the inner nodes, tree by tree
    kids: Indices  # (n_trees * n_inner, 2): their children


@dataclasses.dataclass(frozen=True)
class Forest:
    """Shared read-only trees, flat: node ``i`` of tree ``t`` sits at ``t * n_nodes + i``."""

    height: int
    feature: Indices  # column of X tested at each node
    threshold: Floats  # go left iff value < threshold
    offset: Indices  # (n_trees,) t * n_nodes
    parent: Indices  # parent of each node (the root is its own parent)
    paths: Indices  # (n_trees * n_nodes, height + 1): a leaf's nodes, root first
    weights: Ints  # 2 ** depth along the paths of all trees
    nodes: tuple[tuple[int, float], ...]  # (feature, threshold) for plain-Python walks
    line: Line | None = None  # with one feature


def descend(forest: Forest, X: Floats) -> Indices:
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
        return np.array(leaves, dtype=np.intp).reshape(len(X), len(forest.offset))
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
def build_forest(
    n_trees: int, height: int, seed: int, columns: tuple[int, ...], limits: tuple[Any, ...]
) -> Forest:
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
    forest = Forest(height, feature, threshold, offset, parent.ravel(),
                     paths.reshape(-1, height + 1), weights, nodes)  # fmt: skip
    if len(columns) == 1:
        forest = dataclasses.replace(forest, line=build_line(forest, height))
    for part in (forest, forest.line):
        for field in dataclasses.fields(part) if part else ():
            if isinstance(array := getattr(part, field.name), np.ndarray):
                array.flags.writeable = False
    return forest


def build_line(forest: Forest, height: int) -> Line:
    """The intervals between the thresholds of a one-feature forest, and the nodes' runs."""
    cuts = np.unique(forest.threshold[np.isfinite(forest.threshold)])  # leaves hold inf
    edges = np.concatenate([[-np.inf], cuts])
    table = descend(forest, edges[:, None])  # the leaves of each interval
    n_inner = 2**height - 1
    bounds = np.stack([table[:, t].searchsorted(first + np.arange(n_inner + 2))
                       for t, first in enumerate(forest.offset + n_inner)])  # fmt: skip
    depth = np.repeat(np.arange(height + 1), 2 ** np.arange(height + 1))
    first = (np.arange(2 * n_inner + 1) - 2**depth + 1) << (height - depth)  # leaf below
    span = np.stack([bounds[:, first], bounds[:, first + (1 << (height - depth))]])
    weight = np.tile(2**depth, len(forest.offset)).astype(np.int64)
    left = (forest.offset[:, None] + 2 * np.arange(n_inner) + 1).ravel()
    kids = np.stack([left, left + 1], axis=1)
    inner = span[:, :, :n_inner].reshape(2, -1)
    return Line(edges, span.reshape(2, -1), np.stack([weight, -weight]), inner, kids)
