"""Security: device behaviour as intrusion signals, alerted like sensor faults.

Run it with ``python -m bytewax.run dataflows.security:flow`` (configured by
``EDGEWATCH_*`` variables, see :mod:`dataflows.settings`) or ``edgewatch run --flow
security``.

The flow::

    MQTT sensors/#  ─┐
    mosquitto log   ─┼─► observe (+ ticks) ─► windows per device ─► baseline rule ─► HST vote
    $SYS/# rates    ─┘   (device, features)   (fold_window,         (zscore, per      (k of 2,
    (or simulator)                             event time)           device)           fleet)
                                                                                         │
        alerts/security/<device> (MQTT), JSONL, audit log, metrics ◄──────── alerts ◄────┘

Every message a device writes, and every connect, disconnect, failed login, ACL denial
and protocol error the broker logs about it, is folded into a per-device tumbling window
(``security_window_s``, 60 s) of traffic and health features
(:data:`operators.device_features.FEATURES`): message count, bytes, payload size mean and
max, distinct topics, writes outside its own ``sensors/<id>/…``, inter-arrival jitter,
invalid-message ratio, field names never seen from it, reboots (``uptime`` going back),
mean ``rssi``, and the broker's counts. A device that goes silent gets empty windows. Each
window is scored against the device's own robust baseline and by fleet-wide Half-Space
Trees (:mod:`operators.security`); ``security_k`` votes make a ``kind: "security"`` alert
naming the device, the reason and the features that drove it with their baselines.

The default input (``source`` left at ``simulator``) is the labelled misbehaving-device
simulator (:mod:`sources.security_sim`): ``sim_sensors`` devices for ``sim_duration_s``
with ``security_misbehaviours`` injected. With ``source=mqtt`` the flow watches
``security_topics`` on the broker, follows ``security_broker_log`` (a mosquitto log file)
when set, and reads ``$SYS/#`` rates (``security_sys``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from dataflows.inputs import mqtt_settings, mqtt_source
from dataflows.monitoring import instrument_source, lazy_flow
from dataflows.outputs import add_audit, add_outputs
from dataflows.settings import ConfigError, Settings
from operators.device_features import device_windows
from operators.observe import (
    TICK,
    Observation,
    Ticker,
    observe_event,
    observe_message,
    observe_stats,
)
from operators.payloads import ParseLimits
from operators.records import Alert, Invalid
from operators.security import DETECTORS, REASONS, SecurityConfig, judge, vote
from sinks.memory import CallbackSink
from sinks.metrics import (
    SecurityAlertMetricsSink,
    metrics,
    prepare_flow,
    prepare_security,
    set_model_info,
)
from sources.broker_log import BrokerEvent, BrokerStats
from sources.security_sim import DeviceFleetConfig, DeviceFleetSource

__all__ = ["ALERT_TOPIC", "FLOW_NAME", "LATE", "build_flow", "describe", "fleet_config",
           "observer", "security_config"]  # fmt: skip

FLOW_NAME = "security"
ALERT_TOPIC = "alerts/security/{key}"
LATE = "late_event"
"""Dead-letter reason of an observation whose window had already closed."""
DETECTOR = "security"
_EXPIRE_WINDOWS = 60  # stop ticking a device silent for this many windows


def security_config(settings: Settings) -> SecurityConfig:
    """How device windows are judged, from the settings."""
    return SecurityConfig(z_threshold=settings.security_z, k=settings.security_k,
                          history=settings.security_history,
                          min_history=settings.security_min_history,
                          hst_threshold=settings.security_hst_threshold)  # fmt: skip


def fleet_config(settings: Settings) -> DeviceFleetConfig:
    """The simulated fleet the settings describe (the default input)."""
    return DeviceFleetConfig(devices=settings.sim_sensors, duration_s=settings.sim_duration_s,
                             seed=settings.sim_seed,
                             misbehaviours=settings.security_misbehaviours)  # fmt: skip


def describe(s: Settings) -> str:
    """What the flow reads and how it judges, for ``edgewatch run``'s first line."""
    how = f"{s.security_window_s:g} s windows, z {s.security_z:g}, {s.security_k} of 2 votes"
    if s.source == "simulator":
        return (f"the misbehaving-device simulator ({s.sim_sensors} devices, "
                f"{s.sim_duration_s / 3600:g} h, {s.security_misbehaviours} misbehaviours, "
                f"seed {s.sim_seed}), {how}")  # fmt: skip
    extra = [f"log {s.security_broker_log}"] if s.security_broker_log else []
    extra += ["$SYS"] if s.security_sys != "off" else []
    topics = " + ".join([", ".join(s.mqtt_prefix + t for t in s.security_topics), *extra])
    return f"MQTT {s.mqtt_url.split('@')[-1]} {topics}, {how}; Ctrl-C stops"


