"""The thresholds of one pump's three ensemble detectors: prefix, adaptive or fixed.

Every detector starts from its *base*: the ``q`` quantile of its smoothed out-of-sample
scores on the sensor's training prefix (:mod:`models.ensemble`). Then, by ``mode``:

- ``"prefix"``: the base, for good.
- ``"adaptive"``: per context (hour of day, operating mode, season, see
  :func:`models.thresholds.context_key`), the ``q`` quantile of the detector's recent
  normal scores in that context (:class:`models.thresholds.AdaptiveThreshold`, seeded
  with the prefix scores and their contexts); a context with fewer than ``min_count``
  scores uses the sensor-wide window, and that the base. Each score is compared with the
  threshold in force *before* it and then learned (unless it is above twice that), row by
  row, so results do not depend on how rows are batched.
- ``"fixed"``: the seed's rule, base × the product of the context's ``factors``.

Operator feedback multiplies a detector's threshold in every context by 1.1 (false
positive) or 1/1.05 (true positive), within 0.5x..4x.

>>> t = EnsembleThresholds("fixed", factors=(("summer", 1.05), (9, 1.1)))
>>> t.fit(np.array([1.0, 2.0, 4.0]), [np.zeros(1)] * 3, [[()]] * 3)
>>> thr, flags = t.judge(2, np.array([4.5, 4.5]), [("summer", 9), ("winter", 3)])
>>> thr.round(3).tolist(), flags.tolist()
([4.62, 4.0], [False, True])
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models._state import SnapshotState
from models.thresholds import AdaptiveThreshold

__all__ = ["FEEDBACK_BOUNDS", "FEEDBACK_STEPS", "SEED_FACTORS", "THRESHOLD_MODES",
           "EnsembleThresholds", "parse_factors"]  # fmt: skip

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
FEEDBACK_STEPS = {"false_positive": 1.1, "true_positive": 1 / 1.05}
FEEDBACK_BOUNDS = (0.5, 4.0)
THRESHOLD_MODES = ("prefix", "adaptive", "fixed")
SEED_FACTORS = ("summer=1.05", "autumn=0.95", "winter=0.95", "spring=0.95", "8=1.1", "9=1.1",
                "10=1.1")  # fmt: skip
"""The seed article's ``adaptive_threshold``: 1.05 in summer (0.95 otherwise), 1.1 from
8 to 10 o'clock; use with context ``season,hour``."""


def parse_factors(items: Sequence[str]) -> tuple[tuple[Hashable, float], ...]:
    """``PART=FACTOR`` items to pairs; a PART of digits is an hour (an int).

    >>> parse_factors(["summer=1.05", "8=1.1", "pumping = 1.2"])
    (('summer', 1.05), (8, 1.1), ('pumping', 1.2))

    Raises:
        ValueError: An item is not ``PART=FACTOR`` with a positive number.
    """
    out: list[tuple[Hashable, float]] = []
    for item in items:
        part, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = -1.0
        if not sep or not part.strip() or not factor > 0:
            msg = f"threshold factor {item!r} is not PART=FACTOR with a positive FACTOR"
            raise ValueError(msg)
        key = part.strip()
        out.append((int(key) if key.isdigit() else key, factor))
    return tuple(out)


class EnsembleThresholds(SnapshotState):
    """Thresholds of one sensor's detectors; see the module docstring.

    Args:
        mode: ``"prefix"``, ``"adaptive"`` or ``"fixed"``.
        q: Quantile of the adaptive windows.
        window: Scores an adaptive window keeps per context.
        min_count: Scores a context needs before its own quantile is used.
        factors: Fixed mode: ``(context part, factor)`` pairs (hour ints, season,
            day part or mode strings).
    """

    def __init__(
        self,
        mode: Literal["prefix", "adaptive", "fixed"] = "prefix",
        q: float = 0.99,
        window: int = 512,
        min_count: int = 64,
        factors: tuple[tuple[Hashable, float], ...] = (),
    ) -> None:
        if mode not in THRESHOLD_MODES:
            msg = f"threshold mode must be one of {', '.join(THRESHOLD_MODES)}, got {mode!r}"
            raise ValueError(msg)
        self.mode, self.q, self.window, self.min_count = mode, q, window, min_count
        self.factors = factors
        self.base: Floats = np.zeros(0)
        self.adjust: Floats = np.ones(0)
        self.context: list[AdaptiveThreshold] = []

    def fit(
        self, base: Floats, oos: Sequence[Floats], contexts: Sequence[Sequence[Hashable]]
    ) -> None:
        """Set the bases; adaptive mode learns each detector's ``oos`` prefix scores."""
        self.base, self.adjust = np.asarray(base, dtype=np.float64), np.ones(len(base))
        if self.mode == "prefix":
            return
        kind: Literal["quantile", "fixed"] = "quantile" if self.mode == "adaptive" else "fixed"
        self.context = [
            AdaptiveThreshold(mode=kind, q=self.q, initial=max(float(b), 1e-12),
                              window=self.window, min_count=self.min_count,
                              factors=dict(self.factors))
            for b in self.base
        ]  # fmt: skip
        if self.mode == "adaptive":
            for a, scores, ctx in zip(self.context, oos, contexts, strict=True):
                ok = np.isfinite(scores)
                a.update_many(scores[ok], [c for c, g in zip(ctx, ok, strict=True) if g])

    def judge(
        self, j: int, scores: Floats, contexts: Sequence[Hashable], stop: int | None = None
    ) -> tuple[Floats, Bools]:
        """Thresholds and flags (score above threshold) of detector ``j``'s rows, in order.

        With ``stop``, rows are judged until the ``stop``-th unflagged one (included) and
        only those are returned (and, adaptive, learned).
        """
        n = len(scores)
        if self.mode != "adaptive":
            if self.mode == "prefix":
                thr = np.full(n, self.base[j] * self.adjust[j])
            else:
                thr = self.context[j].thresholds_for(contexts) * self.adjust[j]
            flags = scores > thr
            if stop is not None:
                unflagged = np.flatnonzero(~flags)
                n = n if len(unflagged) < stop else int(unflagged[stop - 1]) + 1
            return thr[:n], flags[:n]
        thr, flags, calm = np.empty(n), np.zeros(n, dtype=bool), 0
        learner = self.context[j]
        for i in range(n):
            thr[i] = learner.update_many(scores[i : i + 1], contexts[i : i + 1])[0] * self.adjust[j]
            flags[i] = scores[i] > thr[i]
            calm += not flags[i]
            if stop is not None and calm == stop:
                return thr[: i + 1], flags[: i + 1]
        return thr, flags

    def feedback(self, label: str) -> None:
        """Move every detector's thresholds by an operator's label (see module docstring).

        Raises:
            ValueError: On a label other than ``false_positive`` / ``true_positive``.
        """
        if label not in FEEDBACK_STEPS:
            msg = f"label must be 'false_positive' or 'true_positive', got {label!r}"
            raise ValueError(msg)
        self.adjust = np.clip(self.adjust * FEEDBACK_STEPS[label], *FEEDBACK_BOUNDS)

    def state(self) -> dict[str, Any]:
        """Parameters, bases, feedback adjustments and the adaptive windows."""
        params = (self.mode, self.q, self.window, self.min_count, self.factors)
        return {"params": params, "base": self.base, "adjust": self.adjust,
                "context": [a.state() for a in self.context]}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        self.base, self.adjust = state["base"], state["adjust"]
        self.context = [AdaptiveThreshold.from_state(s) for s in state["context"]]
