"""Every edgewatch metric, the sinks and hooks that update them, and the HTTP endpoint.

Names are ``edgewatch_*`` in base units (seconds), counters end in ``_total`` and labels
come only from a fixed small set (flow, detector, reason, severity, field, and the
feedback ``label``, true_positive or false_positive) — never a
sensor id or anything else taken from a payload. The two ``_info`` metrics carry
constant metadata labels as well (versions, model parameters), set once from code and
configuration. Metrics are created lazily in the default ``prometheus_client`` registry
(nothing happens at import time) and served by :func:`serve`.

The sinks take records by shape (:class:`ScoredLike`, :class:`AlertLike`,
:class:`InvalidLike`, :class:`ReadingLike`) so this package needs nothing from
``operators``; the hooks (:class:`MQTTConnectionMetrics`, :func:`inference_timer`) are
plain callables the dataflow hands to sources and operators. Sinks count in batches:
one update per label set per batch, not per event.

Parallelism: one partition per worker, all updating the process's registry. Delivery:
counts are in-memory and restart from zero with the process (Prometheus handles resets).
"""

from __future__ import annotations

import platform
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from operator import attrgetter
from typing import Protocol

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, start_http_server

from sinks.batch_histogram import BatchHistogram
from sinks.memory import CallbackSink

__all__ = ["AlertMetricsSink", "DeadLetterMetricsSink", "FeedbackMetricsSink", "InvalidMetricsSink",
           "MQTTConnectionMetrics", "Metrics", "ScoreMetricsSink", "SecurityAlertMetricsSink",
           "count_fleet", "counter_values", "inference_timer", "metrics", "prepare_flow",
           "prepare_security", "serve", "set_model_info"]  # fmt: skip

SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
INFERENCE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
                     0.05, 0.1, 0.25, 0.5, 1.0)  # fmt: skip


class ReadingLike(Protocol):
    """What the metrics read of a reading."""

    @property
    def sensor_id(self) -> str: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def received_at(self) -> float: ...
    @property
    def imputed(self) -> tuple[str, ...]: ...


class ScoredLike(Protocol):
    """What the score sink reads of a scored batch."""

    @property
    def readings(self) -> Sequence[ReadingLike]: ...
    @property
    def detector(self) -> str: ...
    @property
    def scores(self) -> np.ndarray: ...


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
    deadletters: Counter
    scores: BatchHistogram
    lag: BatchHistogram
    inference: Histogram
    active_sensors: Gauge
    mqtt_connected: Gauge
    mqtt_reconnects: Counter
    feedback: Counter
    fleet_published: Counter
    fleet_rejected: Counter
    fleet_priors: Counter
    security_alerts: Counter
    model: Info
    build: Info


_lock = threading.Lock()
_metrics: Metrics | None = None
_served: dict[str, tuple[str, int]] = {}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _create() -> Metrics:
    f, fd = ["flow"], ["flow", "detector"]
    m = Metrics(
        events=Counter("edgewatch_events", "Readings scored, by detector.", fd),
        invalid=Counter("edgewatch_invalid", "Messages refused by the parser, by reason.",
                        [*f, "reason"]),
        imputed=Counter("edgewatch_imputed", "Values filled in by imputation.", [*f, "field"]),
        alerts=Counter("edgewatch_alerts", "Alerts emitted.", [*fd, "severity"]),
        deadletters=Counter("edgewatch_deadletters", "Dead letters written to a dead-letter "
                            "destination (file or broker).", f),
        scores=BatchHistogram("edgewatch_anomaly_score", "Anomaly scores.", fd, SCORE_BUCKETS),
        lag=BatchHistogram("edgewatch_event_lag_seconds", "Receive time minus event time of "
                           "valid readings.", f, LAG_BUCKETS),
        inference=Histogram("edgewatch_inference_seconds", "Wall time of one model call "
                            "(one key's batch of readings).", fd, buckets=INFERENCE_BUCKETS),
        active_sensors=Gauge("edgewatch_active_sensors", "Sensors that sent a valid reading "
                             "within the idle timeout.", f),
        mqtt_connected=Gauge("edgewatch_mqtt_connected", "MQTT subscriber clients connected "
                             "to the broker (0: disconnected).", f),
        mqtt_reconnects=Counter("edgewatch_mqtt_reconnects", "MQTT subscriber connections "
                                "after the first.", f),
        feedback=Counter("edgewatch_feedback", "Operator feedback (true_positive / "
                         "false_positive) applied to a model.", [*f, "label"]),
        fleet_published=Counter("edgewatch_fleet_summaries_published", "Model summaries "
                                 "a node or the fleet aggregator published.", f),
        fleet_rejected=Counter("edgewatch_fleet_summaries_rejected", "Model summaries "
                               "refused (by a node or the aggregator), by reason.",
                               [*f, "reason"]),
        fleet_priors=Counter("edgewatch_fleet_priors", "New sensors whose model started "
                             "from the fleet prior.", f),
        security_alerts=Counter("edgewatch_security_alerts", "Security alerts, by reason "
                                "(the feature furthest from the device's baseline).",
                                ["reason"]),
        model=Info("edgewatch_model", "Detector version and parameters.", fd),
        build=Info("edgewatch_build", "edgewatch build."),
    )  # fmt: skip
    REGISTRY.register(m.scores)
    REGISTRY.register(m.lag)
    m.build.info({"version": _version("edgewatch"), "bytewax": _version("bytewax"),
                  "python": platform.python_version()})  # fmt: skip
    return m


