"""Observe what devices do: raw messages and broker signals as compact keyed tuples.

Every MQTT message, broker event and ``$SYS`` sample becomes one :data:`Observation` keyed
by the device it comes from; :mod:`operators.device_features` folds them into windows.

Who is the device? MQTT does not tell a subscriber who published a message, so the device
is the one the payload names (``sensor_id``, or PurpleAir's ``sensor_index``) when it names
a well-formed id, else the one the topic names (``sensors/<id>/…``), else
:data:`UNKNOWN_DEVICE`. A message on a topic outside ``sensors/<device>/`` is a *foreign
write*; broker events name the MQTT client id, which edgewatch's ACL makes equal to the
sensor id (``deploy/mosquitto/acl.template``).

A device that goes silent has no messages and so no window, and its last window would
stay open (its event-time clock only moves with its own observations): a
:class:`Ticker` therefore adds a *tick* for every device it has seen each time the
stream's event time enters a new window. A tick closes the device's previous window and
opens an empty one, which closes as ``silent`` when nothing else comes, so silence is
scored like any other behaviour. A device silent for ``expire_windows`` is forgotten.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from operators.payloads import SENSOR_ID_MISMATCH, ParseLimits, parse_message, topic_sensor
from operators.records import Reading

__all__ = [
    "BROKER_DEVICE",
    "EVENT_CODES",
    "MESSAGE",
    "STATS",
    "TICK",
    "UNKNOWN_DEVICE",
    "Observation",
    "Ticker",
    "at",
    "observe_event",
    "observe_message",
    "observe_stats",
]

BROKER_DEVICE = "$broker"
"""The key of the broker's own observations (its ``$SYS`` samples)."""
UNKNOWN_DEVICE = "unknown"
EVENT_CODES = {"connect": 1, "disconnect": 2, "auth_failure": 3, "protocol_error": 4,
               "acl_denied": 5, "timeout": 2}  # fmt: skip
"""Broker event kind → observation code (a timeout counts as a disconnect)."""
MESSAGE, STATS, TICK = 0, 9, 10
"""Observation codes besides the broker events'."""
_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_NAN = float("nan")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

Observation = tuple[datetime, float, int, int, str, bool, bool, tuple[str, ...], float, float,
                    dict[str, float] | None]  # fmt: skip
"""``(time, unix seconds, code, size, topic, foreign, valid, field names, uptime, rssi,
stats)``: one message (code 0), broker event (1-5), ``$SYS`` sample (9) or tick (10)."""


def at(ts: float) -> datetime:
    """Unix seconds as a UTC datetime."""
    return _EPOCH + timedelta(seconds=ts)


def _claimed(obj: Any) -> str | None:
    if type(obj) is not dict:
        return None
    sid = obj.get("sensor_id", obj.get("sensor_index"))
    if type(sid) is int:
        return str(sid)
    return sid if type(sid) is str and _ID.fullmatch(sid) else None


def _number(v: Any) -> float:
    return float(v) if type(v) is int or type(v) is float else _NAN


def observe_message(
    msg: tuple[str, bytes, float], prefix: str = "", limits: ParseLimits | None = None
) -> tuple[str, Observation]:
    """The device a raw MQTT message ``(topic, payload, time)`` comes from, and what it did.

    >>> p = b'{"sensor_id": "a1", "ts": 1.8e9, "values": {"uptime": 9, "rssi": -60}}'
    >>> dev, o = observe_message(("sensors/a1/readings", p, 1.8e9))
    >>> dev, o[3], o[5], o[6], o[7], o[8], o[9]
    ('a1', 70, False, True, ('uptime', 'rssi'), 9.0, -60.0)
    >>> dev, o = observe_message(("sensors/b2/readings", p, 1.8e9))
    >>> dev, o[5], o[6]  # a1 wrote on b2's topic: foreign, but not malformed
    ('a1', True, True)
    """
    topic, payload, received = msg
    limits = limits or ParseLimits()
    obj: Any = None
    if len(payload) <= limits.max_payload_bytes:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
    device = _claimed(obj) or topic_sensor(topic) or UNKNOWN_DEVICE
    foreign = not topic.startswith(f"{prefix}sensors/{device}/")
    names: tuple[str, ...] = ()
    uptime = rssi = _NAN
    items = parse_message(topic, obj if type(obj) is dict else payload, received, limits)
    valid = True
    for item in items:
        if isinstance(item, Reading):
            names = tuple(item.values)
            uptime, rssi = _number(item.values.get("uptime")), _number(item.values.get("rssi"))
        elif item.reason != SENSOR_ID_MISMATCH:
            valid = False
    return device, (at(received), received, MESSAGE, len(payload), topic, foreign, valid,
                    names, uptime, rssi, None)  # fmt: skip


