"""Hand each output batch to a Python callable (in-process consumers such as the CLI).

Parallelism: one partition per worker, all calling the same callable (it must be
thread-safe when the flow runs several workers in one process). Delivery: at-most-once
across restarts (nothing is persisted); exactly the items of each batch otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["CallbackSink"]

X = TypeVar("X")


class _CallbackPartition(StatelessSinkPartition[X], Generic[X]):
    def __init__(self, fn: Callable[[list[X]], None]) -> None:
        self._fn = fn

    def write_batch(self, items: list[X]) -> None:
        self._fn(items)


class CallbackSink(DynamicSink[X], Generic[X]):
    """Call ``fn(batch)`` for every batch of items that reaches the output.

    Args:
        fn: Receives each batch as a list.
    """

    def __init__(self, fn: Callable[[list[X]], None]) -> None:
        self.fn = fn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CallbackPartition[X]:
        """Build the worker's partition."""
        return _CallbackPartition(self.fn)
