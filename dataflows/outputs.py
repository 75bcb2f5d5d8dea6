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
  the flow runs and ``offline`` after it stopped or died (last will).
"""

from __future__ import annotations

import socket

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream

from dataflows.inputs import mqtt_settings
from dataflows.settings import Settings
from operators.records import Alert, Invalid, Scored
from sinks.jsonl import JSONLinesSink
from sinks.metrics import AlertMetricsSink, DeadLetterMetricsSink, InvalidMetricsSink
from sinks.mqtt import KeyedPayload, MQTTSink

__all__ = ["add_outputs", "add_scored_output", "scored_lines"]


def add_outputs(
    settings: Settings, flow_name: str, alerts: Stream[Alert], invalid: Stream[Invalid]
) -> None:
    """Attach the alert and dead-letter sinks the settings ask for to ``alerts``/``invalid``."""
    if settings.alerts_path:
        lines = op.map("alert_json", alerts, Alert.to_json)
        op.output("alerts_out", lines, JSONLinesSink(settings.alerts_path))
    op.output("alert_metrics", alerts, AlertMetricsSink(flow_name))

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
        sink("alerts/{key}", "alerts", node),
    )
    op.output(
        "deadletter_mqtt",
        op.map("deadletter_mqtt_item", dead, keyed_dead),
        sink("deadletter/{key}", "deadletter"),
    )


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
