"""Fleet incidents: one alert when several sensors of a group alert together.

When at least ``k`` *distinct* sensors of one group alert within ``window`` of event time
(``Alert.ts``; the first and last alert of the window are less than ``window`` apart),
:func:`correlate` emits one incident: an :class:`Alert` with ``sensor_id`` ``fleet/<group>``,
detector ``"fleet"``, ``score`` the number of member sensors, ``threshold`` ``k``, ``ts``
the event time of the window's first alert, ``votes`` each member's highest score and
``values`` ``{"sensors", "alerts", "span_s"}``. Its ``alert_id`` is
``alert_id(flow, "fleet/<group>", "fleet", ts)``, so a replay gives the same id.

After an incident the group is *in a burst*: further alerts raise nothing until the group
has been quiet (no alert) for ``window`` of event time; the next alert after that starts a
new burst. Alerts are taken one by one in arrival order (the outcome never depends on
batch boundaries); alerts that arrive out of order count as long as they are within
``window`` of the group's newest one, later ones are ignored. Alerts of sensors without a
group are ignored.

State per group is compact bytes: the newest event time, the burst flag and, outside a
burst, the ``(time, sensor, score)`` of the alerts of the last ``window``. A group idle
for ``idle_timeout`` of wall time is forgotten.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from operator import itemgetter

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream, operator

from operators.keyed import IdleEvictingLogic
from operators.records import Alert, alert_id

__all__ = [
    "FLEET_DETECTOR",
    "INCIDENT_TOPIC",
    "Entry",
    "GroupCorrelator",
    "correlate",
    "incident_severity",
    "incident_topic",
    "keyed_incident",
    "make_incident",
]

FLEET_DETECTOR = "fleet"
INCIDENT_TOPIC = "alerts/fleet/{key}"
"""``MQTTSink`` topic template for incidents keyed by :func:`keyed_incident`."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
Entry = tuple[int, str, float]
"""An alert in a group's window: ``(event time in µs since the epoch, sensor id, score)``."""


def incident_topic(prefix: str, group: str) -> str:
    """The MQTT topic of a group's incidents.

    >>> incident_topic("site1/", "north")
    'site1/alerts/fleet/north'
    """
    if not group or set(group) & set("/+#\0"):
        msg = f"group {group!r} must be a non-empty str without / + # or NUL"
        raise ValueError(msg)
    return prefix + INCIDENT_TOPIC.format(key=group)


def keyed_incident(incident: Alert) -> tuple[str, bytes]:
    """``(group, json)`` for ``MQTTSink(..., topic=INCIDENT_TOPIC)``."""
    return incident.sensor_id.removeprefix("fleet/"), incident.to_json()


def incident_severity(sensors: int, k: int) -> str:
    """``"critical"`` once twice the required number of sensors alert, else ``"warning"``.

    >>> incident_severity(3, 3), incident_severity(6, 3)
    ('warning', 'critical')
    """
    return "critical" if sensors >= 2 * k else "warning"


def _us(ts: datetime) -> int:
    return (ts - _EPOCH) // _US


class GroupCorrelator:
    """One group's burst detection (plain object, no Bytewax, no group id needed).

    :meth:`add` takes the group's alerts one by one and returns the members of the
    incident an alert completes: ``(event time in µs, sensor id, score)`` of the alerts of
    the earliest window with ``k`` distinct sensors. :func:`make_incident` builds the alert.

    Args:
        k: Distinct sensors needed for an incident (at least 2).
        window: Event-time window (positive).
        state: A :meth:`state` to resume from.

    >>> t = datetime(2024, 4, 1, tzinfo=timezone.utc)
    >>> def a(sid, minute):
    ...     ts = t + timedelta(minutes=minute)
    ...     return Alert("id", sid, "f", "hst", 0.9, 0.7, ts, ts, {})
    >>> g = GroupCorrelator(k=2, window=timedelta(minutes=5))
    >>> g.add(a("s1", 0)), g.add(a("s1", 1))
    (None, None)
    >>> members = g.add(a("s2", 3))
    >>> [sid for _, sid, _ in members], g.add(a("s3", 4))
    (['s1', 's1', 's2'], None)
    >>> inc = make_incident("north", members, "f", 2, t)
    >>> inc.sensor_id, inc.votes, inc.ts == t, inc.score
    ('fleet/north', {'s1': 0.9, 's2': 0.9}, True, 2.0)
    """

    def __init__(self, k: int, window: timedelta, state: bytes | None = None) -> None:
        if k < 2 or window <= timedelta(0):
            msg = f"need k >= 2 and a positive window, got k={k}, window={window}"
            raise ValueError(msg)
        self.k, self.window = k, window
        self._window_us = window // _US
        self._newest: int | None = None
        self._in_burst = False
        self._recent: list[Entry] = []  # sorted by time; empty during a burst
        if state is not None:
            newest, in_burst, recent = orjson.loads(state)
            self._newest, self._in_burst = newest, in_burst
            self._recent = [(t, s, v) for t, s, v in recent]

    def add(self, alert: Alert) -> list[Entry] | None:
        """Take one of the group's alerts; return the incident's members if it makes one."""
        t = _us(alert.ts)
        newest = self._newest
        if newest is not None and t <= newest - self._window_us:
            return None  # too late: older than the window behind the newest alert
        if newest is None or t > newest:
            if self._in_burst and newest is not None and t - newest >= self._window_us:
                self._in_burst = False  # quiet for a whole window: a new burst may start
            self._newest = newest = t
        if self._in_burst:
            return None
        recent = self._recent
        del recent[: bisect.bisect_right(recent, newest - self._window_us, key=itemgetter(0))]
        bisect.insort(recent, (t, alert.sensor_id, alert.score))
        members = self._first_window()
        if members is not None:
            self._in_burst, self._recent = True, []
        return members

    def _first_window(self) -> list[Entry] | None:
        """The earliest run of alerts spanning < window with >= k distinct sensors."""
        recent, w = self._recent, self._window_us
        seen: dict[str, int] = {}  # sensor -> alerts in recent[start:end]
        end = 0
        for start, (t0, sid0, _) in enumerate(recent):
            while end < len(recent) and recent[end][0] - t0 < w:
                seen[recent[end][1]] = seen.get(recent[end][1], 0) + 1
                end += 1
            if len(seen) >= self.k:
                return recent[start:end]
            seen[sid0] -= 1
            if not seen[sid0]:
                del seen[sid0]
        return None

    def state(self) -> bytes:
        """Compact state: newest event time, burst flag and the window's alerts (JSON)."""
        return orjson.dumps([self._newest, self._in_burst, self._recent])


