"""Fleet learning for pumps: what each pump gives the fleet, and how a new pump starts.

A pump's ensemble (:class:`~models.ensemble.PumpEnsemble`) waits for a 400-row training
prefix before it judges anything. Pumps of one group share the shape of their normal
noise, not their levels, so a fleet prior here is the *within-pump* law of raw rows, a
first-order vector autoregression (:class:`~models.pump_var.VarModel`) pooled over the
fleet, plus a threshold from the fleet's scores:

- Each :class:`FleetPump` keeps the running mean and co-moment of its normal raw rows
  (prefix rows, then rows nothing alerted on) and the lag-1 co-moment of its pairs of
  consecutive normal rows, and adds every row it learns to its node's
  :class:`PumpNode`: the rows themselves (raw mean and co-moment of the node's union,
  Chan's merge) and the growth of its own co-moments (so the node sums each pump's
  co-moments about its *own* means: the pooled within-pump covariance ``C0`` and lag-1
  cross-covariance ``C1``).
- Its *local score* of a row is ``sqrt(max(innovation, level) / scale)`` of
  :class:`~models.pump_var.VarModel` about the pump's own running normal mean: the row
  against its prediction from the last normal row (or, when that is further back than
  the previous row, the lower of that and the one-step prediction from the previous
  row, so one flagged row does not make its successor look odd), and the mean of the
  last ``LEVEL_WINDOW`` rows (a flagged one among them counted as the row itself, so a
  fault does not linger) against the mean of the pump's earlier normal rows; ``scale`` is
  the pump's own noise scale (:meth:`FleetPump._scale`). A pump adds the local scores of
  its normal rows to the node's KLL sketch (:mod:`models.sketch`) once a model is
  settled (the fleet prior's, or the node's own past ``settle`` rows); the node's
  summary carries the scores of its last two publishing periods.
- A ``"pump"`` summary carries ``mean``/``m2`` (raw, Chan), ``within`` and ``lag``
  (summed), the ``sketch``, ``pumps`` and ``pairs``; merging is exact for the moments
  and within DataSketches' error for the sketch, in any order (:func:`pump_merge`).
- A pump the node has never seen starts with a :class:`PumpPrior`: until its own
  ensemble is trained, a row is judged by the local score against the fleet's ``q``
  quantile of local scores (once the pump has ``window`` normal rows for its mean), and
  the verdict stands for the ensemble's (``votes`` is ``k`` on an alert, the score and
  threshold sit in the Mahalanobis column). Its own prefix then takes over.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from models import sketch
from models.ensemble import EnsembleConfig, EnsembleScores, PumpEnsemble
from models.mahalanobis import OnlineMahalanobis
from models.pump_var import LagMoments, VarModel, trim_limit
from models.summaries import Summary, decode_like, fingerprint

__all__ = ["LEVEL_WINDOW", "MODEL_VERSION", "TRIM", "FleetPump", "PumpNode", "PumpPrior",
           "pump_merge", "pump_template"]  # fmt: skip

MODEL_VERSION = "pump-moments/2"
"""``model_version`` of pump summaries (bump when what they hold changes)."""
SKETCH_K = 800
"""KLL ``k`` of the local-score sketches: the threshold is a tail quantile, so a finer
sketch than DataSketches' default (rank error about 0.4 % instead of 1.33 %)."""
LEVEL_WINDOW = 5
"""Rows whose mean the level score compares with the pump's earlier normal rows."""
SCALE_ROWS = 400
"""One-step innovation scores a pump's noise scale is read from (the latest)."""
SCALE_PRIOR = 10
"""Rows' worth of weight the fleet's noise scale (1) keeps in a pump's scale."""
TRIM = 1e-4  # trim_limit's default
"""Chi-square tail beyond which a row the ensemble let pass is not learned by the fleet
side (nor its score sketched): faults the ensemble missed would lift the fleet's
threshold quantile."""
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


def _full(tri: Floats, d: int) -> Floats:
    m = np.zeros((d, d))
    m[np.triu_indices(d)] = tri
    return np.triu(m) + np.triu(m, 1).T


def pump_template(config: EnsembleConfig, *, flow: str, node: str, group: str) -> Summary:
    """An empty pump summary of pumps with ``config``: what every summary must match."""
    d = len(config.channels)
    params = {"d": d, "channels": list(config.channels), "min_rows": config.window,
              "level_window": LEVEL_WINDOW, "shrinkage": 0.0, "ridge": 1e-9,
              "min_samples": 2, "k": SKETCH_K}  # fmt: skip
    empty = sketch.sketch_of([], SKETCH_K).serialize()
    arrays: dict[str, npt.NDArray[Any]] = {"mean": np.zeros(d), "m2": np.zeros(math.comb(d + 1, 2)),
              "within": np.zeros(math.comb(d + 1, 2)), "lag": np.zeros(d * d),
              "sketch": np.frombuffer(empty, np.uint8)}  # fmt: skip
    return Summary("pump", flow, node, group, MODEL_VERSION, fingerprint("pump", params), 0,
                   datetime.now(timezone.utc).replace(microsecond=0),
                   {**params, "pumps": 0, "pairs": 0, "size": len(empty)}, arrays)  # fmt: skip


