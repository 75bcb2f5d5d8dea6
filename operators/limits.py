"""Per-sensor rate limit: readings above a sensor's allowance become dead letters.

A token bucket per sensor: it holds ``rate * window_s`` tokens, refills at ``rate`` per
second and every reading takes one; a reading that finds the bucket empty becomes an
:class:`Invalid` with reason ``rate_limited``. So a sensor may burst up to
``rate * window_s`` readings and keeps ``rate`` readings/s on average. The clock is each
reading's receive time (its event time when the source gave none).

The state is two floats per sensor. A bucket left alone for ``window_s`` is full again,
exactly like a new one, so the sensor's state is discarded after ``window_s`` of wall
time without readings: memory follows the sensors that are sending right now.

>>> from datetime import datetime, timezone
>>> ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> bucket = TokenBucket(rate=1.0, window_s=2.0)
>>> [bucket.take(t) for t in (0.0, 0.1, 0.2, 1.2, 1.3)]
[True, True, False, True, False]
"""

from __future__ import annotations

from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.keyed import IdleEvictingLogic, key_batched
from operators.parse import RATE_LIMITED, ParseOut, split
from operators.records import Invalid, Reading

__all__ = ["TokenBucket", "rate_limit"]

_State = tuple[float, float]  # tokens left, clock of the last refill


class TokenBucket:
    """``rate`` tokens per second, at most ``rate * window_s`` kept (plain object).

    Args:
        rate: Tokens added per second; positive.
        window_s: Seconds of tokens the bucket holds (the largest burst).
        state: ``(tokens, clock)`` from :meth:`state` to resume from; ``None``: full.
    """

    def __init__(self, rate: float, window_s: float, state: _State | None = None) -> None:
        if rate <= 0 or window_s <= 0:
            msg = f"rate ({rate}) and window_s ({window_s}) must be positive"
            raise ValueError(msg)
        self.rate, self.window_s = rate, window_s
        self.capacity = max(1.0, rate * window_s)
        self._tokens, self._clock = state if state is not None else (self.capacity, -1.0)

    def take(self, now: float) -> bool:
        """Take one token at clock ``now`` (seconds); ``False`` when none is left."""
        if self._clock < 0.0:
            self._clock = now
        elif now > self._clock:  # a clock running backwards adds nothing
            self._tokens = min(self.capacity, self._tokens + (now - self._clock) * self.rate)
            self._clock = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def state(self) -> _State:
        """Compact, immutable state: tokens left and the clock of the last refill."""
        return self._tokens, self._clock


class _RateLogic(IdleEvictingLogic[Reading, "Reading | Invalid", _State]):
    def __init__(self, rate: float, window_s: float, resume: _State | None) -> None:
        super().__init__(timedelta(seconds=window_s))
        self._bucket = TokenBucket(rate, window_s, resume)

    def process(self, values: list[Reading]) -> list[Reading | Invalid]:
        take = self._bucket.take
        out: list[Reading | Invalid] = []
        for r in values:
            if take(r.received_at or r.ts.timestamp()):
                out.append(r)
            else:
                out.append(self._refused(r))
        return out

    def _refused(self, r: Reading) -> Invalid:
        detail = f"sensor {r.sensor_id[:40]!r} over {self._bucket.rate:g} readings/s"
        payload = {"sensor_id": r.sensor_id, "ts": r.ts.isoformat(), "values": r.values}
        return Invalid(RATE_LIMITED, detail, payload, r.source, r.received_at)

    def snapshot(self) -> _State:
        return self._bucket.state()


@operator
def rate_limit(step_id: str, up: Stream[Reading], rate: float, window_s: float) -> ParseOut:
    """Pass at most ``rate`` readings/s per sensor (bursts up to ``rate * window_s``).

    Args:
        step_id: Unique ID.
        up: Readings (any keying: the limit is always per sensor id).
        rate: Readings per second each sensor may send; positive.
        window_s: Seconds over which the rate is averaged (the bucket size).

    Returns:
        ``oks`` with the readings in order per sensor, ``errs`` with the refused ones.
    """
    TokenBucket(rate, window_s)  # validate now, not in the first worker batch
    keyed = key_batched("key", up, _sensor_id)
    judged = op.stateful_batch("bucket", keyed, lambda s: _RateLogic(rate, window_s, s))
    return split("split", op.map("unkey", judged, _value))


def _sensor_id(r: Reading) -> str:
    return r.sensor_id


def _value(kv: tuple[str, Reading | Invalid]) -> Reading | Invalid:
    return kv[1]
