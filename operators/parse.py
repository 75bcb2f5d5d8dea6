"""Bytewax operators that parse raw source messages into readings and invalid records.

``parse``, ``parse_keyed`` (parse and key in one pass), ``parse_routed`` (route the raw
bytes to the worker that owns their sensor, then parse) and ``split``. What a payload
may hold and every reason a message is refused are in :mod:`operators.payloads`, whose
public names this module re-exports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.payloads import (
    DEFAULT_LIMITS,
    DUPLICATE_READING,
    OUT_OF_ORDER,
    RATE_LIMITED,
    REASONS,
    ParseLimits,
    parse_many,
    parse_message,
    topic_sensor,
)
from operators.records import Invalid, RawMessage, Reading

__all__ = [
    "DUPLICATE_READING",
    "OUT_OF_ORDER",
    "RATE_LIMITED",
    "REASONS",
    "KeyedParseOut",
    "ParseLimits",
    "ParseOut",
    "parse",
    "parse_keyed",
    "parse_many",
    "parse_message",
    "parse_routed",
    "split",
    "split_keyed",
]


@dataclass(frozen=True)
class ParseOut:
    """The two streams ``parse`` (or ``split``, or ``limits.rate_limit``) splits into."""

    oks: Stream[Reading]
    """Well-formed readings."""
    errs: Stream[Invalid]
    """Messages that could not become readings, each with a reason."""


@operator
def parse(
    step_id: str,
    up: Stream[RawMessage],
    limits: ParseLimits = DEFAULT_LIMITS,
) -> ParseOut:
    """Parse raw messages into readings, routing anything malformed to ``errs``.

    Args:
        step_id: Unique ID.
        up: Raw messages ``(origin, payload, received_at)`` from a source.
        limits: Size, count and clock-skew limits.

    Returns:
        ``oks`` with :class:`Reading` records and ``errs`` with :class:`Invalid` ones.
    """
    return split("split", op.flat_map_batch("parse", up, partial(parse_many, limits=limits)))


@dataclass(frozen=True)
class KeyedParseOut:
    """What :func:`parse_keyed`, :func:`parse_routed` and :func:`split_keyed` split into."""

    oks: KeyedStream[Reading]
    """Well-formed readings as ``(key, reading)``."""
    errs: Stream[Invalid]
    """Messages that could not become readings, each with a reason."""


@operator
def parse_keyed(
    step_id: str,
    up: Stream[RawMessage],
    key: Callable[[Reading], str],
    limits: ParseLimits = DEFAULT_LIMITS,
) -> KeyedParseOut:
    """:func:`parse`, with the readings keyed in the same pass (one step fewer per item).

    Args:
        step_id: Unique ID.
        up: Raw messages ``(origin, payload, received_at)`` from a source.
        key: A reading's key, e.g. its sensor id.
        limits: Size, count and clock-skew limits.

    Returns:
        ``oks`` with ``(key, reading)`` pairs and ``errs`` with :class:`Invalid` records.
    """

    def keyed(batch: list[Reading | Invalid]) -> list[tuple[str, Reading]]:
        return [(key(x), x) for x in batch if type(x) is Reading]

    mixed = op.flat_map_batch("parse", up, partial(parse_many, limits=limits))
    return KeyedParseOut(op.flat_map_batch("oks", mixed, keyed),
                         op.flat_map_batch("errs", mixed, _invalids))  # fmt: skip


class _ParseLogic(StatefulBatchLogic[RawMessage, "Reading | Invalid", None]):
    """Parses the raw messages routed to it; keeps nothing (a stateless keyed step)."""

    def __init__(self, limits: ParseLimits) -> None:
        self._limits = limits

    def on_batch(self, values: list[RawMessage]) -> tuple[list[Reading | Invalid], bool]:
        return parse_many(values, self._limits), StatefulBatchLogic.DISCARD

    def snapshot(self) -> None:
        return None


@operator
def parse_routed(
    step_id: str,
    up: Stream[RawMessage],
    key: Callable[[Reading], str],
    limits: ParseLimits = DEFAULT_LIMITS,
) -> KeyedParseOut:
    """:func:`parse_keyed` for a cluster: route the raw bytes first, then parse.

    In a Bytewax cluster a reading read by one process but keyed to another crosses
    between processes, pickled. Parsed readings are costly to pickle; the raw payload is
    bytes. So each message is keyed by the sensor its MQTT topic names (``…/sensors/<id>
    /readings``; else by its origin) and parsed by the worker that owns that key, which
    also owns the sensor's state downstream (same key, same worker): the readings never
    cross again.

    Args:
        step_id: Unique ID.
        up: Raw messages ``(origin, payload, received_at)`` from a source.
        key: A reading's key downstream (its sensor id, for the topic key to match).
        limits: Size, count and clock-skew limits.

    Returns:
        ``oks`` with ``(key, reading)`` pairs and ``errs`` with :class:`Invalid` records.
    """
    routed = op.flat_map_batch("route", up, _routed)
    mixed = op.stateful_batch("parse", routed, lambda _: _ParseLogic(limits))
    return split_keyed("split", mixed, key)


def _routed(batch: list[RawMessage]) -> list[tuple[str, RawMessage]]:
    """Key each raw message by the sensor its topic names, else by its origin."""
    keys: dict[str, str] = {}
    out = []
    for message in batch:
        origin = message[0]
        k = keys.get(origin)
        if k is None:
            k = keys[origin] = topic_sensor(origin) or origin
        out.append((k, message))
    return out


@operator
def split_keyed(
    step_id: str,
    up: KeyedStream[Reading | Invalid],
    key: Callable[[Reading], str] | None = None,
) -> KeyedParseOut:
    """Split a keyed mixed stream into its ``(key, reading)`` pairs and invalid records.

    Args:
        step_id: Unique ID.
        up: ``(key, reading or invalid record)`` pairs, e.g. a keyed step's output.
        key: Key the readings anew with this (default: keep the key they came with).

    Returns:
        Both streams, each in the order of ``up``.
    """
    if key is None:

        def oks(batch: list[tuple[str, Reading | Invalid]]) -> list[tuple[str, Reading]]:
            return [kv for kv in batch if type(kv[1]) is Reading]  # type: ignore[misc]

    else:

        def oks(batch: list[tuple[str, Reading | Invalid]]) -> list[tuple[str, Reading]]:
            return [(key(x), x) for _, x in batch if type(x) is Reading]

    return KeyedParseOut(op.flat_map_batch("oks", up, oks),
                         op.flat_map_batch("errs", up, _keyed_invalids))  # fmt: skip


def _keyed_invalids(batch: list[tuple[str, Reading | Invalid]]) -> list[Invalid]:
    return [x for _, x in batch if type(x) is Invalid]


@operator
def split(step_id: str, up: Stream[Reading | Invalid]) -> ParseOut:
    """Split a mixed stream into its readings (``oks``) and invalid records (``errs``).

    Args:
        step_id: Unique ID.
        up: Readings and invalid records.

    Returns:
        Both streams, each in the order of ``up``.
    """
    # Two batch filters cost one Python call per batch; ``op.branch`` costs one per item.
    oks = op.flat_map_batch("oks", up, _readings)
    errs = op.flat_map_batch("errs", up, _invalids)
    return ParseOut(oks, errs)


def _readings(batch: list[Reading | Invalid]) -> list[Reading]:
    return [x for x in batch if type(x) is Reading]


def _invalids(batch: list[Reading | Invalid]) -> list[Invalid]:
    return [x for x in batch if type(x) is Invalid]
