"""Adaptive anomaly thresholds: per context, a quantile of recent normal scores.

An :class:`AdaptiveThreshold` serves one sensor (one detector's scores). The caller keys
every score by a *context*, any hashable value: an hour of day, an operating mode, a
season, or a tuple of those from :func:`context_key`. In ``mode="quantile"`` a context's
threshold is ``quantile_q(its last window scores) * factor * adjustment``; a context with
fewer than ``min_count`` scores falls back to the sensor-wide window (scores of all
contexts), and that to the fixed ``initial`` threshold. In ``mode="fixed"`` it is the seed's
rule, ``initial * context factor * factor * adjustment``, and nothing is learned.

Thresholds are read before scores are learned, and a score is learned only when the
caller marks it normal and it is at most ``learn_limit`` times its threshold: a detector
does not learn from its clear alerts. The limit is 2, not 1, because a q-quantile needs the
``1 - q`` of normal scores above it: learning only scores under the threshold makes it
collapse (simulated, exponential scores, ``q=0.99``: from 4.6, the true quantile, to 0.3
in 100,000 scores); with 2 it stays within a few percent. Do not feed the scores of a
detector still warming up (HST's first window, a Mahalanobis model not yet ``ready``): a
window of zeros gives a zero threshold that no later score is learned under.

:meth:`AdaptiveThreshold.feedback` takes an operator's label: a false positive multiplies
its context's adjustment by ``fp_step`` (and learns the score as normal), a true positive
divides it by ``tp_step``; adjustments stay within ``bounds``.

Windows are float32 arrays of at most ``window`` scores per context plus one for the
sensor: bounded memory whatever the stream. Pickled, with 24 hour contexts full at
``window=512``, about 51 KB (13 KB at 128, 210 bytes empty).

>>> from datetime import datetime, timezone
>>> seed = AdaptiveThreshold(mode="fixed", initial=0.15, factors={
...     "summer": 1.05, "autumn": 0.95, "winter": 0.95, "spring": 0.95, 8: 1.1, 9: 1.1, 10: 1.1})
>>> ts = datetime(2024, 7, 1, 9, 30, tzinfo=timezone.utc)
>>> context_key(ts, by=("season", "hour"))
('summer', 9)
>>> round(seed.threshold(("summer", 9)), 5), round(seed.threshold(("winter", 3)), 5)
(0.17325, 0.1425)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models._state import SnapshotState

__all__ = ["AdaptiveThreshold", "context_key", "day_part", "hour_of_day", "season"]

Floats = npt.NDArray[np.float64]
_SEASONS = ("winter", "spring", "summer", "autumn")


def hour_of_day(ts: datetime, tz: tzinfo | None = None) -> int:
    """Hour (0-23) of a tz-aware ``ts``, in ``tz`` (the site's zone) or in its own zone."""
    return _local(ts, tz).hour


def day_part(ts: datetime, tz: tzinfo | None = None, day: tuple[int, int] = (7, 19)) -> str:
    """``"day"`` from hour ``day[0]`` up to ``day[1]``, else ``"night"``."""
    return "day" if day[0] <= _local(ts, tz).hour < day[1] else "night"


def season(ts: datetime, tz: tzinfo | None = None, *, southern: bool = False) -> str:
    """Meteorological season (December-February is winter in the north).

    >>> from datetime import datetime, timezone
    >>> season(datetime(2024, 1, 5, tzinfo=timezone.utc)), season(
    ...     datetime(2024, 1, 5, tzinfo=timezone.utc), southern=True)
    ('winter', 'summer')
    """
    return _SEASONS[(_local(ts, tz).month // 3 + 2 * southern) % 4]


def context_key(
    ts: datetime,
    mode_value: Hashable = None,
    by: Sequence[str] = ("hour",),
    tz: tzinfo | None = None,
) -> tuple[Hashable, ...]:
    """A context: one part per name in ``by``, in that order.

    Names are ``"hour"`` (int), ``"daypart"``, ``"season"`` (str) and ``"mode"`` (the
    caller's ``mode_value``, e.g. an operating mode read from a field).
    """
    parts: dict[str, Callable[[datetime, tzinfo | None], Hashable]] = {
        "hour": hour_of_day, "daypart": day_part, "season": season}  # fmt: skip
    key: list[Hashable] = []
    for name in by:
        if name == "mode":
            key.append(mode_value)
        elif name in parts:
            key.append(parts[name](ts, tz))
        else:
            msg = f"unknown context part {name!r}: use hour, daypart, season or mode"
            raise ValueError(msg)
    return tuple(key)


def _local(ts: datetime, tz: tzinfo | None) -> datetime:
    if ts.tzinfo is None:
        msg = "timestamps must be tz-aware"
        raise ValueError(msg)
    return ts.astimezone(tz) if tz is not None else ts


class AdaptiveThreshold(SnapshotState):
    """Thresholds of one sensor's scores, per context.

    Args:
        mode: ``"quantile"`` (learned) or ``"fixed"`` (the seed's multiplicative factors).
        q: Quantile of recent normal scores that sets a threshold, in ``(0, 1]``.
        factor: Multiplier of every threshold.
        initial: Threshold before ``min_count`` scores (``inf``: no alert before); in
            fixed mode, the base threshold, which must be finite.
        window: Scores kept per context (and for the sensor-wide fallback).
        min_count: Scores a window needs before its quantile is used, in ``[1, window]``.
        learn_limit: Normal scores above ``learn_limit`` times their threshold are not
            learned; at least 1.
        factors: Fixed mode: context factors. A context found as a key takes its factor;
            a tuple context takes the product of its parts' factors (1 where absent), so
            parts must be unambiguous (hour ``8`` and mode ``8`` share a factor).
        fp_step: Adjustment multiplier of a false positive, at least 1.
        tp_step: Adjustment divisor of a true positive, at least 1.
        bounds: ``(low, high)`` of adjustments, with ``0 < low <= 1 <= high``.

    Raises:
        ValueError: On an argument out of range.
    """

    def __init__(
        self, mode: Literal["quantile", "fixed"] = "quantile", q: float = 0.99,
        factor: float = 1.0, initial: float = math.inf, window: int = 512, min_count: int = 64,
        learn_limit: float = 2.0, factors: Mapping[Hashable, float] | None = None,
        fp_step: float = 1.1, tp_step: float = 1.05, bounds: tuple[float, float] = (0.5, 4.0),
    ) -> None:  # fmt: skip
        checks = (
            (mode in {"quantile", "fixed"}, f"mode must be 'quantile' or 'fixed', got {mode!r}"),
            (0.0 < q <= 1.0, f"q must be in (0, 1], got {q}"),
            (factor > 0.0, f"factor must be positive, got {factor}"),
            (initial > 0.0 and (mode == "quantile" or math.isfinite(initial)),
             f"initial must be positive, and finite in fixed mode, got {initial}"),
            (1 <= min_count <= window, f"need 1 <= min_count <= window, got {min_count}, {window}"),
            (learn_limit >= 1.0, f"learn_limit must be at least 1, got {learn_limit}"),
            (min(fp_step, tp_step) >= 1.0, f"steps must be at least 1, got {fp_step}, {tp_step}"),
            (0.0 < bounds[0] <= 1.0 <= bounds[1], f"need 0 < low <= 1 <= high, got {bounds}"),
        )  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.mode = mode
        self.q = q
        self.factor = factor
        self.initial = initial
        self.window = window
        self.min_count = min_count
        self.learn_limit = learn_limit
        self.factors = factors
        self.fp_step = fp_step
        self.tp_step = tp_step
        self.bounds = bounds
        self._rings: dict[Hashable, npt.NDArray[np.float32]] = {}  # last scores, oldest first
        self._all: npt.NDArray[np.float32] = np.empty(0, dtype=np.float32)
        self._adjust: dict[Hashable, float] = {}
        self._cache: dict[Hashable, float] = {}  # quantiles, dropped on learn

    def threshold(self, context: Hashable) -> float:
        """The threshold in force for ``context``."""
        if self.mode == "fixed":
            base = self.initial * self._fixed_factor(context)
        else:
            base = self._quantile(context)
        return base * self.factor * self._adjust.get(context, 1.0)

    def thresholds_for(self, contexts: Sequence[Hashable]) -> Floats:
        """Thresholds in force for each of ``contexts``."""
        return np.array([self.threshold(context) for context in contexts], dtype=np.float64)

    def update_many(
        self,
        scores: npt.ArrayLike,
        contexts: Sequence[Hashable],
        is_normal: npt.ArrayLike | None = None,
    ) -> Floats:
        """Return the thresholds in force, then learn the normal scores under the limit.

        Compare ``scores > returned`` for alerts. A score is learned if ``is_normal`` (all
        true when ``None``) and it is finite and at most ``learn_limit`` times its
        threshold. Within a batch, all thresholds are those before the batch.
        """
        values = np.asarray(scores, dtype=np.float64).reshape(len(contexts))
        limits = self.thresholds_for(contexts)
        if self.mode == "fixed":
            return limits
        learn = np.isfinite(values) & (values <= limits * self.learn_limit)
        if is_normal is not None:
            learn &= np.asarray(is_normal, dtype=bool).reshape(len(contexts))
        rows = np.flatnonzero(learn).tolist()
        groups: dict[Hashable, list[int]] = {}
        for i in rows:
            groups.setdefault(contexts[i], []).append(i)
        self._learn({context: values[group] for context, group in groups.items()}, values[rows])
        return limits

    def feedback(
        self, label: Literal["false_positive", "true_positive"], score: float, context: Hashable
    ) -> None:
        """Adjust ``context``'s threshold from an operator's label of an alert.

        A false positive raises it (adjustment times ``fp_step``) and learns ``score`` as
        normal; a true positive lowers it (adjustment divided by ``tp_step``).
        """
        low, high = self.bounds
        adjust = self._adjust.get(context, 1.0)
        if label == "false_positive":
            adjust = min(high, adjust * self.fp_step)
            if self.mode == "quantile" and math.isfinite(score):
                self._learn({context: np.array([score])}, np.array([score]))
        elif label == "true_positive":
            adjust = max(low, adjust / self.tp_step)
        else:
            msg = f"label must be 'false_positive' or 'true_positive', got {label!r}"
            raise ValueError(msg)
        self._adjust[context] = adjust

    def adjustment(self, context: Hashable) -> float:
        """The feedback adjustment of ``context`` (1 without feedback)."""
        return self._adjust.get(context, 1.0)

    def window_size(self, context: Hashable | None = None) -> int:
        """Scores held for ``context`` (the sensor-wide window when ``None``)."""
        return len(self._all if context is None else self._rings.get(context, ()))

    def state(self) -> dict[str, Any]:
        """Compact state: parameters, adjustments, the windows' scores as float32 bytes."""
        params = (self.mode, self.q, self.factor, self.initial, self.window,
                  self.min_count, self.learn_limit, self.factors, self.fp_step,
                  self.tp_step, self.bounds)  # fmt: skip
        keys = list(self._rings)
        rings = [self._all, *(self._rings[k] for k in keys)]
        return {"params": params, "keys": keys, "sizes": [len(r) for r in rings],
                "scores": np.concatenate(rings).tobytes(), "adjust": self._adjust}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        flat = np.frombuffer(state["scores"], dtype=np.float32)
        ends = np.cumsum(state["sizes"]).tolist()
        rings = [flat[a:b].copy() for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        self._all, self._rings = rings[0], dict(zip(state["keys"], rings[1:], strict=True))
        self._adjust = dict(state["adjust"])

    def _fixed_factor(self, context: Hashable) -> float:
        factors = self.factors or {}
        if context in factors:
            return factors[context]
        if isinstance(context, tuple):
            return math.prod(factors.get(part, 1.0) for part in context)
        return 1.0

    def _quantile(self, context: Hashable) -> float:
        """The q-quantile of the context's window, else the sensor's, else ``initial``."""
        ring = self._rings.get(context)
        if ring is not None and len(ring) >= self.min_count:
            key: Hashable = ("ctx", context)
        elif len(self._all) >= self.min_count:
            key, ring = ("all",), self._all
        else:
            return self.initial
        cached = self._cache.get(key)
        if cached is None:
            position = (len(ring) - 1) * self.q  # np.quantile's default (linear), by a
            low, high = int(position), min(int(position) + 1, len(ring) - 1)  # partial sort
            part = np.partition(ring, (low, high)).astype(np.float64)
            cached = part[low] + (part[high] - part[low]) * (position - low)
            self._cache[key] = cached
        return float(cached)

    def _learn(self, groups: dict[Hashable, Floats], scores: Floats) -> None:
        """Append each context's scores to its window, and all of them to the sensor's."""
        for context, values in groups.items():
            self._rings[context] = self._push(self._rings.get(context), values)
            self._cache.pop(("ctx", context), None)
        if len(scores):
            self._all = self._push(self._all, scores)
            self._cache.pop(("all",), None)

    def _push(
        self, window: npt.NDArray[np.float32] | None, scores: Floats
    ) -> npt.NDArray[np.float32]:
        """The last ``self.window`` scores of ``window`` then ``scores``, in a new array."""
        scores = scores[len(scores) - self.window :] if len(scores) > self.window else scores
        old = () if window is None else window[max(0, len(window) + len(scores) - self.window) :]
        return np.concatenate([old, scores.astype(np.float32)]).astype(np.float32)