def observe_event(
    ts: float, kind: str, client_id: str, address: str = ""
) -> tuple[str, Observation] | None:
    """A broker event as an observation of its client (``None`` for an unknown kind).

    A client the broker did not name (mosquitto logs no client id for a refused login)
    is ``unknown@<host>`` of its address, so that a password-guessing loop from one host
    is one device whatever client ids it tries.

    >>> observe_event(5.0, "auth_failure", "", "10.0.0.9:51234")[0]
    'unknown@10.0.0.9'
    """
    code = EVENT_CODES.get(kind)
    if code is None:
        return None
    if not client_id and address:
        client_id = f"unknown@{address.rpartition(':')[0].strip('[]') or address}"
    device = client_id if _ID.fullmatch(client_id) else UNKNOWN_DEVICE
    return device, (at(ts), ts, code, 0, "", False, True, (), _NAN, _NAN, None)


def observe_stats(ts: float, values: dict[str, float]) -> tuple[str, Observation]:
    """A ``$SYS`` sample as an observation of the broker itself."""
    return BROKER_DEVICE, (at(ts), ts, STATS, 0, "", False, True, (), _NAN, _NAN, values)


class Ticker:
    """Interleaves ticks into a stream of keyed observations at every window boundary.

    Observations pass through in order; before the first one at or past the next window
    boundary, every device seen within the last ``expire_windows`` windows gets a tick
    timed at the boundary (one per boundary crossed). State is per worker and not
    snapshotted: after a restart, devices are ticked again once they are seen.

    >>> t = Ticker(length_s=60.0)
    >>> _, a = observe_event(30.0, "connect", "a")
    >>> _, b = observe_event(150.0, "connect", "b")
    >>> [(d, o[1], o[2]) for d, o in t([("a", a), ("b", b)])]
    [('a', 30.0, 1), ('a', 60.0, 10), ('a', 120.0, 10), ('b', 150.0, 1)]
    """

    def __init__(self, length_s: float, expire_windows: int = 60) -> None:
        self.length = length_s
        self.expire = expire_windows
        self.window = -1  # the newest window the stream has entered
        self.boundary = -math.inf  # its end
        self.seen: dict[str, int] = {}  # device -> the window it was last observed in

    def __call__(self, batch: list[tuple[str, Observation]]) -> list[tuple[str, Observation]]:
        """The batch with the ticks it crosses interleaved."""
        out: list[tuple[str, Observation]] = []
        for item in batch:
            if item[1][1] >= self.boundary:
                out.extend(self._cross(item[1][1]))
            self.seen[item[0]] = self.window
            out.append(item)
        return out

    def _cross(self, ts: float) -> list[tuple[str, Observation]]:
        new = int(ts // self.length)
        ticks: list[tuple[str, Observation]] = []
        if self.window >= 0:
            for wid in range(self.window + 1, min(new, self.window + self.expire) + 1):
                t = wid * self.length
                tick = (at(t), t, TICK, 0, "", False, True, (), _NAN, _NAN, None)
                ticks.extend((d, tick) for d, last in self.seen.items()
                             if wid - last <= self.expire)  # fmt: skip
        self.window = new
        self.boundary = (new + 1) * self.length
        self.seen = {d: w for d, w in self.seen.items() if new - w <= self.expire}
        return ticks
