"""Per-device traffic and health features over event-time windows, for the security flow.

Observations (:mod:`operators.observe`) are folded per device and tumbling window
(Bytewax's own :func:`~bytewax.operators.windowing.fold_window`, event time) into a
:class:`DeviceWindow` holding the vector :data:`FEATURES` (or, for the broker itself,
:data:`BROKER_FEATURES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from math import isnan
from typing import Any

import bytewax.operators as op
import numpy as np
import numpy.typing as npt
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window

from operators.observe import BROKER_DEVICE, MESSAGE, STATS, TICK, Observation

__all__ = [
    "BROKER_FEATURES",
    "FEATURES",
    "DeviceWindow",
    "WindowAcc",
    "device_windows",
]

FEATURES = ("messages", "kbytes", "size_mean", "size_max", "topics", "foreign_writes",
            "jitter_s", "invalid_ratio", "new_fields", "reboots", "rssi_mean", "connects",
            "disconnects", "auth_failures", "acl_denied", "protocol_errors",
            "silent_windows")  # fmt: skip
"""A device window's feature vector, in order."""
BROKER_FEATURES = ("clients_connected", "messages_received_per_s", "bytes_received_per_s",
                   "messages_sent_per_s", "publish_dropped_per_s")  # fmt: skip
"""The broker's window vector (means of its ``$SYS`` samples), keyed ``$broker``."""
_NAN = float("nan")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
Floats = npt.NDArray[np.float64]


class WindowAcc:
    """What one device did in one window, folded one observation at a time."""

    __slots__ = ("bytes", "count", "dt_n", "dt_sq", "dt_sum", "events", "first", "foreign",
                 "invalid", "last", "names", "reboots", "rssi_n", "rssi_sum", "size_max",
                 "stats", "stats_n", "topics", "uptime_first", "uptime_last")  # fmt: skip

    def __init__(self) -> None:
        self.count = self.bytes = self.size_max = self.foreign = self.invalid = 0
        self.topics: set[str] = set()
        self.first = self.last = self.uptime_first = self.uptime_last = _NAN
        self.dt_n = self.rssi_n = self.reboots = 0
        self.dt_sum = self.dt_sq = self.rssi_sum = 0.0
        self.names: set[tuple[str, ...]] = set()
        self.events = [0] * 6
        self.stats: dict[str, float] = {}
        self.stats_n = 0

    def add(self, o: Observation) -> WindowAcc:
        """Fold one observation in (observations come in event-time order)."""
        code = o[2]
        if code != MESSAGE:
            if code == TICK:
                return self
            if code == STATS:
                self.stats_n += 1
                for k, v in (o[10] or {}).items():
                    self.stats[k] = self.stats.get(k, 0.0) + v
            else:
                self.events[code] += 1
            return self
        ts = o[1]
        if self.count:
            dt = ts - self.last
            self.dt_n += 1
            self.dt_sum += dt
            self.dt_sq += dt * dt
        else:
            self.first = ts
        self.last = ts
        self.count += 1
        self.bytes += o[3]
        self.size_max = max(self.size_max, o[3])
        self.topics.add(o[4])
        self.foreign += o[5]
        self.invalid += not o[6]
        if o[7]:
            self.names.add(o[7])
        uptime, rssi = o[8], o[9]
        if not isnan(uptime):
            if uptime < self.uptime_last:
                self.reboots += 1
            if isnan(self.uptime_first):
                self.uptime_first = uptime
            self.uptime_last = uptime
        if not isnan(rssi):
            self.rssi_sum += rssi
            self.rssi_n += 1
        return self

    def merge(self, other: WindowAcc) -> WindowAcc:
        """Never called: only session windows merge, and device windows are tumbling.

        Bytewax asks every window fold for a merger all the same.
        """
        msg = f"tumbling device windows never merge ({other.count} messages)"
        raise NotImplementedError(msg)

    def vector(self) -> Floats:
        """The window's :data:`FEATURES`.

        ``new_fields`` is NaN and ``reboots`` counts those *within* the window: both need
        the device's history, which the security operator adds.
        """
        n = self.count
        var = self.dt_sq / self.dt_n - (self.dt_sum / self.dt_n) ** 2 if self.dt_n >= 2 else _NAN
        e = self.events
        return np.array([
            n, self.bytes / 1000.0, self.bytes / n if n else _NAN,
            self.size_max if n else _NAN, len(self.topics), self.foreign,
            math.sqrt(max(var, 0.0)) if not isnan(var) else _NAN, self.invalid / n if n else _NAN,
            _NAN, self.reboots, self.rssi_sum / self.rssi_n if self.rssi_n else _NAN,
            e[1], e[2], e[3], e[5], e[4], 0.0,
        ])  # fmt: skip

    def broker_vector(self) -> Floats:
        """The means of the window's ``$SYS`` samples, in :data:`BROKER_FEATURES` order."""
        n = self.stats_n or 1
        return np.array([self.stats.get(k, _NAN) / n for k in BROKER_FEATURES])


@dataclass(frozen=True, slots=True, eq=False)
class DeviceWindow:
    """One device's closed window: its features and what the next step needs to finish them.

    Attributes:
        device: The device (or :data:`BROKER_DEVICE`).
        window: The window's index (``end`` is ``(window + 1) * length`` past the epoch).
        end: End of the window, Unix seconds.
        x: :data:`FEATURES` (or :data:`BROKER_FEATURES` for the broker).
        names: The distinct field-name tuples of its valid readings.
        uptime_first: First ``uptime`` it reported in the window (NaN: none).
        uptime_last: Last ``uptime`` it reported (NaN: none).
        silent: Not a single message in the window (a :class:`Ticker` opened it).
    """

    device: str
    window: int
    end: float
    x: Floats
    names: frozenset[tuple[str, ...]] = frozenset()
    uptime_first: float = _NAN
    uptime_last: float = _NAN
    silent: bool = False


@operator
def device_windows(
    step_id: str,
    up: KeyedStream[Observation],
    length: timedelta,
    lateness: timedelta = timedelta(0),
    live: bool = True,
) -> tuple[Stream[DeviceWindow], KeyedStream[Any]]:
    """Fold observations per device into tumbling event-time windows.

    Args:
        step_id: Unique ID.
        up: Observations keyed by device, roughly in event-time order.
        length: Window length.
        lateness: How long past an observation's time its window waits for others (live
            sources: a few seconds; replays in event-time order: 0).
        live: Close windows when the wall clock passes their end (live sources). A
            replay's event times mean nothing to the wall clock: its windows close on
            the device's next observation (a :class:`Ticker` gives every device one per
            window) or at the end of the input.

    Returns:
        The closed windows, and the observations that came too late for theirs.
    """
    clock: EventClock[Observation] = (
        EventClock(_time, lateness) if live else EventClock(_time, lateness, to_system_utc=_never)
    )
    windower = TumblingWindower(length=length, align_to=_EPOCH)
    folded = fold_window(
        "fold", up, clock, windower, WindowAcc, WindowAcc.add, WindowAcc.merge, ordered=False
    )
    seconds = length.total_seconds()

    def close(item: tuple[str, tuple[int, WindowAcc]]) -> DeviceWindow:
        device, (wid, acc) = item
        x = acc.broker_vector() if device == BROKER_DEVICE else acc.vector()
        return DeviceWindow(device, wid, (wid + 1) * seconds, x, frozenset(acc.names),
                            acc.uptime_first, acc.uptime_last, acc.count == 0)  # fmt: skip

    return op.map("close", folded.down, close), folded.late


def _time(o: Observation) -> datetime:
    return o[0]


def _never(_: datetime) -> None:
    return None