def metrics() -> Metrics:
    """The process-wide metrics, created on first use."""
    global _metrics  # noqa: PLW0603 - one registry per process, made lazily
    with _lock:
        if _metrics is None:
            _metrics = _create()
        return _metrics


def prepare_flow(
    flow: str,
    *,
    detectors: Iterable[str],
    reasons: Iterable[str] = (),
    fields: Iterable[str] = (),
    severities: Iterable[str] = ("warning", "critical"),
    feedback_labels: Iterable[str] = (),
) -> None:
    """Create a flow's series at zero, so dashboards and ``rate()`` see them from the start."""
    m = metrics()
    for label in feedback_labels:
        m.feedback.labels(flow, label)
    m.lag.touch((flow,))
    m.deadletters.labels(flow)
    for det in detectors:
        m.events.labels(flow, det)
        m.scores.touch((flow, det))
        m.inference.labels(flow, det)
        for sev in severities:
            m.alerts.labels(flow, det, sev)
    for reason in reasons:
        m.invalid.labels(flow, reason)
    for name in fields:
        m.imputed.labels(flow, name)


def count_fleet(flow: str, what: str, reason: str = "") -> None:
    """Count a fleet summary ``published`` or ``rejected`` (with ``reason``), or a ``prior``."""
    m = metrics()
    if what == "rejected":
        m.fleet_rejected.labels(flow, reason).inc()
    else:
        (m.fleet_published if what == "published" else m.fleet_priors).labels(flow).inc()


def set_model_info(flow: str, detector: str, params: str, model_version: str = "") -> None:
    """Publish ``edgewatch_model_info{flow, detector, version, params} 1``.

    ``model_version`` defaults to edgewatch's own version (for models defined in code).
    """
    info = {"version": model_version or _version("edgewatch"), "params": params}
    metrics().model.labels(flow, detector).info(info)


def _count_scored(
    flow: str, active: _ActiveSensors | None, items: list[tuple[str, ScoredLike]]
) -> None:
    m = metrics()
    if active is not None:
        _observe_readings(flow, active, [r for _, s in items for r in s.readings])
    by_detector: dict[str, list[np.ndarray]] = {}
    for _, s in items:
        by_detector.setdefault(s.detector, []).append(s.scores)
    for det, arrays in by_detector.items():
        scores = np.concatenate(arrays)
        m.events.labels(flow, det).inc(len(scores))
        m.scores.observe_many((flow, det), scores)
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


def _count_deadletters(flow: str, items: list[object]) -> None:
    metrics().deadletters.labels(flow).inc(len(items))


class ScoreMetricsSink(CallbackSink[tuple[str, ScoredLike]]):
    """Counts scored readings, imputed values and the score distribution, by detector.

    Takes ``(key, Scored batch)`` items. With ``active_window_s`` it also observes the
    event lag (receive time − event time) of every reading and keeps the active-sensors
    gauge: a sensor is active while its last reading is younger than ``active_window_s``
    (give the flow's idle timeout, after which its state is dropped; 0: forever). Doing
    this per scored batch, not per reading, keeps it off the per-event path. The flow's
    gauge follows the sink built last.
    """

    def __init__(self, flow: str, active_window_s: float | None = None) -> None:
        active = None
        if active_window_s is not None:
            active = _ActiveSensors(active_window_s)
            metrics().active_sensors.labels(flow).set_function(active.count)
        super().__init__(partial(_count_scored, flow, active))


class AlertMetricsSink(CallbackSink[AlertLike]):
    """Counts alerts by detector and severity; takes alerts."""

    def __init__(self, flow: str) -> None:
        super().__init__(partial(_count_alerts, flow))


class InvalidMetricsSink(CallbackSink[InvalidLike]):
    """Counts messages the parser refused, by reason; takes invalid records."""

    def __init__(self, flow: str) -> None:
        super().__init__(partial(_count_invalid, flow))