def pump_merge(parts: Sequence[Summary]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The merged arrays and the meta counts (``pumps``, ``pairs``, ``size``) of summaries."""
    d = int(parts[0].meta["d"])
    raw = OnlineMahalanobis.merged(*(_raw(p, d) for p in parts))
    state = raw.state()
    pooled = sketch.merged((sketch.from_bytes(p.arrays["sketch"].tobytes()) for p in parts),
                           int(parts[0].meta["k"]))  # fmt: skip
    data = np.frombuffer(pooled.serialize(), np.uint8)
    arrays = {"mean": state["mean"], "m2": state["m2"],
              "within": np.sum([p.arrays["within"] for p in parts], axis=0),
              "lag": np.sum([p.arrays["lag"] for p in parts], axis=0), "sketch": data}  # fmt: skip
    counts = {key: sum(int(p.meta[key]) for p in parts) for key in ("pumps", "pairs")}
    return arrays, {**counts, "size": len(data)}


def _raw(summary: Summary, d: int) -> OnlineMahalanobis:
    return OnlineMahalanobis.from_state({"params": (d, 0.0, 1e-9, 2), "d": d,
                                         "count": summary.count, "mean": summary.arrays["mean"],
                                         "m2": summary.arrays["m2"]})  # fmt: skip


def _model(within: Floats, lag: Floats, rows: int, pairs: int, pumps: int) -> VarModel | None:
    """The pooled autoregression (``None`` under 2 rows and 2 pairs a pump)."""
    if rows - pumps < 2 or pairs - pumps < 2:
        return None
    return VarModel.of(within / (rows - pumps), lag / (pairs - pumps), LEVEL_WINDOW)


@dataclass(frozen=True, eq=False)
class PumpPrior:
    """What a new pump takes from the fleet: the within-pump law and a score threshold."""

    model: VarModel
    threshold: float

    @classmethod
    def of(cls, fleet: Summary, q: float, min_scores: int = 100) -> PumpPrior | None:
        """The prior of a merged summary (``None`` without enough rows or scores)."""
        d = int(fleet.meta["d"])
        model = _model(_full(fleet.arrays["within"], d), fleet.arrays["lag"].reshape(d, d),
                       fleet.count, int(fleet.meta["pairs"]), int(fleet.meta["pumps"]))  # fmt: skip
        scores = sketch.from_bytes(fleet.arrays["sketch"].tobytes())
        if model is None or scores.n < min_scores:
            return None
        return cls(model, float(scores.get_quantile(q)))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as ``C0``, ``C1`` and the threshold (the tables are rebuilt, shared)."""
        return _prior, (self.model.cov, self.model.lag, self.model.window, self.threshold)


def _prior(cov: Floats, lag: Floats, window: int, threshold: float) -> PumpPrior:
    return PumpPrior(VarModel.of(cov, lag, window), threshold)


class PumpNode:
    """A node's sums over its pumps (thread-safe), and the fleet prior it last took."""

    def __init__(self, template: Summary, settle: int = 400) -> None:
        self.template, self.settle = template, settle
        d = int(template.meta["d"])
        self.prior: PumpPrior | None = None
        self._raw = OnlineMahalanobis(d, shrinkage=0.0)
        self._within, self._lag = np.zeros((d, d)), np.zeros((d, d))
        self._pumps = self._pairs = 0
        k = int(template.meta["k"])
        self._sketches = [sketch.sketch_of([], k), sketch.sketch_of([], k)]  # older, newer
        self._own: tuple[int, VarModel | None] = (0, None)
        self._lock = threading.Lock()

    def add(self, rows: Floats, grown: tuple[Floats, Floats, int], new_pump: bool) -> None:
        """Add a pump's newly learned normal ``rows`` and the growth of its co-moments.

        ``grown``: growth of the pump's co-moment, lag-1 co-moment and pair count.
        """
        with self._lock:
            self._raw.learn_many(rows)
            self._within += grown[0]
            self._lag += grown[1]
            self._pairs += grown[2]
            self._pumps += new_pump

    def add_scores(self, scores: Floats) -> None:
        """Add local scores of normal rows."""
        with self._lock:
            self._sketches[1].update(np.asarray(scores, np.float32))

    def model(self) -> VarModel | None:
        """The fleet prior's model, else the node's own pooled one (refreshed as it grows)."""
        if self.prior is not None:
            return self.prior.model
        with self._lock:
            rows, cached = self._own
            if self._raw.count < self.settle:
                return None
            if cached is None or self._raw.count >= 2 * rows:
                cached = _model(self._within, self._lag, self._raw.count, self._pairs,
                                self._pumps)  # fmt: skip
                self._own = (self._raw.count, cached)
        return cached

    def offer(self, data: bytes, q: float) -> Summary | None:
        """Take the fleet's summary bytes as the prior (empty: withdrawn, forget it).

        Raises:
            SummaryError: Refused (the prior in use stays), as by ``decode_like``.
        """
        if not data:
            self.prior = None
            return None
        fleet = decode_like(data, self.template)
        self.prior = PumpPrior.of(fleet, q)
        return fleet

    def summary(self, now: datetime | None = None, *, rotate: bool = True) -> Summary | None:
        """The node's summary (``None`` before any row); ``rotate`` starts a new sketch.

        The sketch holds the scores since the rotation before last: recent ones.
        """
        with self._lock:
            if not self._raw.count:
                return None
            state = self._raw.state()
            k = int(self.template.meta["k"])
            pooled = sketch.merged(self._sketches, k)
            if rotate:
                self._sketches = [self._sketches[1], sketch.sketch_of([], k)]
            within = self._within[np.triu_indices(len(self._within))]
            lag, pumps, pairs = self._lag.ravel(), self._pumps, self._pairs
        t, data = self.template, np.frombuffer(pooled.serialize(), np.uint8)
        stamp = now or datetime.now(timezone.utc).replace(microsecond=0)
        meta = {**t.meta, "pumps": pumps, "pairs": pairs, "size": len(data)}
        return Summary(t.kind, t.flow, t.node, t.group, t.model_version, t.fingerprint,
                       state["count"], stamp, meta, {"mean": state["mean"], "m2": state["m2"],
                       "within": within, "lag": lag, "sketch": data})  # fmt: skip


class FleetPump(PumpEnsemble):
    """A pump's ensemble that contributes to its node and may start from a fleet prior.

    Args:
        config: The ensemble's parameters.
        prior: The fleet prior this pump started from (``None``: it waits for its prefix).
    """

    def __init__(self, config: EnsembleConfig, prior: PumpPrior | None = None) -> None:
        super().__init__(config)
        self.prior = prior
        self.node: PumpNode | None = None  # not part of the state: attached by the caller
        d = len(config.channels)
        self._own = OnlineMahalanobis(d, shrinkage=0.0)
        self._lagged = LagMoments(d)
        self._last: Floats = np.full(d, np.nan)  # the last normal row
        self._prev: Floats = np.full(d, np.nan)  # the last row
        self._since = 0  # rows since the last normal one (0: none yet)
        # the last LEVEL_WINDOW - 1 rows (a ring), which of them were learned, rows seen
        self._recent: Floats = np.zeros((LEVEL_WINDOW - 1, d))
        self._recent_normal: Bools = np.zeros(LEVEL_WINDOW - 1, dtype=bool)
        self._seen_rows = 0
        self._innov: Floats = np.zeros(SCALE_ROWS)  # the last one-step innovation scores
        self._ninnov = 0
        self._counted = False

    def process(self, X: npt.ArrayLike, contexts: Sequence[Hashable] | None = None) -> (
            EnsembleScores):  # fmt: skip
        """The ensemble's verdicts (the prior's during the prefix), learning normal rows."""
        cfg = self.config
        x = np.asarray(X, dtype=np.float64).reshape(-1, len(cfg.channels))
        result = super().process(x, contexts)
        judging = result.training & (self.prior is not None)
        model = self.prior.model if self.prior is not None else (
            self.node.model() if self.node is not None else None)  # fmt: skip
        before = (self._own.state()["m2"], self._lagged.co, self._lagged.n)
        local, flags = np.full(len(x), np.nan), np.zeros(len(x), dtype=bool)
        normal = ~result.alerts
        trim = _trim(len(cfg.channels))
        for i, row in enumerate(x):
            local[i] = self._local(row, model)
            if judging[i] and self.prior is not None:
                flags[i] = local[i] > self.prior.threshold
                normal[i] = not flags[i]
            normal[i] &= not local[i] > trim
            self._learn(row, bool(normal[i]))
        self._contribute(x[normal], before, local[normal])
        if not judging.any():
            return result
        limit = self.prior.threshold if self.prior is not None else math.inf
        return _with_prior(result, judging & np.isfinite(local), local, flags, cfg.k, limit)

    def _local(self, row: Floats, model: VarModel | None) -> float:
        """The local score of ``row`` (NaN until ``window`` normal rows)."""
        own, count = self._own, self._own.count
        if model is None or count < self.config.window:
            return math.nan
        mean = own.mean
        here = row - mean
        step = model.innovation(here, self._prev - mean, 1, count)
        score = step if self._since == 1 else min(
            step, model.innovation(here, self._last - mean, self._since, count))  # fmt: skip
        learned = self._recent_normal
        base = count - int(learned.sum())
        if self._seen_rows >= model.window - 1 and base >= self.config.window:
            own_recent = self._recent[learned].sum(axis=0)
            base_mean = (count * mean - own_recent) / base
            kept = own_recent + (model.window - int(learned.sum())) * row
            shift = kept / model.window - base_mean
            score = max(score, model.level(shift, base))
        return math.sqrt(max(score, 0.0) / self._scale(step, model))

    def _scale(self, step: float, model: VarModel) -> float:
        """The pump's noise variance relative to the fleet's, after this row's innovation.

        The lower quartile of the pump's last ``SCALE_ROWS`` one-step innovation scores
        over chi-square's, every row counted (faults only raise scores, so one that
        covers less than three quarters of them barely moves it, and a pump whose noise
        is wider than the fleet's is not stuck flagging rows it will never learn),
        shrunk toward 1 by ``SCALE_PRIOR`` rows.
        """
        seen = self._ninnov
        self._innov[seen % SCALE_ROWS] = step
        self._ninnov = seen = seen + 1
        n = min(seen, SCALE_ROWS)
        quartile = float(np.partition(self._innov[:n], n // 4)[n // 4])
        ratio = quartile / model.lower_quartile
        return (n * ratio + SCALE_PRIOR) / (n + SCALE_PRIOR)

    def _learn(self, row: Floats, normal: bool) -> None:
        """Move the running values past ``row``; a normal row is learned."""
        self._prev = row
        slot = self._seen_rows % (LEVEL_WINDOW - 1)
        self._recent[slot], self._recent_normal[slot] = row, normal
        self._seen_rows += 1
        if not normal:
            if self._since:
                self._since += 1
            return
        if self._since == 1:
            self._lagged.add(row, self._last)
        self._own.learn_one(row)
        self._last, self._since = row, 1

    def _contribute(self, rows: Floats, before: tuple[Floats, Floats, int],
                    scores: Floats) -> None:  # fmt: skip
        node = self.node
        if node is None or not len(rows):
            return
        d = len(self.config.channels)
        grown = (_full(self._own.state()["m2"] - before[0], d), self._lagged.co - before[1],
                 self._lagged.n - before[2])  # fmt: skip
        node.add(rows, grown, not self._counted)
        self._counted = True
        if len(scores := scores[np.isfinite(scores)]):
            node.add_scores(scores)

    def state(self) -> dict[str, Any]:
        """The ensemble's state, the prior, and the fleet side's running values."""
        lagged = self._lagged
        return {**super().state(), "fleet": {
            "prior": self.prior, "own": self._own.state(),
            "lagged": (lagged.n, lagged.now, lagged.before, lagged.co),
            "rows": (self._last, self._prev, self._recent.copy(), self._recent_normal.copy(),
                     self._seen_rows),
            "since": self._since, "steps": (self._innov.copy(), self._ninnov),
            "counted": self._counted}}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        fleet = state["fleet"]
        self.prior = fleet["prior"]
        self._own = OnlineMahalanobis.from_state(fleet["own"])
        self._lagged = LagMoments(len(self.config.channels))
        lagged = self._lagged
        lagged.n, lagged.now, lagged.before, lagged.co = fleet["lagged"]
        self._last, self._prev, self._recent, self._recent_normal, self._seen_rows = fleet["rows"]
        self._since, self._counted = fleet["since"], fleet["counted"]
        self._innov, self._ninnov = fleet["steps"]


@lru_cache(maxsize=8)
def _trim(d: int) -> float:
    return trim_limit(d, TRIM)


def _with_prior(result: EnsembleScores, rows: Bools, local: Floats, flags: Bools, k: int,
                threshold: float) -> EnsembleScores:  # fmt: skip
    """``result`` with the prior's verdicts on ``rows`` (in the Mahalanobis column)."""
    scores, limits, votes = result.scores.copy(), result.thresholds.copy(), result.votes.copy()
    marks = result.flags.copy()
    scores[rows, 1], limits[rows, 1], marks[rows, 1] = local[rows], threshold, flags[rows]
    votes[rows] = np.where(flags[rows], k, 0)
    alerts = np.where(rows, flags, result.alerts)
    return EnsembleScores(scores, limits, marks, votes, alerts, result.training & ~rows)
