"""Publish readings to ``<prefix>sensors/<id>/readings`` with a bounded in-flight window.

The publishing half of ``edgewatch replay`` (:mod:`dataflows.replay` reads and orders
the dataset): :func:`publish` paces messages on a fixed schedule (:class:`Pacer`) or
sends them as fast as the window allows, counts what the broker acknowledged
(:class:`ReplayStats`), shows :class:`Progress`, and fails with the reason
(:class:`ReplayError`) instead of hanging when the broker refuses or stalls.

Delivery: QoS 1 by default with at most ``window`` messages in flight; a run ends when
the broker has acknowledged every message, or fails with the reason.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from sources.mqtt import MQTTSettings

__all__ = ["DEFAULT_RATE", "UNPARSED", "Pacer", "Progress", "ReplayError", "ReplayInterrupted",
           "ReplayMessage", "ReplayStats", "check_prefix", "publish"]  # fmt: skip

UNPARSED = "_unparsed"
"""Pseudo sensor id of messages published as they were because they did not parse."""
DEFAULT_RATE = 1000.0
"""Messages per second without ``--rate`` or ``--max``."""


@dataclass(frozen=True, slots=True)
class ReplayMessage:
    """One message to publish: its sensor, event time (epoch seconds) and payload."""

    sensor_id: str
    ts: float
    payload: bytes

    def topic(self, prefix: str = "") -> str:
        """``<prefix>sensors/<sensor_id>/readings``."""
        return f"{prefix}sensors/{self.sensor_id}/readings"


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if topics under it can be published to, else raise ``ValueError``.

    >>> check_prefix("site/+/")
    Traceback (most recent call last):
    ...
    ValueError: bad topic prefix 'site/+/': it must not contain + # or NUL, nor start with $
    """
    if set(prefix) & set("+#\0") or prefix.startswith("$") or len(prefix.encode()) > 60_000:
        msg = f"bad topic prefix {prefix!r}: it must not contain + # or NUL, nor start with $"
        raise ValueError(msg)
    return prefix


@dataclass
class ReplayStats:
    """Counts of one replay, updated as it goes.

    Attributes:
        qos: The QoS messages are published with.
        total: Messages to publish.
        sent: Messages handed to the MQTT client.
        acknowledged: Messages the broker confirmed (PUBACK; PUBCOMP at QoS 2). QoS 0
            has no acknowledgement: there it counts messages written to the socket.
        lost: QoS 0 messages dropped with a lost connection (QoS 1 and 2 are resent).
        unparsed: Messages sent to ``sensors/_unparsed/readings``.
        elapsed_s: Seconds from the first publish to the last acknowledgement.
    """

    qos: int
    total: int
    sent: int = 0
    acknowledged: int = 0
    lost: int = 0
    unparsed: int = 0
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """One line for the user.

        >>> ReplayStats(1, 36_000, 36_000, 36_000, elapsed_s=3.2).summary()
        'published 36,000 messages (36,000 acknowledged, 0 unparsed) in 3.2 s, 11,250 msg/s'
        >>> ReplayStats(0, 9, 5, 4, lost=1, elapsed_s=1.0).summary()
        'published 5 of 9 messages (QoS 0, none acknowledged: 4 written, 1 lost, 0 unparsed) \
in 1.0 s, 5 msg/s'
        """
        part = f" of {self.total:,}" if self.sent < self.total else ""
        acks = f"{self.acknowledged:,} acknowledged"
        if self.qos == 0:
            acks = f"QoS 0, none acknowledged: {self.acknowledged:,} written, {self.lost:,} lost"
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (f"published {self.sent:,}{part} messages ({acks}, {self.unparsed:,} unparsed) "
                f"in {self.elapsed_s:.1f} s, {rate:,.0f} msg/s")  # fmt: skip


class ReplayError(RuntimeError):
    """The broker refused a message or did not acknowledge in time; ``stats`` so far."""

    def __init__(self, message: str, stats: ReplayStats) -> None:
        super().__init__(message)
        self.stats = stats


class ReplayInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`publish`; ``stats`` says what was published until then."""

    def __init__(self, stats: ReplayStats) -> None:
        super().__init__()
        self.stats = stats


class Pacer:
    """Hold message ``i`` back until ``start + i / rate`` on a monotonic clock.

    The schedule is absolute, so a late wake-up is made up by the next messages instead
    of delaying all that follow (no drift). Waits shorter than ``min_sleep_s`` are
    skipped: at high rates messages leave in short bursts. ``rate=None``: no pacing.

    >>> now = [0.0]
    >>> pacer = Pacer(100.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    >>> for i in range(5):
    ...     pacer.wait(i)
    >>> round(now[0], 6)
    0.04
    """

    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, min_sleep_s: float = 0.001,
                 ) -> None:  # fmt: skip
        self.rate, self._clock, self._sleep, self._min = rate, clock, sleep, min_sleep_s
        self._start: float | None = None

    def wait(self, i: int) -> None:
        """Sleep until message ``i`` is due (the first call starts the schedule)."""
        if self.rate is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        delay = self._start + i / self.rate - now
        if delay >= self._min:
            self._sleep(delay)


class Progress:
    """Progress on ``stream``: one line repainted on a terminal, else a line every 5 s."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.stream, self._clock = stream, clock
        self.tty = stream.isatty() if tty is None else tty
        self.every_s = every_s if every_s is not None else 0.2 if self.tty else 5.0
        self._t0, self._next, self._shown = 0.0, float("-inf"), False

    def update(self, stats: ReplayStats) -> None:
        """Show ``stats`` if the last update is ``every_s`` old (cheap otherwise)."""
        now = self._clock()
        if now < self._next:
            return
        if self._next == float("-inf"):  # the first call starts the clock
            self._t0, self._next = now, now + self.every_s
            return
        self._next = now + self.every_s
        pct = 100 * stats.sent / max(stats.total, 1)
        line = (f"{stats.sent:,}/{stats.total:,} messages ({pct:.0f}%), "
                f"{stats.sent / (now - self._t0):,.0f} msg/s, {stats.acknowledged:,} "
                f"{'acknowledged' if stats.qos else 'written'}")  # fmt: skip
        self.stream.write(f"\r\x1b[K{line}" if self.tty else f"edgewatch replay: {line}\n")
        self.stream.flush()
        self._shown = self.tty

    def close(self) -> None:
        """Clear the repainted line, so that what follows starts on a clean one."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _settled(info: mqtt.MQTTMessageInfo, timeout: float = 0.0) -> bool:
    """Whether ``info`` is acknowledged (QoS 0: written, or lost), waiting ``timeout`` s."""
    try:
        if timeout > 0 and not info.is_published():
            info.wait_for_publish(timeout)
        return info.is_published()
    except RuntimeError:  # a QoS 0 message dropped with its connection: settled too
        return True


class _Window:
    """The messages in flight, oldest first, as ``(info, index)``; settles them in stats."""

    def __init__(self, stats: ReplayStats, timeout_s: float, url: str,
                 topic: Callable[[int], str]) -> None:  # fmt: skip
        self.stats, self.timeout_s, self.url, self.topic = stats, timeout_s, url, topic
        self.pending: deque[tuple[mqtt.MQTTMessageInfo, int]] = deque()
        self.refused: dict[int, str] = {}  # mid -> reason, from v5 acknowledgements

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                   properties: Any) -> None:  # fmt: skip
        if rc.is_failure:
            self.refused[mid] = str(rc)

    def check_refused(self) -> None:
        """Raise :class:`ReplayError` naming a message the broker refused, if any."""
        if self.refused:
            i = next((i for info, i in self.pending if info.mid in self.refused), None)
            msg = (f"MQTT broker {self.url} refused "
                   f"{'a message' if i is None else self.topic(i)}: "
                   f"{next(iter(self.refused.values()))}")  # fmt: skip
            raise ReplayError(msg, self.stats)

    def _wait(self, info: mqtt.MQTTMessageInfo) -> None:
        if not _settled(info, self.timeout_s):
            msg = (f"MQTT broker {self.url}: {len(self.pending):,} messages not acknowledged "
                   f"within {self.timeout_s:g} s")  # fmt: skip
            raise ReplayError(msg, self.stats)

    def settle(self, keep: int = -1) -> None:
        """Count what is settled; then wait, oldest first, until ``keep`` or fewer remain."""
        pending, stats = self.pending, self.stats
        if len(pending) > keep >= 0:  # one wait for the lot: acknowledgements come in order
            self._wait(pending[-keep - 1][0])
        while pending and (len(pending) > keep >= 0 or _settled(pending[0][0])):
            info = pending[0][0]
            self._wait(info)
            if info.mid in self.refused:
                self.check_refused()
            pending.popleft()
            ok = info.rc == mqtt.MQTT_ERR_SUCCESS
            stats.acknowledged += ok
            stats.lost += not ok


def publish(
    settings: MQTTSettings,
    messages: Sequence[ReplayMessage],
    *,
    prefix: str = "",
    qos: int = 1,
    rate: float | None = DEFAULT_RATE,
    client_id: str | None = None,
    window: int = 1000,
    ack_timeout_s: float = 30.0,
    progress: Progress | None = None,
) -> ReplayStats:
    """Publish ``messages`` in order to ``<prefix>sensors/<id>/readings``.

    Args:
        settings: The broker.
        messages: What to publish.
        prefix: Topic prefix.
        qos: 0, 1 or 2.
        rate: Messages per second on a fixed schedule; ``None``: as fast as possible.
        client_id: MQTT client id (default ``edgewatch-replay-<host>-<pid>``).
        window: Most messages in flight (unacknowledged; QoS 0: not yet written).
        ack_timeout_s: How long the wait for any one acknowledgement may last.
        progress: Shown while publishing.

    Returns:
        The counts, once every message is acknowledged (QoS 0: written or lost).

    Raises:
        MQTTConnectError: The broker cannot be reached or refuses the connection.
        ReplayError: The broker refused a message or did not acknowledge in time.
        ReplayInterrupted: Ctrl-C.
    """
    check_prefix(prefix)
    if qos not in (0, 1, 2) or not 1 <= window < 65_535 or ack_timeout_s <= 0:
        msg = "need qos 0, 1 or 2, 1 <= window < 65535 and ack_timeout_s > 0"
        raise ValueError(msg)
    stats = ReplayStats(qos, len(messages))
    win = _Window(stats, ack_timeout_s, settings.url, lambda i: messages[i].topic(prefix))

    def setup(client: mqtt.Client) -> None:
        # The window is ours: with a limit of its own, paho scans every message in
        # flight for a queued one on each acknowledgement (O(window) per PUBACK).
        client.max_inflight_messages_set(0)
        if qos:  # at QoS 0 paho would build two objects per message for the callback
            client.on_publish = win.on_publish

    client, start, pacer = None, time.monotonic(), Pacer(rate)
    try:
        cid = client_id or f"edgewatch-replay-{socket.gethostname()}-{os.getpid()}"
        client = settings.connect(cid, persistent=False, setup=setup)
        start = time.monotonic()
        for i, m in enumerate(messages):
            pacer.wait(i)
            win.settle(window // 2 if len(win.pending) >= window else -1)
            win.check_refused()
            info = client.publish(m.topic(prefix), m.payload, qos=qos)
            stats.sent += 1
            stats.unparsed += m.sensor_id == UNPARSED
            if info.rc == mqtt.MQTT_ERR_NO_CONN and qos:  # paho sends it once reconnected
                info.rc = mqtt.MQTT_ERR_SUCCESS
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                win.pending.append((info, i))
            elif info.rc == mqtt.MQTT_ERR_NO_CONN:
                stats.lost += 1
            else:
                msg = f"MQTT broker {settings.url}: {mqtt.error_string(info.rc)}"
                raise ReplayError(msg, stats)
            if progress is not None:
                progress.update(stats)
        win.settle(0)
    except KeyboardInterrupt:
        raise ReplayInterrupted(stats) from None
    finally:
        stats.elapsed_s = time.monotonic() - start
        if client is not None:
            client.disconnect()
            client.loop_stop()
    return stats
