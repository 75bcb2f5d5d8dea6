"""MQTT output: publish ``(key, payload)`` pairs to ``<prefix><topic>``, ``{key}`` filled in.

The sink knows transport, not records: the flow maps ``Alert`` to
``(alert.sensor_id, alert.to_json())`` for ``MQTTSink(settings)`` (``alerts/<sensor_id>``),
and ``Invalid`` to ``(flow, invalid.to_json(flow))`` for
``MQTTSink(settings, topic="deadletter/{key}")``.

The connection settings are a ``sources.mqtt.MQTTSettings`` handed over by the dataflow
(``sinks`` imports nothing project-internal; :class:`MQTTConnector` is what is used of
it), so the source and the sink share one implementation of URLs, credentials, TLS and
connect retries.

Parallelism: one connection per worker, client id ``<client_id>-w<worker index>``; the
default client id names the host and process, so independent processes never collide.
Delivery: at-least-once with QoS 1 (the default) — ``write_batch`` returns only when
the broker has acknowledged (PUBACK) every message of the batch, and raises
:class:`MQTTPublishError` rather than dropping anything; after a crash the resumed flow
may publish the last epoch's messages again (alerts carry a stable ``alert_id`` for
consumers to dedupe on). QoS 0 is at-most-once.

With ``node`` set, the sink keeps a retained ``<prefix>status/<node>`` topic:
``online`` on every (re)connect, ``offline`` on a clean close, and ``offline`` as the
last will, which the broker publishes if the process dies (``-w<i>`` is appended to the
node with several workers). Each worker connects when Bytewax builds its partition, so
bad credentials or an unreachable broker stop the flow at start, with the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import string
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["OFFLINE", "ONLINE", "KeyedPayload", "MQTTConnector", "MQTTPublishError", "MQTTSink"]

logger = logging.getLogger(__name__)

KeyedPayload = tuple[str, bytes]
"""What the sink takes: ``(key, payload)``; the key fills ``{key}`` in the topic."""
ONLINE, OFFLINE = b"online", b"offline"
_NOT_IN_KEYS = frozenset("/+#\0")


class MQTTConnector(Protocol):
    """What the sink needs from connection settings (``sources.mqtt.MQTTSettings``)."""

    @property
    def url(self) -> str:
        """The broker URL without the password."""
        ...

    def connect(
        self,
        client_id: str,
        *,
        persistent: bool,
        setup: Callable[[mqtt.Client], None] | None = None,
        on_connected: Callable[[mqtt.Client, bool], None] | None = None,
    ) -> mqtt.Client:
        """A connected client with its network thread running; raises if it cannot."""
        ...


class MQTTPublishError(RuntimeError):
    """The broker did not acknowledge a batch in time, or refused part of it."""


class _MQTTSinkPartition(StatelessSinkPartition[KeyedPayload]):
    def __init__(self, sink: MQTTSink, client_id: str, status: str | None) -> None:
        self._sink, self._client_id, self._status = sink, client_id, status
        self._refused: dict[int, str] = {}  # mid -> reason, from v5 PUBACKs
        self._refused_lock = threading.Lock()
        self.published = 0
        self._client = sink.settings.connect(
            client_id, persistent=False, setup=self._setup, on_connected=self._on_connected
        )

    def _setup(self, client: mqtt.Client) -> None:
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(self._sink.max_inflight)
        if self._status is not None:
            client.will_set(self._status, OFFLINE, qos=1, retain=True)

    def _on_connected(self, client: mqtt.Client, session_present: bool) -> None:
        if self._status is not None:
            client.publish(self._status, ONLINE, qos=1, retain=True)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                    properties: Any) -> None:  # fmt: skip
        if rc.is_failure:
            with self._refused_lock:
                self._refused[mid] = str(rc)

    def _publish_window(self, client: mqtt.Client, items: list[KeyedPayload]) -> None:
        sink = self._sink
        infos = []
        for key, payload in items:
            info = client.publish(sink.topic_for(key), payload, qos=sink.qos, retain=sink.retain)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                info.rc = mqtt.MQTT_ERR_SUCCESS  # queued: paho sends it after reconnecting
            elif info.rc != mqtt.MQTT_ERR_SUCCESS:
                msg = f"publish to {sink.settings.url} failed: {mqtt.error_string(info.rc)}"
                raise MQTTPublishError(msg)
            infos.append(info)
        deadline = time.monotonic() + sink.publish_timeout_s
        for info in infos:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.0))
        missing = sum(not info.is_published() for info in infos)
        if missing:
            msg = (f"{missing} of {len(infos)} messages not acknowledged by "
                   f"{sink.settings.url} within {sink.publish_timeout_s:g} s")  # fmt: skip
            raise MQTTPublishError(msg)
        with self._refused_lock:
            refused = [self._refused.pop(i.mid) for i in infos if i.mid in self._refused]
        if refused:
            msg = f"{sink.settings.url} refused {len(refused)} messages: {refused[0]}"
            raise MQTTPublishError(msg)
        self.published += len(infos)

    def write_batch(self, items: list[KeyedPayload]) -> None:
        if not items:
            return
        with self._refused_lock:  # anything left over belongs to no batch in flight
            self._refused.clear()
        window = self._sink.max_inflight
        for start in range(0, len(items), window):
            self._publish_window(self._client, items[start : start + window])

    def close(self) -> None:
        client = self._client
        if self._status is not None:
            info = client.publish(self._status, OFFLINE, qos=1, retain=True)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                info.wait_for_publish(self._sink.publish_timeout_s)
        client.disconnect()
        client.loop_stop()
        logger.info("%s closed after %d messages", self._client_id, self.published)


class MQTTSink(DynamicSink[KeyedPayload]):
    """Publish ``(key, payload)`` items to ``prefix + topic.format(key=key)``.

    Args:
        settings: Broker connection settings (a ``sources.mqtt.MQTTSettings``).
        topic: Topic template with one ``{key}`` field.
        prefix: Prepended to the topic and to the status topic.
        qos: 1 (at-least-once, the default) or 0.
        retain: Publish retained messages.
        client_id: Client id base (``-w<worker>`` is appended); default
            ``edgewatch-sink-<host>-<pid>``.
        node: Keep a retained ``status/<node>`` online/offline topic; ``None``: none.
        max_inflight: Most unacknowledged messages in flight per connection.
        publish_timeout_s: How long a window of ``max_inflight`` messages may wait for
            its acknowledgements before :class:`MQTTPublishError`.
    """

    def __init__(
        self,
        settings: MQTTConnector,
        *,
        topic: str = "alerts/{key}",
        prefix: str = "",
        qos: int = 1,
        retain: bool = False,
        client_id: str | None = None,
        node: str | None = None,
        max_inflight: int = 1000,
        publish_timeout_s: float = 30.0,
    ) -> None:
        self.settings, self.topic, self.prefix = settings, topic, prefix
        self.qos, self.retain, self.client_id, self.node = qos, retain, client_id, node
        self.max_inflight, self.publish_timeout_s = max_inflight, publish_timeout_s
        fields = [f for _, f, _, _ in string.Formatter().parse(topic) if f is not None]
        problems = [
            (fields and set(fields) == {"key"}, f"topic {topic!r} needs {{key}}, no other field"),
            (not set(prefix + topic) & set("+#\0") and not (prefix + topic).startswith("$"),
             f"topic {prefix + topic!r} must not contain + # NUL or start with $"),
            (qos in (0, 1), f"qos must be 0 or 1, not {qos!r}"),
            (node is None or (node != "" and not set(node) & _NOT_IN_KEYS), f"bad node {node!r}"),
            (max_inflight >= 1 and publish_timeout_s > 0, "max_inflight, timeout must be > 0"),
        ]  # fmt: skip
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)

    def topic_for(self, key: str) -> str:
        """The topic for one key; ``ValueError`` for a key that would change the topic.

        >>> MQTTSink(None, prefix="site1/").topic_for("a1")  # type: ignore[arg-type]
        'site1/alerts/a1'
        """
        if not key or not isinstance(key, str) or not _NOT_IN_KEYS.isdisjoint(key):
            msg = f"MQTT topic key {key!r} must be a non-empty str without / + # or NUL"
            raise ValueError(msg)
        return self.prefix + self.topic.format(key=key)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MQTTSinkPartition:
        """Build the worker's partition and connect it (raises if the broker refuses)."""
        base = self.client_id or f"edgewatch-sink-{socket.gethostname()}-{os.getpid()}"
        status = None
        if self.node is not None:
            suffix = f"-w{worker_index}" if worker_count > 1 else ""
            status = f"{self.prefix}status/{self.node}{suffix}"
        return _MQTTSinkPartition(self, f"{base}-w{worker_index}", status)