def _inputs(flow: Dataflow, settings: Settings, source: Source[Any] | None) -> Stream[Any]:
    """The flow's raw inputs: the given source, the simulator, or MQTT + broker signals."""
    if source is not None:
        return op.input("input", flow, source)
    if settings.source == "simulator":
        return op.input(
            "input", flow, DeviceFleetSource(fleet_config(settings), batch_size=settings.batch_size)
        )
    if settings.source != "mqtt":
        msg = f"the security flow reads mqtt or the simulator, not source={settings.source!r}"
        raise ConfigError(msg)
    from sources.broker_log import BrokerLogSource  # noqa: PLC0415 - live inputs only
    from sources.broker_sys import BrokerSysSource  # noqa: PLC0415

    watched = dataclasses.replace(settings, mqtt_topics=settings.security_topics)
    streams: list[Stream[Any]] = [
        op.input("input", flow, instrument_source(mqtt_source(watched, FLOW_NAME), FLOW_NAME))
    ]
    if settings.security_broker_log:
        streams.append(op.input("broker_log", flow, BrokerLogSource(settings.security_broker_log)))
    if settings.security_sys != "off":
        sys_source = BrokerSysSource(mqtt_settings(settings),
                                     client_id=f"edgewatch-{FLOW_NAME}-sys")  # fmt: skip
        streams.append(op.input("broker_sys", flow, sys_source))
    return op.merge("inputs", *streams) if len(streams) > 1 else streams[0]


def observer(settings: Settings) -> Callable[[list[Any]], list[tuple[str, Observation]]]:
    """Raw items (MQTT messages, broker events, ``$SYS`` samples) → keyed observations.

    A tick for every known device is added at each window boundary (silent devices).
    """
    prefix = settings.mqtt_prefix
    limits = ParseLimits(max_payload_bytes=settings.max_payload_bytes,
                         max_future_s=settings.max_future_s)  # fmt: skip
    ticker = Ticker(settings.security_window_s, _EXPIRE_WINDOWS)
    counted = metrics().events.labels(FLOW_NAME, DETECTOR)

    def observe(batch: list[Any]) -> list[tuple[str, Observation]]:
        counted.inc(len(batch))
        out = []
        for item in batch:
            if type(item) is tuple:
                out.append(observe_message(item, prefix, limits))
            elif isinstance(item, BrokerEvent):
                seen = observe_event(item.ts, item.kind, item.client_id, item.address)
                if seen is not None:
                    out.append(seen)
            elif isinstance(item, BrokerStats):
                out.append(observe_stats(item.ts, item.values))
        return ticker(out)

    return observe


def _late(item: tuple[str, tuple[int, Observation]]) -> Invalid | None:
    device, (_, o) = item
    if o[2] == TICK:
        return None  # a tick behind a live device's clock: nothing was lost
    detail = f"observation of {device} at {o[1]:.3f} came after its window closed"
    return Invalid(LATE, detail, {"device": device, "ts": o[1], "topic": o[4]}, FLOW_NAME, o[1])


def build_flow(
    settings: Settings,
    *,
    source: Source[Any] | None = None,
    on_alerts: Callable[[list[Alert]], None] | None = None,
) -> Dataflow:
    """Build the security dataflow.

    Args:
        settings: Source, window, detector and output settings.
        source: Read raw items (MQTT message tuples, ``BrokerEvent``, ``BrokerStats``)
            from this instead of the inputs the settings name.
        on_alerts: Also hand every batch of alerts to this callable.

    Returns:
        The dataflow, ready for ``bytewax.run``.
    """
    settings.validate()
    config = security_config(settings)
    replay = source is not None or settings.source == "simulator"
    length = timedelta(seconds=settings.security_window_s)
    lateness = timedelta(seconds=0 if replay else settings.security_lateness_s)
    idle = settings.idle_timeout

    flow = Dataflow(FLOW_NAME)
    raw = _inputs(flow, settings, source)
    observed = op.flat_map_batch("observe", raw, observer(settings))
    windows, late = device_windows("windows", observed, length, lateness, live=not replay)
    judged = judge("judge", windows, config, idle)
    alerts = vote("vote", judged, config, FLOW_NAME, settings.security_window_s)
    invalid = op.filter_map("late", late, _late)
    add_outputs(settings, FLOW_NAME, alerts, invalid, alert_topic=ALERT_TOPIC)
    add_audit(settings, alerts, {DETECTOR: _version(config)})
    reasons = op.map("reason", alerts, _reason)
    op.output("security_metrics", reasons, SecurityAlertMetricsSink())

    prepare_flow(FLOW_NAME, detectors=[DETECTOR], reasons=[LATE])
    prepare_security(REASONS)
    set_model_info(FLOW_NAME, DETECTOR, _params(settings, config), _version(config))
    if on_alerts is not None:
        op.output("alerts_cb", alerts, CallbackSink(on_alerts))
    return flow


def _reason(a: Alert) -> str:
    return str(a.details.get("reason", ""))


def _version(c: SecurityConfig) -> str:
    return f"security-1+{'+'.join(DETECTORS)}"


def _params(s: Settings, c: SecurityConfig) -> str:
    return (f"window_s={s.security_window_s:g} z={c.z_threshold:g} k={c.k} "
            f"history={c.history} min_history={c.min_history} hst_threshold={c.hst_threshold:g} "
            f"hst={c.hst_trees}x{c.hst_height}/{c.hst_window} seed={c.seed}")  # fmt: skip


__getattr__ = lazy_flow(__name__, build_flow)
