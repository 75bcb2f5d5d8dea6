"""Broker signals: what a Mosquitto broker logs about its clients, as records.

:func:`parse_log_line` turns one mosquitto 2.0 log line into a :class:`BrokerEvent`;
:class:`sources.broker_log.BrokerLogSource` follows the log file like ``tail -F`` and
emits them; :class:`BrokerStats` is a sample of :mod:`sources.broker_sys`.

The lines mosquitto 2.0.11 writes for each kind (after the timestamp) and their
``log_type``; ID is the client id, ``<unknown>`` before the broker accepted one:

- connect: ``New client connected from H:P as ID (p2, c1, k60, u'user').`` (notice)
- disconnect: ``Client ID disconnected.``, ``Client ID closed its connection.``
  (notice), ``Client ID already connected, closing old connection.`` (error; the old
  connection, taken over)
- auth_failure: ``Client <unknown> disconnected, not authorised.`` (notice), for a
  wrong password, an unknown user and no credentials alike
- protocol_error: ``Client ID disconnected due to protocol error.`` (garbage, a bad
  protocol name or version, a second CONNECT, a reserved packet type) or ``… due to
  malformed packet.`` (notice)
- timeout: ``Client ID has exceeded timeout, disconnecting.`` (notice)
- acl_denied: ``Denied PUBLISH from ID (d0, q1, r0, m1, 'topic', ... (5 bytes))`` (debug)

``mosquitto.conf`` needs ``log_dest file <path>`` and, for all but acl_denied,
``connection_messages true`` (the default; without it none of those lines is written)
with ``log_type notice`` (in the default set: error, warning, notice, information);
acl_denied needs ``log_type debug`` (or ``all``), which also logs every PUBLISH.
Timestamps: ``log_timestamp true`` (the default) writes ``1732440000: ``,
``log_timestamp_format %Y-%m-%dT%H:%M:%S`` an ISO time, read as local time (what
mosquitto formats) unless it has an offset; a line without one gets the time it is read.

mosquitto 2.0.11 checks the password *before* it keeps the client id, so no line names
the client of an auth_failure; the only address it logs is in ``New connection from
H:P on port L.`` The source fills that address in when exactly one accepted connection
is still unnamed (a brute-force loop, not a crowd connecting at once; never a guess),
and the address of a named client from its connect line. Lines that only explain the
next one (``Invalid protocol "MQTX" in CONNECT from H.``) and denied SUBSCRIBEs
(logged like granted ones) give no event.

>>> parse_log_line("1732440000: Client <unknown> disconnected, not authorised.")
BrokerEvent(ts=1732440000.0, kind='auth_failure', client_id='', address='', detail='not authorised')
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

__all__ = [
    "EVENT_KINDS",
    "NEW_CONNECTION",
    "AddressBook",
    "BrokerEvent",
    "BrokerStats",
    "event_of",
    "parse_log_line",
    "split_line",
]

EVENT_KINDS = ("connect", "disconnect", "auth_failure", "protocol_error", "acl_denied", "timeout")
"""Every ``BrokerEvent.kind``."""


@dataclass(frozen=True, slots=True)
class BrokerEvent:
    """One thing the broker logged about one client.

    Attributes:
        ts: When it happened, Unix seconds (the log line's timestamp).
        kind: One of :data:`EVENT_KINDS`.
        client_id: The MQTT client id the broker named ("" when the line names none).
        address: ``host:port`` of the connection where logged, else "".
        detail: The user name, topic or reason the line gives, else "".
    """

    ts: float
    kind: str
    client_id: str
    address: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """One broker-wide sample derived from the ``$SYS/#`` tree.

    Attributes:
        ts: When the sample was taken, Unix seconds.
        values: Named figures, e.g. ``clients_connected``, ``messages_received_per_s``,
            ``bytes_received_per_s``, ``publish_dropped_per_s``.
    """

    ts: float
    values: dict[str, float] = field(default_factory=dict)


_C = r"Client (?P<id>.*) "
_PATTERNS = [(re.compile(rx), kind, detail) for rx, kind, detail in (
    (r"New (?:client|bridge) connected from (?P<addr>\S+) as (?P<id>.*) "
     r"\(p\d+, c\d, k\d+(?:, u'(?P<detail>.*)')?\)\.", "connect", ""),
    (_C + r"disconnected\.", "disconnect", "disconnected"),
    (_C + r"closed its connection\.", "disconnect", "connection closed"),
    (_C + r"already connected, closing old connection\.", "disconnect", "taken over"),
    (_C + r"been disconnected by administrative action\.", "disconnect", "administrative action"),
    (_C + r"disconnected, not authorised\.", "auth_failure", "not authorised"),
    (_C + r"has exceeded timeout, disconnecting\.", "timeout", "keepalive exceeded"),
    (_C + r"disconnected due to (?P<detail>protocol error|malformed packet|oversize packet"
     r"|oversize payload|QoS too high or retain not supported)\.", "protocol_error", ""),
    (_C + r"disconnected(?: due to|:) (?P<detail>.*)\.", "disconnect", ""),
    (r"Denied PUBLISH from (?P<id>.*) \(d\d, q\d, r\d, m\d+, '(?P<detail>.*)', \.\.\. "
     r"\(\d+ bytes\)\)", "acl_denied", ""),
)]  # fmt: skip
NEW_CONNECTION = re.compile(r"New connection from (\S+) on port \d+\.")


def _timestamp(text: str) -> float | None:
    if text.isdigit():
        return float(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:  # mosquitto formats localtime()
        return time.mktime(dt.timetuple()) + dt.microsecond / 1e6
    return dt.timestamp()


def split_line(line: str, now: float | None) -> tuple[float, str]:
    """``(timestamp, message)``; ``now`` (or the clock) when the line has no timestamp."""
    line = line.rstrip("\r\n")
    head, sep, message = line.partition(": ")
    ts = _timestamp(head) if sep else None
    if ts is None:
        return (time.time() if now is None else now), line
    return ts, message


def event_of(ts: float, message: str) -> BrokerEvent | None:
    """The event a log message (the line without its timestamp) reports, or ``None``."""
    for rx, kind, fixed in _PATTERNS:
        if m := rx.fullmatch(message):
            groups = m.groupdict()
            client_id = "" if groups["id"] == "<unknown>" else groups["id"]
            address, detail = groups.get("addr") or "", groups.get("detail") or fixed
            return BrokerEvent(ts, kind, client_id, address, detail)
    return None


def parse_log_line(line: str, now: float | None = None) -> BrokerEvent | None:
    """The event a mosquitto 2.0 log line reports, or ``None`` for any other line.

    Args:
        line: One line, with or without its newline.
        now: Timestamp for a line without one (``log_timestamp false``); default: now.

    >>> e = parse_log_line("2026-11-24T10:00:00+00:00: Client sensor-7 closed its connection.")
    >>> e.ts, e.kind, e.client_id, e.detail
    (1795514400.0, 'disconnect', 'sensor-7', 'connection closed')
    >>> parse_log_line("1732440000: Sending PINGRESP to sensor-7") is None
    True
    """
    return event_of(*split_line(line, now))


class AddressBook:
    """Fills in addresses the line itself does not give (see the module docstring).

    One per followed log: :meth:`accepted` for each ``New connection`` line, then
    :meth:`fill` on each event.
    """

    def __init__(self) -> None:
        self.unnamed: dict[str, None] = {}  # accepted, no client id yet, oldest first
        self.unsure = False  # some unnamed entry may be the wrong one: no guessing
        self.by_id: dict[str, str] = {}

    def accepted(self, address: str) -> None:
        """A ``New connection from ADDRESS`` line: a connection not yet named."""
        if len(self.unnamed) >= 4096:  # lines were missed: start over
            self.unnamed.clear()
        self.unnamed[address] = None

    def named(self, address: str) -> None:
        """The connection at ``address`` logged its client id (a ``connect`` event)."""
        unnamed = self.unnamed
        if address in unnamed:
            del unnamed[address]
        elif unnamed and self.unsure:  # one of them was this one: keep the count right
            del unnamed[next(iter(unnamed))]
        self.unsure = self.unsure and bool(unnamed)

    def unnamed_ended(self) -> str:
        """Forget the oldest unnamed connection; its address if it was the only one."""
        unnamed = self.unnamed
        if not unnamed:
            return ""
        address = next(iter(unnamed))
        del unnamed[address]
        sure = not self.unsure and not unnamed
        self.unsure = not sure and bool(unnamed)
        return address if sure else ""

    def fill(self, event: BrokerEvent) -> BrokerEvent:
        """``event`` with the address of its connection, where it can be known."""
        client_id, by_id = event.client_id, self.by_id
        if event.kind == "connect":
            self.named(event.address)
            if len(by_id) >= 65536:
                del by_id[next(iter(by_id))]
            by_id[client_id] = event.address
            return event
        if not client_id:
            return replace(event, address=self.unnamed_ended())
        known = by_id.get(client_id, "") if event.kind == "acl_denied" else by_id.pop(client_id, "")
        return replace(event, address=known)
