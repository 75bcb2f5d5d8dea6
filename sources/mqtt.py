"""MQTT input: messages from a broker as ``(topic, payload, received_at)``.

:class:`MQTTSettings` says how to reach a broker (``mqtt://`` or ``mqtts://`` URL,
credentials, TLS, MQTT v5 or v3.1.1, keepalive, reconnect backoff) and opens connected
paho clients; :class:`MQTTSource` subscribes with them. ``sinks.mqtt`` takes the same
settings object (``sources`` and ``sinks`` never import each other; the dataflow hands
it over), so the connection code exists once.

Acknowledgements and Bytewax epochs
-----------------------------------
The client acknowledges (PUBACK) a QoS 1 message only after the Bytewax epoch that
emitted it is complete, so a message is not taken from the broker before the dataflow
has finished with it. Bytewax 0.21 has no "epoch done" callback for sources, but its
input operator gives an equivalent signal: it calls ``snapshot()`` when an epoch ends,
and it calls the partition again (``next_batch`` or ``snapshot``) only once the
dataflow's probe has passed that epoch, i.e. every output of the epoch has been written
and, with recovery on, its snapshots stored. So ``snapshot()`` seals the messages
emitted during the ending epoch, and the *next* call to the partition acknowledges them.
``tests/integration/test_mqtt_source.py`` checks this ordering against a real sink.

Limits of the guarantee: acknowledgements are sent over the connection that delivered
the message; after a reconnect the broker redelivers what was not acknowledged
(duplicates, identical payloads), and messages still in flight when a *non-persistent*
session ends are lost. QoS 2 subscriptions are accepted, but paho hands a QoS 2 message
over only after the broker has released it (PUBREL), so a crash loses it: use QoS 1.
Restoring the Bytewax recovery store from an older backup does not bring back messages
acknowledged since.

Redeliveries the dataflow already has
-------------------------------------
A message can reach the dataflow and still be sent again: its acknowledgement was
skipped because the connection dropped (a broker restart), or the process died after
the epoch holding it completed but before the acknowledgement left (with recovery on,
Bytewax resumes from that epoch's snapshots, which have learned the message). Scoring
it again would teach the per-sensor models a reading twice and shift every later score.
So the partition remembers the packet ids of the messages it emitted and has not
acknowledged, and keeps them in its snapshot; a QoS 1 message that the broker marks as
sent again (DUP) with one of those ids is not emitted, only acknowledged with the
current epoch. Brokers send such redeliveries before anything new after a reconnect, so
the ids of earlier connections are forgotten at the first new message.

Throughput and the broker
-------------------------
Unacknowledged messages are held for up to an epoch, so with QoS 1 a partition takes
at most about ``queue_size / epoch_interval`` messages per second from a broker that
enforces the window (the defaults, 30,000 and 1 s, allow 30,000/s; Bytewax's own
default epoch of 10 s would allow a tenth of that). The window is sent as the v5
Receive Maximum, which mosquitto 2.0 uses instead of its ``max_inflight_messages``;
a v3.1.1 client gets ``max_inflight_messages`` (mosquitto's default, 20, means 20
messages per epoch): set it to ``queue_size`` or 0 for v3.1.1. (mosquitto 2.0.11 keeps
the window only until the first acknowledgements, then sends whatever it has queued;
the queue bound below then holds the rest back through TCP.) For QoS 0 mosquitto's
``max_queued_messages`` (default 1000) also bounds the packets it holds for a client
that reads slower than they arrive, and it drops the excess silently; raise it well
above the largest burst. ``set_tcp_nodelay true`` saves the flow's PUBACK-waiting
alert sink 40 ms stalls (Nagle's algorithm meeting delayed TCP acknowledgements).

On the client side paho's per-message cost is the bottleneck, so QoS 0/1 messages take
the lean path of :class:`sources._paho.MQTTClient` (no ``MQTTMessage`` per
message), reach the worker through a ``deque`` (no lock per message), and are
acknowledged with one write of PUBACKs per epoch. When the queue is empty the worker
polls again after 1 ms, doubling to 16 ms while nothing arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import paho.mqtt.client as mqtt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from paho.mqtt.reasoncodes import ReasonCode

from sources._mqtt_client import (
    PASSWORD_ENV,
    USERNAME_ENV,
    MQTTClient,
    MQTTConnectError,
    MQTTSettings,
    validate_topic_filter,
)

__all__ = [
    "PASSWORD_ENV",
    "USERNAME_ENV",
    "MQTTConnectError",
    "MQTTSettings",
    "MQTTSource",
    "MQTTSourceStats",
    "validate_topic_filter",
]

logger = logging.getLogger(__name__)

MQTTMessage = tuple[str, bytes, float]
_Ack = tuple[int, int, int]  # generation, mid, qos
_Delivery = tuple[str, bytes, float, _Ack | None, bool]  # topic, payload, at, ack, dup
_RESUMED = -1  # the generation of packet ids taken from a snapshot
_WAKE_MIN, _WAKE_MAX = timedelta(milliseconds=1), timedelta(milliseconds=16)
_PUT_WAIT_S = 0.1


@dataclass
class MQTTSourceStats:
    """Counters of one partition, for metrics. Each field has a single writer thread.

    Attributes:
        received: Messages the network thread took from the broker.
        emitted: Messages handed to the dataflow.
        acked: QoS 1/2 messages acknowledged to the broker.
        ack_skipped: Acknowledgements not sent because the connection that delivered
            the message is gone (the broker redelivers those).
        connects: Successful connections (the first one included).
        subscribed: Subscriptions the broker confirmed (one SUBACK per connection).
        queue_full_waits: Times the network thread found the queue full and waited
            (at most 0.1 s each) for the dataflow to take messages.
        redelivered: Messages sent again (DUP) that the dataflow already had: not
            emitted, only acknowledged (module docstring).
    """

    received: int = 0
    emitted: int = 0
    acked: int = 0
    ack_skipped: int = 0
    connects: int = 0
    subscribed: int = 0
    queue_full_waits: int = 0
    redelivered: int = 0

    @property
    def reconnects(self) -> int:
        """Successful connections after the first."""
        return max(self.connects - 1, 0)


class _MQTTPartition(StatefulSourcePartition[MQTTMessage, bytes]):
    def __init__(
        self, src: MQTTSource, client_id: str, stats: MQTTSourceStats, resume: bytes | None
    ) -> None:
        self._src, self._client_id, self.stats = src, client_id, stats
        # The handoff: the network thread appends, the worker pops (both atomic under the
        # GIL); the bound is kept by the network thread waiting on ``_space``.
        self._queue: deque[_Delivery] = deque()
        self._space = threading.Event()
        self._lock = threading.Lock()  # orders acks against connection changes
        self._gen = 0  # connection generation: bumped on every connect and disconnect
        self._client: MQTTClient | None = None
        self._connector: threading.Thread | None = None
        self._ready = False
        self._error: Exception | None = None
        self._closed = threading.Event()
        self._epoch: list[_Ack] = []  # emitted in the current epoch
        self._sealed: list[_Ack] = []  # emitted in the epoch that ended at the last snapshot
        self._last_activity = 0.0
        self._stopping = False
        self._wake: timedelta | None = None  # while idle: poll again after this long
        self._up = False  # connected, as told to the source's connection hooks
        # Emitted QoS 1 messages not acknowledged yet: packet id -> connection generation.
        self._unacked: dict[int, int] = dict.fromkeys(_unpack_ids(resume), _RESUMED)
        self._fresh_gen = 0  # the last generation that delivered a message not sent before

    # -- network side (connector thread, then paho's thread) --------------------------
    def _connect(self) -> None:
        src = self._src
        try:
            client = src.settings.connect(
                self._client_id,
                persistent=src.persistent,
                manual_ack=True,
                receive_maximum=min(src.queue_size, 65535),
                setup=self._setup,
                on_connected=self._on_connected,
                on_disconnected=self._on_disconnected,
                on_raw_message=self._on_raw_message,
            )
        except (MQTTConnectError, OSError, ValueError) as exc:
            self._error = exc
            return
        self._last_activity, self._ready = time.monotonic(), True
        if self._closed.is_set():
            client.disconnect()
            client.loop_stop()

    def _setup(self, client: mqtt.Client) -> None:
        self._client = cast(MQTTClient, client)  # what MQTTSettings.connect makes
        client.on_message = self._on_message  # QoS 2, and what the lean path leaves to paho
        client.on_subscribe = self._on_subscribe

    def _on_connected(self, client: mqtt.Client, session_present: bool) -> None:
        with self._lock:
            self._gen += 1
            self._up = True
        self.stats.connects += 1
        if self._src.on_connect is not None:
            self._src.on_connect(self.stats.connects > 1)
        if self.stats.connects > 1 and self._src.persistent and not session_present:
            logger.warning("%s: the broker lost the session; unacknowledged messages "
                           "it held may be gone", self._client_id)  # fmt: skip
        client.subscribe([(t, self._src.qos) for t in self._src.subscriptions()])

    def _on_disconnected(self) -> None:
        with self._lock:
            self._gen += 1
            was_up, self._up = self._up, False
        if was_up and self._src.on_disconnect is not None:
            self._src.on_disconnect()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Any) -> None:  # fmt: skip
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            reason = f"subscription to {self._src.subscriptions()} refused: {refused[0]}"
            self._error = MQTTConnectError(self._src.settings.url, reason)
            return
        granted = min((rc.value for rc in reason_codes), default=self._src.qos)
        if granted < self._src.qos:  # e.g. mosquitto's max_qos: the guarantee is weaker
            logger.warning("%s: the broker granted QoS %d, not %d: messages may be lost",
                           self._client_id, granted, self._src.qos)  # fmt: skip
        self.stats.subscribed += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # the broker should refuse these; keep the message
            topic = msg._topic.decode("utf-8", "replace")
        self._put(topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.dup))

    def _on_raw_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        client = self._client
        self._put(topic, payload, mid, qos, client is not None and client.raw_dup)

    def _put(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        self.stats.received += 1
        queue = self._queue
        if len(queue) >= self._src.queue_size:  # block the network thread: TCP backpressure
            self._wait_for_space()
        ack = (self._gen, mid, qos) if qos else None
        queue.append((topic, payload, time.time(), ack, dup))

    def _wait_for_space(self) -> None:
        size, space = self._src.queue_size, self._space
        while not self._closed.is_set():
            space.clear()
            if len(self._queue) < size:
                return
            self.stats.queue_full_waits += 1
            space.wait(_PUT_WAIT_S)

    # -- dataflow side (the worker thread) ---------------------------------------------
    def _ack(self, entries: list[_Ack]) -> None:
        client = self._client
        if not entries or client is None:
            return
        with self._lock:  # a reconnect cannot slip in between the check and the send
            gen = self._gen
            live = [mid for g, mid, qos in entries if g == gen and qos == 1]
            client.ack_many(live)  # one write for all of them
            for g, mid, qos in entries:
                if g == gen and qos == 2:
                    client.ack(mid, qos)
                    live.append(mid)
        unacked = self._unacked
        for mid in live:
            if unacked.get(mid) == gen:
                del unacked[mid]
        self.stats.acked += len(live)
        self.stats.ack_skipped += len(entries) - len(live)

    def _drain(self) -> list[MQTTMessage]:
        src, now, queue = self._src, time.monotonic(), self._queue
        limit = min(src.max_batch, len(queue))
        if src.max_messages is not None:
            limit = min(limit, src.max_messages - self.stats.emitted)
        out: list[MQTTMessage] = []
        if limit > 0:
            pop, emit, seal, unacked = queue.popleft, out.append, self._epoch.append, self._unacked
            for _ in range(limit):
                topic, payload, at, ack, dup = pop()
                if ack is not None:
                    seal(ack)
                    gen, mid, qos = ack
                    if qos == 1:
                        if dup and mid in unacked:  # already in the dataflow: only ack it
                            del unacked[mid]
                            self.stats.redelivered += 1
                            continue
                        if not dup and gen != self._fresh_gen:
                            self._forget_before(gen)
                        unacked[mid] = gen
                emit((topic, payload, at))
            self._space.set()
            self.stats.emitted += len(out)
            self._last_activity = now
        if src.max_messages is not None and self.stats.emitted >= src.max_messages:
            self._stopping = True
        elif src.idle_stop_s is not None and now - self._last_activity >= src.idle_stop_s:
            self._stopping = True
        return out

    def _forget_before(self, gen: int) -> None:
        """The broker sends redeliveries first: ids of older connections are done with."""
        self._fresh_gen = gen
        unacked = self._unacked
        for mid in [m for m, g in unacked.items() if g < gen]:
            del unacked[mid]

    def next_batch(self) -> list[MQTTMessage]:
        if self._connector is None:
            self._connector = threading.Thread(
                target=self._connect, name=f"mqtt-connect-{self._client_id}", daemon=True
            )
            self._connector.start()
        if self._error is not None:
            raise self._error
        self._ack(self._sealed)  # being called again proves their epoch is complete
        self._sealed = []
        if self._stopping or not self._ready:
            if self._stopping and not self._epoch:
                raise StopIteration
            self._idle()
            return []
        batch = self._drain()
        if batch:
            self._wake = None
        else:
            self._idle()
        return batch

    def _idle(self) -> None:
        """Poll again soon after traffic (latency), less often the longer it is quiet."""
        self._wake = _WAKE_MIN if self._wake is None else min(self._wake * 2, _WAKE_MAX)

    def next_awake(self) -> datetime | None:
        return None if self._wake is None else datetime.now(timezone.utc) + self._wake

    def snapshot(self) -> bytes:
        """Packet ids the dataflow has and the broker may still send again (compact)."""
        self._ack(self._sealed)
        self._sealed, self._epoch = self._epoch, []
        ids = self._unacked.keys() | {mid for _, mid, qos in self._sealed if qos == 1}
        return array("H", sorted(ids)).tobytes()

    def close(self) -> None:
        self._closed.set()
        client = self._client
        if client is not None:
            client.disconnect()  # unacknowledged messages stay in a persistent session
            client.loop_stop()
            self._on_disconnected()  # in case paho's thread stopped before telling us
        logger.info("%s closed: %s", self._client_id, self.stats)


@dataclass(frozen=True, kw_only=True)
class MQTTSource(FixedPartitionedSource[MQTTMessage, bytes]):
    """Subscribe to MQTT topic filters: ``(topic, payload, received_at)`` per message.

    Each partition is one paho client with its own network thread, started on the first
    ``next_batch`` (never in a constructor); it subscribes in ``on_connect`` (so every
    reconnect resubscribes) and fills a bounded queue that ``next_batch`` drains without
    blocking (up to ``max_batch`` at a time). When the queue is full the network thread
    waits, so TCP backpressure reaches the broker (counted in ``queue_full_waits``).
    Connecting retries for ``settings.connect_timeout_s`` and then ``next_batch`` raises
    :class:`MQTTConnectError`; bad credentials and TLS failures raise at once.

    Parallelism: ``partitions`` clients. Without ``shared_group`` there is one partition
    and it receives every message. With ``shared_group`` each partition subscribes to
    ``$share/<group>/<filter>`` as ``<client_id>[-<process_id>]-w<i>`` and the broker
    splits the stream between all members of the group, across processes too (give
    each independent process its own stable ``process_id``; in a Bytewax cluster the
    partitions are spread over the workers and ``process_id`` is not needed). Set
    ``partitions`` to the worker count for one client per worker.

    Delivery: at-least-once for QoS 1 with a persistent session (the default): a
    message is acknowledged only after the epoch that emitted it is complete (see the
    module docstring), and anything unacknowledged is redelivered after a crash or a
    reconnect; a redelivery of a message the dataflow already has (its state resumed
    from a snapshot that learned it) is dropped by packet id, so with Bytewax recovery a
    reading is processed once. QoS 0 is at-most-once. The broker's session, not Bytewax,
    remembers the position: the snapshot only holds the packet ids emitted and not yet
    acknowledged (2 bytes each).

    Attributes:
        settings: How to reach the broker.
        topics: Topic filters (validated before anything connects).
        qos: Subscription QoS (0, 1 or 2; 1 for at-least-once).
        flow: Flow name, used in the default client id ``edgewatch-<flow>``.
        client_id: Stable client id base (a persistent session is found by it).
        shared_group: Shared-subscription group, or ``None``.
        process_id: Distinguishes independent processes in one shared group.
        partitions: Number of clients (more than one needs ``shared_group``).
        persistent: Keep the session (v5 session expiry / v3.1.1 clean_session=False).
        queue_size: Bound of the queue; also sent as the v5 receive maximum (at most
            65535), so with QoS 1 it bounds the messages per epoch (module docstring).
        max_batch: Most messages per ``next_batch``.
        max_messages: Stop after this many messages per partition (tests, replays).
        idle_stop_s: Stop after this long without a message (tests, replays).
        stats: Counters per partition key, filled as partitions are built.
        on_connect: Called in the network thread after every successful connection,
            with ``True`` when it is a reconnect of that partition (for metrics).
        on_disconnect: Called when a connection that ``on_connect`` announced ends
            (lost, or closed with the partition).
    """

    settings: MQTTSettings
    topics: tuple[str, ...] = ("sensors/+/readings",)
    qos: int = 1
    flow: str = "main"
    client_id: str | None = None
    shared_group: str | None = None
    process_id: str = ""
    partitions: int = 1
    persistent: bool = True
    queue_size: int = 30_000
    max_batch: int = 5_000
    max_messages: int | None = None
    idle_stop_s: float | None = None
    on_connect: Callable[[bool], None] | None = field(default=None, repr=False, compare=False)
    on_disconnect: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    stats: dict[str, MQTTSourceStats] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.topics, str):
            object.__setattr__(self, "topics", (self.topics,))
        for topic in self.topics:
            validate_topic_filter(topic)
        group = self.shared_group
        problems = [
            (bool(self.topics), "topics is empty"),
            (self.qos in (0, 1, 2), f"qos must be 0, 1 or 2, not {self.qos!r}"),
            (group is None or (group != "" and not set(group) & set("/+#\0")),
             f"shared_group {group!r} must be non-empty without / + # or NUL"),
            (self.partitions >= 1, "partitions must be at least 1"),
            (self.partitions == 1 or group is not None,
             "several partitions need a shared_group (each would get every message)"),
            (self.queue_size >= 1 and self.max_batch >= 1, "queue_size, max_batch must be >= 1"),
            (not set(self.base_client_id() + self.process_id) & set("/+#\0 "),
             "client_id and process_id must not contain / + # NUL or spaces"),
        ]  # fmt: skip
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)

    def base_client_id(self) -> str:
        """``client_id``, or ``edgewatch-<flow>``, plus ``-<process_id>`` if set."""
        base = self.client_id or f"edgewatch-{self.flow}"
        return f"{base}-{self.process_id}" if self.process_id else base

    def subscriptions(self) -> list[str]:
        """The filters as subscribed, ``$share/<group>/`` prefixed when shared."""
        if self.shared_group is None:
            return list(self.topics)
        return [f"$share/{self.shared_group}/{t}" for t in self.topics]

    def list_parts(self) -> list[str]:
        """``w0 … w<partitions-1>`` with a shared group, else the single ``mqtt``."""
        if self.shared_group is None:
            return ["mqtt"]
        return [f"w{i}" for i in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: bytes | None) -> _MQTTPartition:
        """Build a partition (connecting on its first batch); skip ``resume_state``'s ids."""
        cid = self.base_client_id()
        cid = cid if self.shared_group is None else f"{cid}-{for_part}"
        stats = self.stats.setdefault(for_part, MQTTSourceStats())
        return _MQTTPartition(self, cid, stats, resume_state)


def _unpack_ids(state: bytes | None) -> array[int]:
    """Packet ids from a snapshot.

    >>> list(_unpack_ids(array("H", [3, 65535]).tobytes())), list(_unpack_ids(None))
    ([3, 65535], [])
    """
    return array("H", state or b"")
