"""Every edgewatch metric, and the sinks that update them.

Names are ``edgewatch_*`` in base units, counters end in ``_total`` and labels come only
from a fixed small set (flow, detector, reason, severity, field) — never a sensor id or
anything else taken from a payload. Metrics are created lazily in the default
``prometheus_client`` registry (nothing happens at import time).

The sinks take records by shape (:class:`ScoredLike`, :class:`AlertLike`,
:class:`InvalidLike`) so this package needs nothing from ``operators``. They count in
batches: one ``inc`` per label set per batch, not per event.

Parallelism: one partition per worker, all updating the process's registry. Delivery:
counts are in-memory and restart from zero with the process (Prometheus handles resets).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from prometheus_client import Counter

from sinks.memory import CallbackSink

__all__ = [
    "AlertMetricsSink",
    "InvalidMetricsSink",
    "Metrics",
    "ScoreMetricsSink",
    "counter_values",
    "metrics",
]


class _ReadingLike(Protocol):
    @property
    def imputed(self) -> tuple[str, ...]: ...


class ScoredLike(Protocol):
    """What the score sink reads of a scored batch."""

    @property
    def readings(self) -> Sequence[_ReadingLike]: ...
    @property
    def detector(self) -> str: ...


class AlertLike(Protocol):
    """What the alert sink reads of an alert."""

    @property
    def detector(self) -> str: ...
    @property
    def severity(self) -> str: ...


class InvalidLike(Protocol):
    """What the dead-letter metrics sink reads of an invalid record."""

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class Metrics:
    """The process's metric objects."""

    events: Counter
    invalid: Counter
    imputed: Counter
    alerts: Counter


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process-wide metrics, created on first use."""
    global _metrics  # noqa: PLW0603 - one registry per process, made lazily
    with _lock:
        if _metrics is None:
            _metrics = Metrics(
                events=Counter("edgewatch_events", "Readings scored.", ["flow", "detector"]),
                invalid=Counter(
                    "edgewatch_invalid",
                    "Messages sent to the dead-letter stream, by reason.",
                    ["flow", "reason"],
                ),
                imputed=Counter(
                    "edgewatch_imputed", "Values filled in by imputation.", ["flow", "field"]
                ),
                alerts=Counter(
                    "edgewatch_alerts", "Alerts emitted.", ["flow", "detector", "severity"]
                ),
            )
        return _metrics


def _count_scored(flow: str, items: list[tuple[str, ScoredLike]]) -> None:
    m = metrics()
    events: Tally[str] = Tally()
    for _, s in items:
        events[s.detector] += len(s.readings)
    for det, n in events.items():
        m.events.labels(flow, det).inc(n)
    for name, n in Tally(f for _, s in items for r in s.readings for f in r.imputed).items():
        m.imputed.labels(flow, name).inc(n)


def _count_alerts(flow: str, items: list[AlertLike]) -> None:
    m = metrics()
    for (det, sev), n in Tally((a.detector, a.severity) for a in items).items():
        m.alerts.labels(flow, det, sev).inc(n)


def _count_invalid(flow: str, items: list[InvalidLike]) -> None:
    m = metrics()
    for reason, n in Tally(i.reason for i in items).items():
        m.invalid.labels(flow, reason).inc(n)


class ScoreMetricsSink(CallbackSink[tuple[str, ScoredLike]]):
    """Counts scored readings and imputed values; takes ``(key, Scored batch)`` items."""

    def __init__(self, flow: str) -> None:
        super().__init__(partial(_count_scored, flow))


class AlertMetricsSink(CallbackSink[AlertLike]):
    """Counts alerts by detector and severity; takes alerts."""

    def __init__(self, flow: str) -> None:
        super().__init__(partial(_count_alerts, flow))


class InvalidMetricsSink(CallbackSink[InvalidLike]):
    """Counts dead-lettered messages by reason; takes invalid records."""

    def __init__(self, flow: str) -> None:
        super().__init__(partial(_count_invalid, flow))


def counter_values(counter: Counter) -> dict[tuple[str, ...], float]:
    """Current ``_total`` values of a labelled counter, by label values."""
    out: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out
