"""Shared pieces of edgewatch's keyed (per-sensor) stateful operators."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

__all__ = ["IdleEvictingLogic", "key_batched"]

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")


class IdleEvictingLogic(StatefulBatchLogic[V, W, S], Generic[V, W, S]):
    """A per-key logic that Bytewax discards once its key has been idle for a while.

    Subclasses implement :meth:`process` (the batch work) and :meth:`snapshot`. The idle
    clock is wall time: a sensor that sends nothing for ``idle_timeout`` loses its state
    and starts afresh when it returns, which keeps memory bounded under sensor churn.
    """

    def __init__(self, idle_timeout: timedelta | None) -> None:
        self._idle_timeout = idle_timeout
        self._expires: datetime | None = None

    @abstractmethod
    def process(self, values: list[V]) -> Iterable[W]:
        """Handle one batch of this key's values, in order, and return the outputs."""

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        """Process the batch and push the idle deadline back."""
        if self._idle_timeout is not None:
            self._expires = datetime.now(timezone.utc) + self._idle_timeout
        return self.process(values), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[W], bool]:
        """The key went idle: drop its state."""
        return (), StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        """When this key's state expires (``None``: never)."""
        return self._expires


X = TypeVar("X")


@operator
def key_batched(step_id: str, up: Stream[X], key: Callable[[X], str]) -> KeyedStream[X]:
    """Like ``op.key_on``, but one Python call per batch instead of one per item.

    Args:
        step_id: Unique ID.
        up: Items to key.
        key: Returns an item's key (a ``str``).

    Returns:
        ``(key, item)`` pairs.
    """
    return op.flat_map_batch("key", up, lambda batch: [(key(x), x) for x in batch])