class DeadLetterMetricsSink(CallbackSink[object]):
    """Counts dead letters on their way to a dead-letter destination; takes anything."""

    def __init__(self, flow: str) -> None:
        super().__init__(partial(_count_deadletters, flow))


class FeedbackMetricsSink(CallbackSink[str]):
    """Counts feedback applied to a model; takes its labels (a fixed, validated set)."""

    def __init__(self, flow: str) -> None:
        super().__init__(partial(_count_feedback, flow))


class SecurityAlertMetricsSink(CallbackSink[str]):
    """Counts security alerts by reason; takes their reasons (see :func:`prepare_security`)."""

    def __init__(self) -> None:
        super().__init__(_count_security)


def prepare_security(reasons: Iterable[str]) -> None:
    """Create ``edgewatch_security_alerts_total{reason}`` at zero for every reason."""
    m = metrics()
    for reason in reasons:
        m.security_alerts.labels(reason)


def _count_security(reasons: list[str]) -> None:
    m = metrics()
    for reason, n in Tally(reasons).items():
        m.security_alerts.labels(reason).inc(n)


def _count_feedback(flow: str, labels: list[str]) -> None:
    m = metrics()
    for label, n in Tally(labels).items():
        m.feedback.labels(flow, label).inc(n)


class _ActiveSensors:
    """Sensor ids with the wall time of their last reading; counted at scrape time."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.last: dict[str, float] = {}
        self.pruned = time.time()
        self.lock = threading.Lock()

    def count(self) -> float:
        if self.window_s > 0:
            cutoff = time.time() - self.window_s
            with self.lock:
                for key in [k for k, t in self.last.items() if t < cutoff]:
                    del self.last[key]
        return float(len(self.last))


_get_ts, _get_received = attrgetter("ts"), attrgetter("received_at")
_get_id = attrgetter("sensor_id")


def _observe_readings(flow: str, active: _ActiveSensors, items: list[ReadingLike]) -> None:
    n = len(items)
    stamps = list(map(_get_ts, items))
    epoch = {t: t.timestamp() for t in dict.fromkeys(stamps)}  # a fleet shares clock ticks
    received = np.fromiter(map(_get_received, items), np.float64, n)
    lag = received - np.fromiter(map(epoch.__getitem__, stamps), np.float64, n)
    metrics().lag.observe_many((flow,), lag[received > 0])  # 0: the source gave no time
    now = time.time()
    ids = dict.fromkeys(map(_get_id, items), now)
    with active.lock:
        active.last.update(ids)
    if active.window_s > 0 and now >= active.pruned + active.window_s:
        active.pruned = now  # forget silent sensors even when nobody scrapes
        active.count()


def inference_timer(flow: str, detector: str) -> Callable[[float], None]:
    """A hook taking the seconds one model call took (``edgewatch_inference_seconds``)."""
    return metrics().inference.labels(flow, detector).observe


class MQTTConnectionMetrics:
    """Hooks for an MQTT source: ``connected(reconnect)`` and ``disconnected()``.

    ``edgewatch_mqtt_connected{flow}`` counts the connected clients and
    ``edgewatch_mqtt_reconnects_total{flow}`` the connections after a client's first.
    """

    def __init__(self, flow: str) -> None:
        m = metrics()
        self._gauge = m.mqtt_connected.labels(flow)
        self._reconnects = m.mqtt_reconnects.labels(flow)
        self._gauge.set(0)

    def connected(self, reconnect: bool) -> None:
        """A client connected (``reconnect``: not for the first time)."""
        self._gauge.inc()
        if reconnect:
            self._reconnects.inc()

    def disconnected(self) -> None:
        """A connected client lost or closed its connection."""
        self._gauge.dec()


def serve(addr: str) -> tuple[str, int]:
    """Serve ``/metrics`` on ``HOST:PORT`` (``:PORT``: every interface), once per address.

    Returns the host and the port actually bound (``PORT`` 0 picks a free one). Raises
    ``OSError`` when the address is taken and ``ValueError`` when it is malformed.

    >>> serve("127.0.0.1:0") == serve("127.0.0.1:0")
    True
    """
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ":PORT" asks for every interface
    if not sep or not port.isdigit() or int(port) > 65535:
        msg = f"metrics address {addr!r} is not HOST:PORT or :PORT"
        raise ValueError(msg)
    with _lock:
        if addr not in _served:
            server, _ = start_http_server(int(port), host)
            _served[addr] = (host, int(server.server_port))
        return _served[addr]


def counter_values(counter: Counter) -> dict[tuple[str, ...], float]:
    """Current ``_total`` values of a labelled counter, by label values."""
    out: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out
