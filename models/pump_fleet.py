"""Fleet learning for pumps: what each pump gives the fleet, and how a new pump starts.

A pump's ensemble (:class:`~models.ensemble.PumpEnsemble`) waits for a 400-row training
prefix before it judges anything. Pumps of one group share the shape of their normal
noise, not their levels, so a fleet prior here is the *within-pump* covariance of the
ensemble's features (the causal trailing means), pooled over the fleet, plus a
threshold from the fleet's scores:

- Each :class:`FleetPump` keeps an :class:`~models.mahalanobis.OnlineMahalanobis` of its
  normal feature rows (prefix rows, then rows nothing alerted on) and adds every row it
  learns to its node's :class:`PumpNode`: the rows themselves (raw mean and co-moment of
  the node's union, Chan's merge) and the growth of its own co-moment (so the node sums
  each pump's co-moment about its *own* mean: the pooled within-pump co-moment).
- Its *local score* of a row is the Mahalanobis distance of the features from the pump's
  own running normal mean under the pooled within-pump covariance (shrunk toward its
  diagonal), smoothed by the ensemble's ``smooth``. A pump adds the local scores of its
  normal rows to the node's KLL sketch (:mod:`models.sketch`) once a covariance is
  settled (the fleet prior's, or the node's own past ``settle`` rows); the node's summary
  carries the scores of its last two publishing periods.
- A ``"pump"`` summary carries ``mean``/``m2`` (raw, Chan), ``within`` (summed), the
  ``sketch``, and ``pumps``; merging is exact for the moments and within DataSketches'
  error for the sketch, in any order (:func:`pump_merge`).
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
from typing import Any

import numpy as np
import numpy.typing as npt

from models import sketch
from models.ensemble import EnsembleConfig, EnsembleScores, PumpEnsemble
from models.mahalanobis import OnlineMahalanobis
from models.pump_detectors import trailing_mean
from models.summaries import Summary, decode_like, fingerprint

__all__ = ["MODEL_VERSION", "SHRINKAGE", "FleetPump", "PumpNode", "PumpPrior", "pump_merge",
           "pump_template"]  # fmt: skip

MODEL_VERSION = "pump-moments/1"
"""``model_version`` of pump summaries (bump when what they hold changes)."""
SKETCH_K = 800
"""KLL ``k`` of the local-score sketches: the threshold is a tail quantile, so a finer
sketch than DataSketches' default (rank error about 0.4 % instead of 1.33 %)."""
SHRINKAGE = 0.1
"""Weight of the diagonal in the pooled within-pump covariance (scale-free shrinkage)."""
Floats = npt.NDArray[np.float64]


def _full(tri: Floats, d: int) -> Floats:
    m = np.zeros((d, d))
    m[np.triu_indices(d)] = tri
    return np.triu(m) + np.triu(m, 1).T


def pump_template(config: EnsembleConfig, *, flow: str, node: str, group: str) -> Summary:
    """An empty pump summary of pumps with ``config``: what every summary must match."""
    d = len(config.channels)
    params = {"d": d, "channels": list(config.channels), "window": config.window,
              "smooth": config.smooth, "within_shrinkage": SHRINKAGE, "shrinkage": 0.0,
              "ridge": 1e-9,
              "min_samples": 2, "k": SKETCH_K}  # fmt: skip
    empty = sketch.sketch_of([], SKETCH_K).serialize()
    arrays: dict[str, npt.NDArray[Any]] = {"mean": np.zeros(d), "m2": np.zeros(math.comb(d + 1, 2)),
              "within": np.zeros(math.comb(d + 1, 2)),
              "sketch": np.frombuffer(empty, np.uint8)}  # fmt: skip
    return Summary("pump", flow, node, group, MODEL_VERSION, fingerprint("pump", params), 0,
                   datetime.now(timezone.utc).replace(microsecond=0),
                   {**params, "pumps": 0, "size": len(empty)}, arrays)  # fmt: skip


