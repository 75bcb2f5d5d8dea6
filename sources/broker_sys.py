"""Broker-wide figures from mosquitto's ``$SYS`` tree, as :class:`BrokerStats` samples.

mosquitto publishes its ``$SYS/broker/…`` topics every ``sys_interval`` seconds (10 by
default; 2.0.11 compares strictly, so really every ``sys_interval + 1``), all at once
and only those whose value changed since the last time, with
``$SYS/broker/uptime`` (``"42 seconds"``) first; a new subscriber first gets all of them
retained. So :class:`BrokerSysSource` keeps the latest value of every topic, and
closes a sample when the next update starts (its uptime arrives) or when the update
has been quiet for ``quiet_s``. Each sample carries the gauges ``clients_connected``
(this source's own connection included) and ``clients_total``, and rates from counter
differences over the broker's uptime between two samples (our receive times if the
uptime did not advance): ``messages_received_per_s`` and ``messages_sent_per_s`` (all
MQTT packets), ``bytes_received_per_s``, ``bytes_sent_per_s`` and
``publish_dropped_per_s`` (``$SYS/broker/publish/messages/dropped``: messages dropped
because a client's queue was full). The first sample, and the first after a broker
restart (its uptime went back), have only the gauges.

It subscribes to those topics only, not ``$SYS/#``: that also holds the load averages
and, with ``log_dest topic``, the broker's log, which would then flow through it.
The broker's ACL must let the user read them (``topic read $SYS/#``): mosquitto
2.0.11 grants the subscription anyway and then sends nothing, so no sample comes.

>>> s = _Sampler()
>>> for name, value, at in [("uptime_s", 10, 0.0), ("messages_received", 100, 0.0),
...                         ("uptime_s", 12, 2.1), ("messages_received", 160, 2.1)]:
...     _ = s.add(name, value, at)
>>> s.close().values
{'messages_received_per_s': 30.0}
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import paho.mqtt.client as mqtt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from paho.mqtt.reasoncodes import ReasonCode

from sources._mqtt_client import MQTTClient, MQTTConnectError, MQTTSettings
from sources.broker_log import BrokerStats

__all__ = ["SYS_TOPICS", "BrokerSysSource"]

logger = logging.getLogger(__name__)

SYS_TOPICS = {
    "$SYS/broker/uptime": "uptime_s",
    "$SYS/broker/clients/connected": "clients_connected",
    "$SYS/broker/clients/total": "clients_total",
    "$SYS/broker/messages/received": "messages_received",
    "$SYS/broker/messages/sent": "messages_sent",
    "$SYS/broker/bytes/received": "bytes_received",
    "$SYS/broker/bytes/sent": "bytes_sent",
    "$SYS/broker/publish/messages/dropped": "publish_dropped",
}
"""The topics subscribed to, and the name of each figure."""
_GAUGES = ("clients_connected", "clients_total")
_COUNTERS = ("messages_received", "messages_sent", "bytes_received", "bytes_sent",
             "publish_dropped")  # fmt: skip
_WAKE = timedelta(milliseconds=50)


class _Sampler:
    """Folds ``$SYS`` values into samples; no threads, no clock of its own."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}
        self.started: float | None = None  # receive time of the open update's first value
        self.prev: tuple[float, float, dict[str, float]] | None = None  # uptime, at, counters

    def add(self, name: str, value: float, at: float) -> BrokerStats | None:
        """Take one value; the previous sample if this one starts a new update."""
        done = self.close() if name == "uptime_s" else None
        if self.started is None:
            self.started = at
        self.latest[name] = value
        return done

    def close(self) -> BrokerStats | None:
        """The open update as a sample (``None`` if nothing is open)."""
        at, latest = self.started, self.latest
        if at is None:
            return None
        self.started = None
        uptime = latest.get("uptime_s", 0.0)
        values = {g: latest[g] for g in _GAUGES if g in latest}
        counters = {c: latest[c] for c in _COUNTERS if c in latest}
        if self.prev is not None and uptime >= self.prev[0]:
            prev_uptime, prev_at, prev = self.prev
            dt = uptime - prev_uptime if uptime > prev_uptime else at - prev_at
            for c, v in counters.items():
                if c in prev and v >= prev[c] and dt > 0:
                    values[f"{c}_per_s"] = (v - prev[c]) / dt
        self.prev = (uptime, at, counters)
        return BrokerStats(at, values)


def _number(payload: bytes) -> float | None:
    """The leading number of a ``$SYS`` payload (``b"42 seconds"`` → 42.0)."""
    try:
        return float(payload.split(maxsplit=1)[0])
    except (IndexError, ValueError):
        return None


