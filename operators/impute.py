"""Fill missing values with a running mean, with River ``StatImputer`` semantics.

For each configured field, every present value updates that field's running mean (River's
``stats.Mean`` update, bit for bit) and a missing one (``None`` or absent key) is replaced
by the mean of the values seen so far — learn, then transform, as River does. The state
lives per key: key the stream by sensor for per-sensor imputation, or by one constant for
a fleet-wide mean. Unlike River, a field with no history is left missing rather than set
to ``0.0``, and an absent key is treated like ``None`` instead of raising.

Filled fields are named in :attr:`Reading.imputed`; readings that need nothing pass
through unchanged (no copy).

The same keyed step guards event-time order per sensor (``reject_stale``): a reading whose
event time is not after its sensor's last one is not imputed nor scored but becomes an
:class:`Invalid` (``duplicate_reading`` for the same time, ``out_of_order`` for an earlier
one). A broker that resends messages after a crash, or a replay that overlaps what was
already read, so cannot make a model learn a reading twice. The guard costs nothing
extra per key: its state is the sensor's last event time, kept with the running means.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from operator import attrgetter, lt
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.keyed import IdleEvictingLogic
from operators.parse import DUPLICATE_READING, OUT_OF_ORDER, KeyedParseOut, split_keyed
from operators.records import Invalid, Reading

__all__ = ["DEFAULT_IMPUTE_FIELDS", "OrderGuard", "RunningMeanImputer", "impute"]

DEFAULT_IMPUTE_FIELDS = ("temperature", "humidity", "pressure", "pm1.0_cf_1")

_Means = tuple[tuple[float, ...], tuple[float, ...]]
_Last = tuple[tuple[str, float], ...]  # sensor id, last event time (epoch seconds)
_State = tuple[_Means, _Last]
_SENSOR = attrgetter("sensor_id")
_TS = attrgetter("ts")


class RunningMeanImputer:
    """Running-mean imputation of a fixed set of fields (plain object, no Bytewax).

    >>> from datetime import datetime, timezone
    >>> ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> rs = [Reading("s", ts, {"t": v}, "doc") for v in (1.0, 8.0, 3.0, None)]
    >>> out = RunningMeanImputer(["t"]).transform_many(rs)
    >>> [(r.values["t"], r.imputed) for r in out]
    [(1.0, ()), (8.0, ()), (3.0, ()), (4.0, ('t',))]
    """

    def __init__(self, fields: Sequence[str], state: _Means | None = None) -> None:
        self.fields = tuple(fields)
        counts, means = state if state is not None else ((), ())
        self._n = list(counts) or [0.0] * len(self.fields)
        self._mean = list(means) or [0.0] * len(self.fields)

    def transform_many(self, readings: list[Reading]) -> list[Reading]:
        """Learn from and fill each reading in order; return the (maybe new) readings.

        Field by field (each field's mean depends only on its own values, so the order
        of updates per field, and every bit of River's result, is kept), with the
        running count and mean in locals: a column costs one list comprehension and
        one tight loop instead of a dict lookup and two list updates per value.
        """
        fills: dict[int, list[tuple[str, float]]] = {}
        rows = [r.values for r in readings]
        n, mean = self._n, self._mean
        for i, name in enumerate(self.fields):
            column: list[Any] = [row.get(name) for row in rows]
            count, avg = n[i], mean[i]
            if None in column:
                for pos, v in enumerate(column):
                    if v is not None:
                        count += 1.0
                        avg += (1.0 / count) * (v - avg)
                    elif count > 0.0:
                        fills.setdefault(pos, []).append((name, avg))
            else:
                for v in column:
                    count += 1.0
                    avg += (1.0 / count) * (v - avg)
            n[i], mean[i] = count, avg
        if not fills:
            return readings
        out = list(readings)
        for pos, filled in fills.items():
            r = out[pos]
            names = r.imputed + tuple(name for name, _ in filled)
            out[pos] = Reading(r.sensor_id, r.ts, {**r.values, **dict(filled)}, r.source, names,
                               r.received_at)  # fmt: skip
        return out

    def state(self) -> _Means:
        """Compact, immutable state: per-field counts and means."""
        return tuple(self._n), tuple(self._mean)


class OrderGuard:
    """Pass only readings whose event time is after their sensor's last one (plain object).

    >>> from datetime import datetime, timezone
    >>> t = [datetime(2024, 1, 1, 0, m, tzinfo=timezone.utc) for m in range(3)]
    >>> guard = OrderGuard()
    >>> out = guard.admit([Reading("s", ts, {}, "doc") for ts in (t[1], t[2], t[2], t[0])])
    >>> [x.ts.minute if isinstance(x, Reading) else x.reason for x in out]
    [1, 2, 'duplicate_reading', 'out_of_order']
    """

    def __init__(self, state: _Last = ()) -> None:
        self._last = {sid: datetime.fromtimestamp(ts, timezone.utc) for sid, ts in state}

    def admit(self, readings: list[Reading]) -> list[Reading | Invalid]:
        """The readings in order, each later than its sensor's last, else an Invalid."""
        last = self._last
        sensors = set(map(_SENSOR, readings))
        if len(sensors) == 1:  # the usual batch, keyed by sensor: no Python loop
            stamps = list(map(_TS, readings))
            prev = last.get(readings[0].sensor_id)
            if (prev is None or stamps[0] > prev) and all(map(lt, stamps, stamps[1:])):
                last[readings[0].sensor_id] = stamps[-1]
                return readings  # type: ignore[return-value]
        out: list[Reading | Invalid] = []
        for r in readings:
            prev = last.get(r.sensor_id)
            if prev is None or r.ts > prev:
                last[r.sensor_id] = r.ts
                out.append(r)
            else:
                out.append(_stale(r, prev))
        return out

    def state(self) -> _Last:
        """Compact, immutable state: each sensor's last event time (epoch seconds)."""
        return tuple((sid, ts.timestamp()) for sid, ts in self._last.items())


def _stale(r: Reading, prev: datetime) -> Invalid:
    reason = DUPLICATE_READING if r.ts == prev else OUT_OF_ORDER
    detail = f"event time {r.ts.isoformat()} is not after the sensor's last, {prev.isoformat()}"
    payload = {"sensor_id": r.sensor_id, "ts": r.ts.isoformat(), "values": r.values}
    return Invalid(reason, detail, payload, r.source, r.received_at)


class _ImputeLogic(IdleEvictingLogic[Reading, "Reading | Invalid", _State]):
    def __init__(
        self,
        fields: Sequence[str],
        idle_timeout: timedelta | None,
        reject_stale: bool,
        resume: _State | None,
    ) -> None:
        super().__init__(idle_timeout)
        means, last = resume if resume is not None else (None, ())
        self._imputer = RunningMeanImputer(fields, means)
        self._guard = OrderGuard(last) if reject_stale else None

    def process(self, values: list[Reading]) -> list[Reading | Invalid]:
        if self._guard is None:
            return self._imputer.transform_many(values)  # type: ignore[return-value]
        admitted = self._guard.admit(values)
        if admitted is values:
            return self._imputer.transform_many(values)  # type: ignore[return-value]
        readings = [x for x in admitted if type(x) is Reading]
        filled = iter(self._imputer.transform_many(readings))
        return [next(filled) if type(x) is Reading else x for x in admitted]

    def snapshot(self) -> _State:
        return self._imputer.state(), self._guard.state() if self._guard is not None else ()


@operator
def impute(
    step_id: str,
    up: KeyedStream[Reading],
    fields: Sequence[str] = DEFAULT_IMPUTE_FIELDS,
    idle_timeout: timedelta | None = timedelta(hours=24),
    reject_stale: bool = True,
) -> KeyedParseOut:
    """Impute missing values per key with a running mean, guarding event-time order.

    Args:
        step_id: Unique ID.
        up: Readings keyed by sensor id (per-sensor means) or by one constant (fleet).
        fields: The fields to impute.
        idle_timeout: Drop a key's state after this much wall time without readings.
        reject_stale: Refuse a reading whose event time is not after its sensor's last
            (else pass every reading in arrival order).

    Returns:
        ``oks``: the readings, with missing fields filled where a mean exists; ``errs``:
        the readings the order guard refused.
    """
    names = tuple(fields)
    judged = op.stateful_batch(
        "impute", up, lambda resume: _ImputeLogic(names, idle_timeout, reject_stale, resume)
    )
    return split_keyed("split", judged)