def pump_merge(parts: Sequence[Summary]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The merged arrays and the meta counts (``pumps``, ``size``) of pump summaries."""
    d = int(parts[0].meta["d"])
    raw = OnlineMahalanobis.merged(*(_raw(p, d) for p in parts))
    state = raw.state()
    pooled = sketch.merged((sketch.from_bytes(p.arrays["sketch"].tobytes()) for p in parts),
                           int(parts[0].meta["k"]))  # fmt: skip
    data = np.frombuffer(pooled.serialize(), np.uint8)
    arrays = {"mean": state["mean"], "m2": state["m2"],
              "within": np.sum([p.arrays["within"] for p in parts], axis=0),
              "sketch": data}  # fmt: skip
    return arrays, {"pumps": sum(int(p.meta["pumps"]) for p in parts), "size": len(data)}


def _raw(summary: Summary, d: int) -> OnlineMahalanobis:
    return OnlineMahalanobis.from_state({"params": (d, 0.0, 1e-9, 2), "d": d,
                                         "count": summary.count, "mean": summary.arrays["mean"],
                                         "m2": summary.arrays["m2"]})  # fmt: skip


def _whitening(within: Floats, rows: int, pumps: int, shrink: float = SHRINKAGE) -> (
        Floats | None):  # fmt: skip
    """``W`` with ``W W^T`` the inverse shrunk pooled covariance; ``None`` under 2 rows a pump."""
    if rows - pumps < 2:
        return None
    cov = within / (rows - pumps)
    cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov))
    values, vectors = np.linalg.eigh(cov)
    floor = max(float(values.max()) * 1e-12, 1e-300)
    out: Floats = vectors / np.sqrt(np.maximum(values, floor))
    return out


@dataclass(frozen=True, eq=False)
class PumpPrior:
    """What a new pump takes from the fleet: a whitening and a threshold of local scores."""

    whitening: Floats
    threshold: float

    @classmethod
    def of(cls, fleet: Summary, q: float, min_scores: int = 100) -> PumpPrior | None:
        """The prior of a merged summary (``None`` without enough rows or scores)."""
        d = int(fleet.meta["d"])
        within, pumps = _full(fleet.arrays["within"], d), int(fleet.meta["pumps"])
        w = _whitening(within, fleet.count, pumps, float(fleet.meta["within_shrinkage"]))
        scores = sketch.from_bytes(fleet.arrays["sketch"].tobytes())
        if w is None or scores.n < min_scores:
            return None
        return cls(w, float(scores.get_quantile(q)))


class PumpNode:
    """A node's sums over its pumps (thread-safe), and the fleet prior it last took."""

    def __init__(self, template: Summary, settle: int = 400) -> None:
        self.template, self.settle = template, settle
        d = int(template.meta["d"])
        self.prior: PumpPrior | None = None
        self._raw = OnlineMahalanobis(d, shrinkage=0.0)
        self._within = np.zeros((d, d))
        self._pumps = 0
        k = int(template.meta["k"])
        self._sketches = [sketch.sketch_of([], k), sketch.sketch_of([], k)]  # older, newer
        self._own: tuple[int, Floats | None] = (0, None)
        self._lock = threading.Lock()

    def add(self, rows: Floats, grown: Floats, new_pump: bool) -> None:
        """Add a pump's newly learned normal ``rows`` and the growth of its co-moment."""
        with self._lock:
            self._raw.learn_many(rows)
            self._within += grown
            self._pumps += new_pump

    def add_scores(self, scores: Floats) -> None:
        """Add local scores of normal rows."""
        with self._lock:
            self._sketches[1].update(np.asarray(scores, np.float32))

    def whitening(self) -> Floats | None:
        """The fleet prior's whitening, else the node's own pooled one (refreshed as it grows)."""
        if self.prior is not None:
            return self.prior.whitening
        with self._lock:
            rows, cached = self._own
            if self._raw.count < self.settle:
                return None
            if cached is None or self._raw.count >= 2 * rows:
                cached = _whitening(self._within, self._raw.count, self._pumps)
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
            within, pumps = self._within[np.triu_indices(len(self._within))], self._pumps
        t, data = self.template, np.frombuffer(pooled.serialize(), np.uint8)
        stamp = now or datetime.now(timezone.utc).replace(microsecond=0)
        return Summary(t.kind, t.flow, t.node, t.group, t.model_version, t.fingerprint,
                       state["count"], stamp, {**t.meta, "pumps": pumps, "size": len(data)},
                       {"mean": state["mean"], "m2": state["m2"], "within": within,
                        "sketch": data})  # fmt: skip


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
        self._fhist: Floats = np.full((config.window - 1, d), np.nan)
        self._sbuf: Floats = np.full(config.smooth - 1, np.nan)
        self._counted = False

    def process(self, X: npt.ArrayLike, contexts: Sequence[Hashable] | None = None) -> (
            EnsembleScores):  # fmt: skip
        """The ensemble's verdicts (the prior's during the prefix), learning normal rows."""
        cfg = self.config
        x = np.asarray(X, dtype=np.float64).reshape(-1, len(cfg.channels))
        result = super().process(x, contexts)
        feats = trailing_mean(self._fhist, x, cfg.window) if len(x) else x
        self._fhist = np.concatenate([self._fhist, x])[len(x) :]
        judging = result.training & (self.prior is not None)
        whitening = self.prior.whitening if self.prior is not None else (
            self.node.whitening() if self.node is not None else None)  # fmt: skip
        before = self._own.state()
        local, flags = np.full(len(x), np.nan), np.zeros(len(x), dtype=bool)
        normal = ~result.alerts
        for i, row in enumerate(feats):
            local[i] = self._local(row, whitening)
            if judging[i] and self.prior is not None:
                flags[i] = local[i] > self.prior.threshold
                normal[i] = not flags[i]
            if normal[i]:
                self._own.learn_one(row)
        self._contribute(feats[normal], before, local[normal])
        if not judging.any():
            return result
        limit = self.prior.threshold if self.prior is not None else math.inf
        return _with_prior(result, judging & np.isfinite(local), local, flags, cfg.k, limit)

    def _local(self, row: Floats, whitening: Floats | None) -> float:
        """The smoothed local score of ``row`` (NaN until ``window`` normal rows)."""
        raw = math.nan
        if whitening is not None and self._own.count >= self.config.window:
            raw = float(np.linalg.norm((row - self._own.mean) @ whitening))
        buf = np.append(self._sbuf, raw)
        self._sbuf = buf[1:]
        seen = buf[np.isfinite(buf)]
        return float(seen.mean()) if len(seen) and math.isfinite(raw) else math.nan

    def _contribute(self, rows: Floats, before: dict[str, Any], scores: Floats) -> None:
        node = self.node
        if node is None or not len(rows):
            return
        d = len(self.config.channels)
        grown = _full(self._own.state()["m2"] - before["m2"], d)
        node.add(rows, grown, not self._counted)
        self._counted = True
        if len(scores := scores[np.isfinite(scores)]):
            node.add_scores(scores)

    def state(self) -> dict[str, Any]:
        """The ensemble's state, the prior, and the fleet side's running values."""
        prior = None if self.prior is None else (self.prior.whitening, self.prior.threshold)
        return {**super().state(), "fleet": {"prior": prior, "own": self._own.state(),
                                             "fhist": self._fhist, "sbuf": self._sbuf,
                                             "counted": self._counted}}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        fleet = state["fleet"]
        self.prior = None if fleet["prior"] is None else PumpPrior(*fleet["prior"])
        self._own = OnlineMahalanobis.from_state(fleet["own"])
        self._fhist, self._sbuf, self._counted = fleet["fhist"], fleet["sbuf"], fleet["counted"]


Bools = npt.NDArray[np.bool_]


def _with_prior(result: EnsembleScores, rows: Bools, local: Floats, flags: Bools, k: int,
                threshold: float) -> EnsembleScores:  # fmt: skip
    """``result`` with the prior's verdicts on ``rows`` (in the Mahalanobis column)."""
    scores, limits, votes = result.scores.copy(), result.thresholds.copy(), result.votes.copy()
    marks = result.flags.copy()
    scores[rows, 1], limits[rows, 1], marks[rows, 1] = local[rows], threshold, flags[rows]
    votes[rows] = np.where(flags[rows], k, 0)
    alerts = np.where(rows, flags, result.alerts)
    return EnsembleScores(scores, limits, marks, votes, alerts, result.training & ~rows)
