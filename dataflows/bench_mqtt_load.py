"""The load side of ``edgewatch bench --mqtt``: a publisher and an alert recorder.

Both run in their own processes (``multiprocessing`` spawn), so neither shares the GIL
or a CPU budget with the flow under test.

The publisher speaks MQTT 3.1.1 over a plain socket instead of going through paho: a
load generator must cost much less than what it measures, and paho spends about 15 µs
of Python per message, a whole core at 60,000 msgs/s on a machine that also runs the
broker and the flow. It writes real PUBLISH packets (QoS 0, or QoS 1 with a window of
unacknowledged messages that waits for the broker's PUBACKs) in chunks, either as fast
as the broker takes them or paced on a monotonic schedule. Each payload is a generic
reading ``{"sensor_id", "ts", "values": {"pm1.0_cf_1": …}}`` on
``<prefix>sensors/<id>/readings`` whose ``ts`` is the wall-clock time of its chunk (plus
a microsecond per earlier reading of the same sensor in the chunk), so
publish→alert latency is an alert's receive time minus its ``ts``. Every sensor's
readings are steady noise around its own level with a spike every :data:`SPIKE_EVERY`
readings once the Half-Space Trees have warmed up, so alerts come steadily.

The recorder subscribes to ``<prefix>alerts/#`` with paho (alerts are few) and notes
the receive time of each.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["SPIKE_EVERY", "WARMUP", "LoadSpec", "publish_load", "record_alerts"]

WARMUP = 80
"""Readings per sensor before the first spike (the HST window is 72)."""
SPIKE_EVERY = 40
"""One reading in this many is a spike, per sensor, after the warm-up."""
_CHUNK = 200  # messages per socket write at full speed
_TICK_S = 0.001  # paced mode: at most this long between writes


@dataclass(frozen=True)
class LoadSpec:
    """What one publisher process sends.

    Attributes:
        host: Broker host.
        port: Broker port.
        username: User name (``None``: anonymous).
        password: Password.
        prefix: Topic prefix (``bench/<run>/<phase>/``).
        messages: Messages to send.
        sensors: Sensors to spread them over (round robin).
        qos: 0 or 1.
        rate: Messages per second, or 0 for as fast as the broker takes them.
        window: Most unacknowledged QoS 1 messages.
        seed: Seed of the noise.
    """

    host: str
    port: int
    username: str | None
    password: str | None
    prefix: str
    messages: int
    sensors: int
    qos: int
    rate: float = 0.0
    window: int = 2000
    seed: int = 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _field(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 0) + _field(client_id.encode())
    for value in (username, password):
        if value is not None:
            body += _field(value.encode())
    return b"\x10" + _varint(len(body)) + body


class _Publisher:
    """One MQTT 3.1.1 connection that writes PUBLISH packets in chunks."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.sock = socket.create_connection((spec.host, spec.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_connect_packet(f"edgewatch-bench-pub-{time.time_ns()}",
                                          spec.username, spec.password))  # fmt: skip
        connack = self.sock.recv(4)
        if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
            msg = f"the broker refused the publisher: CONNACK {connack!r}"
            raise ConnectionError(msg)
        self.sock.settimeout(None)
        self.sent = self.acked = 0
        self.clock_us = 0  # the earliest event time (µs) the next chunk may use
        self.cond = threading.Condition()
        self.topics = [f"{spec.prefix}sensors/s{i}/readings".encode() for i in range(spec.sensors)]
        rnd = random.Random(spec.seed)
        self.levels = [rnd.uniform(5.0, 40.0) for _ in range(spec.sensors)]
        self.noise = [rnd.gauss(0.0, 1.0) for _ in range(4096)]
        if spec.qos:
            threading.Thread(target=self._read_acks, daemon=True).start()

    def _read_acks(self) -> None:
        pending = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            pending += data
            whole = len(pending) - len(pending) % 4  # PUBACK: 0x40 0x02 mid mid
            with self.cond:
                self.acked += whole // 4
                self.cond.notify_all()
            pending = pending[whole:]

    def chunk(self, count: int) -> None:
        """Write ``count`` messages stamped with the time now (QoS 1: within the window)."""
        spec, i0 = self.spec, self.sent
        if spec.qos:
            with self.cond:
                self.cond.wait_for(lambda: i0 + count - self.acked <= spec.window)
        us, head = max(time.time_ns() // 1000, self.clock_us), 0x30 | (spec.qos << 1)
        self.clock_us = us + count // spec.sensors + 1  # the next chunk comes later
        out = bytearray()
        for i in range(i0, i0 + count):
            s, k = i % spec.sensors, i // spec.sensors
            spike = k >= WARMUP and (k + s) % SPIKE_EVERY == 0
            value = (
                900.0 + 50 * self.noise[i & 4095]
                if spike
                else self.levels[s] + self.noise[i & 4095]
            )
            at, frac = divmod(us + (i - i0) // spec.sensors, 1_000_000)  # strictly increasing
            payload = b'{"sensor_id":"s%d","ts":%d.%06d,"values":{"pm1.0_cf_1":%.2f}}' % (
                s,
                at,
                frac,
                value,
            )
            topic = _field(self.topics[s])
            mid = struct.pack("!H", i % 65535 + 1) if spec.qos else b""
            body = len(topic) + len(mid) + len(payload)
            out += bytes([head]) + _varint(body) + topic + mid + payload
        self.sock.sendall(out)
        self.sent += count

    def finish(self) -> None:
        """Wait for the last PUBACK (QoS 1), then disconnect."""
        if self.spec.qos:
            with self.cond:
                self.cond.wait_for(lambda: self.acked >= self.sent, timeout=60)
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def publish_load(spec: LoadSpec, conn: Connection) -> None:
    """Process entry: connect, say ``ready``, wait for ``go``, publish, report figures."""
    pub = _Publisher(spec)
    conn.send("ready")
    conn.recv()
    start, t0 = time.time(), time.monotonic()
    n = spec.messages
    while pub.sent < n:
        if spec.rate:
            due = min(int((time.monotonic() - t0) * spec.rate) + 1, n) - pub.sent
            if due <= 0:
                time.sleep(max(0.0, min(_TICK_S, pub.sent / spec.rate - (time.monotonic() - t0))))
                continue
            pub.chunk(min(due, _CHUNK))
        else:
            pub.chunk(min(_CHUNK, n - pub.sent))
    end = time.time()
    pub.finish()
    conn.send({"sent": pub.sent, "acked": pub.acked, "start": start, "end": end})


def record_alerts(url_parts: tuple[str, int, str | None, str | None], topic: str,
                  conn: Connection) -> None:  # fmt: skip
    """Process entry: subscribe, say ``ready``; on ``stop`` send ``[(received, payload)]``."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415 - only in the recorder process
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    host, port, username, password = url_parts
    got: list[tuple[float, bytes]] = []
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        got.append((time.time(), msg.payload))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(host, port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    conn.send("ready" if subscribed.wait(10) else "no SUBACK")
    conn.recv()
    client.disconnect()
    client.loop_stop()
    conn.send(got)
