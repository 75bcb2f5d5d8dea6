"""Fill missing values with a running mean, with River ``StatImputer`` semantics.

For each configured field, every present value updates that field's running mean (River's
``stats.Mean`` update, bit for bit) and a missing one (``None`` or absent key) is replaced
by the mean of the values seen so far — learn, then transform, as River does. The state
lives per key: key the stream by sensor for per-sensor imputation, or by one constant for
a fleet-wide mean. Unlike River, a field with no history is left missing rather than set
to ``0.0``, and an absent key is treated like ``None`` instead of raising.

Filled fields are named in :attr:`Reading.imputed`; readings that need nothing pass
through unchanged (no copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.keyed import IdleEvictingLogic
from operators.records import Reading

__all__ = ["DEFAULT_IMPUTE_FIELDS", "RunningMeanImputer", "impute"]

DEFAULT_IMPUTE_FIELDS = ("temperature", "humidity", "pressure", "pm1.0_cf_1")

_State = tuple[tuple[float, ...], tuple[float, ...]]


class RunningMeanImputer:
    """Running-mean imputation of a fixed set of fields (plain object, no Bytewax).

    >>> from datetime import datetime, timezone
    >>> ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> rs = [Reading("s", ts, {"t": v}, "doc") for v in (1.0, 8.0, 3.0, None)]
    >>> out = RunningMeanImputer(["t"]).transform_many(rs)
    >>> [(r.values["t"], r.imputed) for r in out]
    [(1.0, ()), (8.0, ()), (3.0, ()), (4.0, ('t',))]
    """

    def __init__(self, fields: Sequence[str], state: _State | None = None) -> None:
        self.fields = tuple(fields)
        counts, means = state if state is not None else ((), ())
        self._n = list(counts) or [0.0] * len(self.fields)
        self._mean = list(means) or [0.0] * len(self.fields)

    def transform_many(self, readings: list[Reading]) -> list[Reading]:
        """Learn from and fill each reading in order; return the (maybe new) readings."""
        fields, n, mean = self.fields, self._n, self._mean
        out = readings
        for pos, r in enumerate(readings):
            values = r.values
            missing: list[int] | None = None
            for i, name in enumerate(fields):
                v = values.get(name)
                if v is None:
                    (missing := missing if missing is not None else []).append(i)
                else:
                    n[i] += 1.0
                    mean[i] += (1.0 / n[i]) * (v - mean[i])
            if missing is not None:
                filled = [i for i in missing if n[i] > 0.0]
                if filled:
                    new = dict(values)
                    for i in filled:
                        new[fields[i]] = mean[i]
                    names = r.imputed + tuple(fields[i] for i in filled)
                    if out is readings:
                        out = list(readings)
                    out[pos] = Reading(r.sensor_id, r.ts, new, r.source, names, r.received_at)
        return out

    def state(self) -> _State:
        """Compact, immutable state: per-field counts and means."""
        return tuple(self._n), tuple(self._mean)


class _ImputeLogic(IdleEvictingLogic[Reading, Reading, _State]):
    def __init__(
        self, fields: Sequence[str], idle_timeout: timedelta | None, resume: _State | None
    ) -> None:
        super().__init__(idle_timeout)
        self._imputer = RunningMeanImputer(fields, resume)

    def process(self, values: list[Reading]) -> list[Reading]:
        return self._imputer.transform_many(values)

    def snapshot(self) -> _State:
        return self._imputer.state()


@operator
def impute(
    step_id: str,
    up: KeyedStream[Reading],
    fields: Sequence[str] = DEFAULT_IMPUTE_FIELDS,
    idle_timeout: timedelta | None = timedelta(hours=24),
) -> KeyedStream[Reading]:
    """Impute missing values per key with a running mean.

    Args:
        step_id: Unique ID.
        up: Readings keyed by sensor id (per-sensor means) or by one constant (fleet).
        fields: The fields to impute.
        idle_timeout: Drop a key's means after this much wall time without readings.

    Returns:
        The readings, with missing fields filled where a mean exists.
    """
    names = tuple(fields)
    return op.stateful_batch("impute", up, lambda resume: _ImputeLogic(names, idle_timeout, resume))
