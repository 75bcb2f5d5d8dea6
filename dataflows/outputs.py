"""Where a flow's alerts and dead letters go, chosen by configuration.

Every flow writes alerts and invalid input the same way:

- alerts as JSON lines to ``alerts_path`` (``-`` is stdout, empty: none), and to the
  broker as ``<prefix>alerts/<sensor_id>`` when :attr:`Settings.publishes_mqtt`;
- dead letters (reason + original payload) as JSON lines to ``deadletter_path`` and to
  ``<prefix>deadletter/<flow>`` on the broker;
- counts to the Prometheus metrics (alerts, invalid messages by reason, dead letters
  written to a destination);
- optionally every scored reading as a ``{"sensor_id", "ts", "score"}`` JSON line to
  ``scored_path`` (:func:`add_scored_output`), to count and audit what was processed;
- with MQTT outputs, a retained ``<prefix>status/<node>`` that reads ``online`` while
  the flow runs and ``offline`` after it stopped or died (last will);
- fleet incidents, when a flow has them, with the alerts (JSON lines, metrics) and to
  ``<prefix>alerts/fleet/<group>`` on the broker;
- optionally an audit log (:func:`add_audit`): every alert, incident and other audited
  record as a JSON line with where the alerts went, in size-rotated files.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream

from dataflows.inputs import mqtt_settings
from dataflows.settings import Settings
from operators.correlate import INCIDENT_TOPIC, keyed_incident
from operators.records import Alert, Invalid, Scored
from sinks.audit import AuditedAlert, AuditSink
from sinks.jsonl import JSONLinesSink
from sinks.metrics import AlertMetricsSink, DeadLetterMetricsSink, InvalidMetricsSink
from sinks.mqtt import KeyedPayload, MQTTSink

__all__ = ["add_audit", "add_outputs", "add_scored_output", "delivered_to", "scored_lines"]


def delivered_to(settings: Settings) -> list[str]:
    """Names of the destinations alerts go to (``jsonl``, ``mqtt``), for the audit log."""
    return [name for name, on in (("jsonl", bool(settings.alerts_path)),
                                  ("mqtt", settings.publishes_mqtt)) if on]  # fmt: skip


def add_audit(
    settings: Settings, records: Stream[AuditedAlert], model_versions: Mapping[str, str]
) -> None:
    """Write ``records`` to the audit log at ``settings.audit_path``, if set."""
    if settings.audit_path:
        sink = AuditSink(settings.audit_path, delivered_to=delivered_to(settings),
                         model_versions=model_versions)  # fmt: skip
        op.output("audit_out", records, sink)


def add_outputs(
    settings: Settings,
    flow_name: str,
    alerts: Stream[Alert],
    invalid: Stream[Invalid],
    incidents: Stream[Alert] | None = None,
    alert_topic: str = "alerts/{key}",
) -> None:
    """Attach the alert and dead-letter sinks the settings ask for to ``alerts``/``invalid``.

    ``incidents`` (fleet incidents) join the alerts' JSON lines and metrics, and on the
    broker go to ``alerts/fleet/<group>``. On the broker an alert goes to ``alert_topic``
    with ``{key}`` its sensor id.
    """
    every = alerts if incidents is None else op.merge("alerts_incidents", alerts, incidents)
    if settings.alerts_path:
        lines = op.map("alert_json", every, Alert.to_json)
        op.output("alerts_out", lines, JSONLinesSink(settings.alerts_path))
    op.output("alert_metrics", every, AlertMetricsSink(flow_name))

    def dead_line(inv: Invalid) -> bytes:
        return inv.to_json(flow_name)

    dead = op.map("deadletter_json", invalid, dead_line)
    if settings.deadletter_path:
        op.output("deadletter_out", dead, JSONLinesSink(settings.deadletter_path))
    op.output("invalid_metrics", invalid, InvalidMetricsSink(flow_name))
    if settings.deadletter_path or settings.publishes_mqtt:
        op.output("deadletter_metrics", dead, DeadLetterMetricsSink(flow_name))
    if not settings.publishes_mqtt:
        return

    broker = mqtt_settings(settings)
    node = settings.mqtt_node or socket.gethostname()
    base = f"edgewatch-{flow_name}-{node}-{settings.mqtt_process_id or 'p'}"

    def sink(topic: str, role: str, status_node: str | None = None) -> MQTTSink:
        return MQTTSink(broker, topic=topic, prefix=settings.mqtt_prefix,
                        qos=settings.mqtt_alert_qos, client_id=f"{base}-{role}",
                        node=status_node)  # fmt: skip

    def keyed_alert(a: Alert) -> KeyedPayload:
        return (a.sensor_id, a.to_json())

    def keyed_dead(line: bytes) -> KeyedPayload:
        return (flow_name, line)

    op.output(
        "alerts_mqtt",
        op.map("alert_mqtt", alerts, keyed_alert),
        sink(alert_topic, "alerts", node),
    )
    op.output(
        "deadletter_mqtt",
        op.map("deadletter_mqtt_item", dead, keyed_dead),
        sink("deadletter/{key}", "deadletter"),
    )
    if incidents is not None:
        keyed = op.map("incident_mqtt", incidents, keyed_incident)
        op.output("incidents_mqtt", keyed, sink(INCIDENT_TOPIC, "incidents"))


def scored_lines(item: tuple[str, Scored]) -> list[bytes]:
    """One JSON line per reading of a scored batch (``ts`` in epoch seconds).

    >>> from datetime import datetime, timezone
    >>> import numpy as np
    >>> from operators.records import Reading
    >>> r = Reading("7", datetime(2024, 4, 1, tzinfo=timezone.utc), {"pm": 1.0}, "mqtt")
    >>> scored_lines(("7", Scored((r,), "hst", np.array([0.25]))))
    [b'{"sensor_id":"7","ts":1711929600.0,"score":0.25}']
    """
    _, s = item
    return [orjson.dumps({"sensor_id": r.sensor_id, "ts": r.ts.timestamp(), "score": float(v)})
            for r, v in zip(s.readings, s.scores.tolist(), strict=True)]  # fmt: skip


def add_scored_output(settings: Settings, scored: Stream[tuple[str, Scored]]) -> None:
    """Write every scored reading to ``settings.scored_path`` as JSON lines, if set."""
    if settings.scored_path:
        lines = op.flat_map("scored_json", scored, scored_lines)
        op.output("scored_out", lines, JSONLinesSink(settings.scored_path))