class _SysPartition(StatefulSourcePartition[BrokerStats, None]):
    def __init__(self, src: BrokerSysSource) -> None:
        self._src = src
        self._queue: deque[tuple[str, bytes, float, float]] = deque()
        self._sampler = _Sampler()
        self._client: MQTTClient | None = None
        self._connector: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = threading.Event()
        self._last_value = time.monotonic()
        self._emitted = 0
        self.dropped = 0  # values the full queue had no room for

    # -- network thread ----------------------------------------------------------------
    def _connect(self) -> None:
        src = self._src
        try:
            client = src.settings.connect(
                src.client_id, persistent=False, setup=self._setup,
                on_connected=self._on_connected, on_raw_message=self._on_value,
            )  # fmt: skip
        except (MQTTConnectError, OSError, ValueError) as exc:
            self._error = exc
            return
        if self._closed.is_set():
            client.disconnect()
            client.loop_stop()

    def _setup(self, client: mqtt.Client) -> None:
        self._client = cast(MQTTClient, client)  # what MQTTSettings.connect makes
        client.on_subscribe = self._on_subscribe

    def _on_connected(self, client: mqtt.Client, session_present: bool) -> None:
        client.subscribe([(topic, 0) for topic in SYS_TOPICS])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Any) -> None:  # fmt: skip
        if all(rc.is_failure for rc in reason_codes):
            reason = f"subscription to $SYS refused ({reason_codes[0]}): check the ACL"
            self._error = MQTTConnectError(self._src.settings.url, reason)

    def _on_value(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if len(self._queue) >= self._src.queue_size:
            self.dropped += 1
            return
        self._queue.append((topic, payload, time.time(), time.monotonic()))

    # -- worker thread -----------------------------------------------------------------
    def next_batch(self) -> list[BrokerStats]:
        if self._connector is None:
            self._connector = threading.Thread(target=self._connect, daemon=True,
                                               name=f"sys-{self._src.client_id}")  # fmt: skip
            self._connector.start()
        if self._error is not None:
            raise self._error
        src, sampler, queue, out = self._src, self._sampler, self._queue, []
        now = time.monotonic()
        while queue:
            topic, payload, at, self._last_value = queue.popleft()
            name, value = SYS_TOPICS.get(topic), _number(payload)
            if name and value is not None and (sample := sampler.add(name, value, at)):
                out.append(sample)
        if now - self._last_value >= src.quiet_s and (sample := sampler.close()):
            out.append(sample)
        if src.max_samples is not None:
            out = out[: src.max_samples - self._emitted]
        self._emitted += len(out)
        if (src.max_samples is not None and self._emitted >= src.max_samples) or (
            src.idle_stop_s is not None and now - self._last_value >= src.idle_stop_s
        ):
            raise StopIteration
        return out

    def next_awake(self) -> datetime | None:
        return datetime.now(timezone.utc) + _WAKE

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._closed.set()
        if self.dropped:
            logger.warning("%s: %d $SYS values dropped (queue full)", self._src.client_id,
                           self.dropped)  # fmt: skip
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()


@dataclass(frozen=True)
class BrokerSysSource(FixedPartitionedSource[BrokerStats, None]):
    """One :class:`BrokerStats` per ``$SYS`` update of a mosquitto broker (module docstring).

    The paho client (connected with :meth:`MQTTSettings.connect`, so with its retries
    and reconnects) runs its own thread, started on the first ``next_batch``, and
    queues values; ``next_batch`` folds them into samples without blocking.

    Parallelism: one partition, one connection.

    Delivery: at-most-once. Nothing is resumed: updates published while the flow is
    down or disconnected are gone, and the first sample after a resume has only gauges
    (rates across a reconnect are right: counters are cumulative).

    Attributes:
        settings: How to reach the broker.
        client_id: The MQTT client id (a clean session).
        quiet_s: Close a sample when no value has arrived for this long.
        queue_size: Values held for the worker at most (more are counted and dropped).
        max_samples: Stop after this many samples (tests).
        idle_stop_s: Stop after this long without a value (tests).
    """

    settings: MQTTSettings
    client_id: str = "edgewatch-sys"
    quiet_s: float = 0.25
    queue_size: int = 10_000
    max_samples: int | None = None
    idle_stop_s: float | None = None

    def list_parts(self) -> list[str]:
        """The one partition, ``broker-sys``."""
        return ["broker-sys"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SysPartition:
        """The sampler; it connects on its first batch."""
        return _SysPartition(self)