def make_incident(group: str, members: list[Entry], flow: str, k: int, now: datetime) -> Alert:
    """The incident alert of a group's members (as returned by :meth:`GroupCorrelator.add`)."""
    votes: dict[str, float] = {}
    for _, sid, score in members:
        votes[sid] = max(score, votes.get(sid, score))
    sensor_id = f"fleet/{group}"
    ts = _EPOCH + members[0][0] * _US
    span_s = (members[-1][0] - members[0][0]) / 1e6
    return Alert(
        alert_id=alert_id(flow, sensor_id, FLEET_DETECTOR, ts),
        sensor_id=sensor_id,
        flow=flow,
        detector=FLEET_DETECTOR,
        score=float(len(votes)),
        threshold=float(k),
        ts=ts,
        detected_at=now,
        values={"sensors": float(len(votes)), "alerts": float(len(members)), "span_s": span_s},
        votes=dict(sorted(votes.items())),
        severity=incident_severity(len(votes), k),
    )


class _CorrelateLogic(IdleEvictingLogic[Alert, list[Entry], bytes]):
    def __init__(self, correlator: GroupCorrelator, idle_timeout: timedelta | None) -> None:
        super().__init__(idle_timeout)
        self._correlator = correlator

    def process(self, values: list[Alert]) -> list[list[Entry]]:
        found = (self._correlator.add(a) for a in values)
        return [m for m in found if m is not None]

    def snapshot(self) -> bytes:
        return self._correlator.state()


@operator
def correlate(
    step_id: str,
    up: Stream[Alert],
    group_of: Callable[[str], str | None] | Mapping[str, str],
    *,
    flow: str,
    k: int = 3,
    window: timedelta = timedelta(minutes=5),
    idle_timeout: timedelta | None = timedelta(hours=24),
) -> Stream[Alert]:
    """Emit one fleet incident per burst of alerts from ``k`` sensors of a group.

    Args:
        step_id: Unique ID.
        up: Per-sensor alerts (incidents are alerts too: do not feed them back).
        group_of: Sensor id to group id (a mapping, or a function returning ``None`` for
            sensors without a group).
        flow: Flow name stamped on incidents (part of their ``alert_id``).
        k: Distinct sensors that make an incident (at least 2).
        window: Event-time window the ``k`` alerts must fall in, and the quiet time that
            ends a burst.
        idle_timeout: Forget a group after this much wall time without alerts.

    Returns:
        Unkeyed stream of incidents.
    """
    GroupCorrelator(k, window)  # validate now, not on the first alert
    lookup = group_of.get if isinstance(group_of, Mapping) else group_of

    def by_group(batch: list[Alert]) -> list[tuple[str, Alert]]:
        return [(g, a) for a in batch if (g := lookup(a.sensor_id)) is not None]

    def builder(resume: bytes | None) -> _CorrelateLogic:
        return _CorrelateLogic(GroupCorrelator(k, window, resume), idle_timeout)

    def incidents(batch: list[tuple[str, list[Entry]]]) -> list[Alert]:
        now = datetime.now(timezone.utc)
        return [make_incident(g, members, flow, k, now) for g, members in batch]

    keyed = op.flat_map_batch("by_group", up, by_group)
    found = op.stateful_batch("bursts", keyed, builder)
    return op.flat_map_batch("incidents", found, incidents)
