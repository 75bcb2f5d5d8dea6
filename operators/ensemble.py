"""Score pumps with the voting ensemble, one :class:`PumpEnsemble` per sensor, with feedback.

The operator is keyed by sensor and takes both readings and :class:`Feedback`; each
sensor's ensemble (Half-Space Trees, Mahalanobis distance and an autoencoder voting
``k`` of 3, see :mod:`models.ensemble`) lives in a ``StatefulBatchLogic`` whose snapshot
is the ensemble's pickled state. A batch's readings become one float64 matrix scored by
one ``process`` call, with each reading's threshold context when ``context_of`` is given
(adaptive or fixed thresholds, :mod:`models.ensemble_thresholds`; the thresholds are part
of the snapshot). The ensemble takes finite rows only, so a reading with a field that
imputation could not fill (no value of it seen yet) is not scored but dead-lettered
(``missing_channel``). A feedback record splits the batch there, so the readings before
it are scored with the thresholds in force before it and those after with the adjusted
ones; feedback for a sensor whose ensemble has not finished its training prefix moves
nothing and is dead-lettered (``unapplied_feedback``). Sensors idle for
``idle_timeout`` lose their state.

Alerts (detector ``"ensemble"``) carry, per detector, ``{"score", "threshold", "vote"}``
in ``votes``; ``score`` is the fraction of detectors that voted, ``threshold`` the
fraction needed (``k / 3``; the score reaches it), and severity is ``critical`` when
every detector voted, else ``warning``. Alert ids are
``alert_id(flow, sensor, "ensemble", ts)``, so a replay gives the same ids.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from models.ensemble import DETECTORS, EnsembleScores, PumpEnsemble
from operators.feedback import AppliedFeedback, Feedback
from operators.keyed import IdleEvictingLogic
from operators.records import Alert, Invalid, Reading, Scored, alert_id
from operators.score import features_matrix

__all__ = ["ENSEMBLE", "ENSEMBLE_REASONS", "EnsembleOut", "Judged", "ensemble",
           "ensemble_alerts", "vote_scored"]  # fmt: skip

ENSEMBLE = "ensemble"
MISSING_CHANNEL = "missing_channel"
UNAPPLIED_FEEDBACK = "unapplied_feedback"
ENSEMBLE_REASONS = (MISSING_CHANNEL, UNAPPLIED_FEEDBACK)


@dataclass(frozen=True, slots=True, eq=False)
class Judged:
    """One sensor's readings of a batch with the ensemble's verdicts on them, in order."""

    readings: tuple[Reading, ...]
    result: EnsembleScores


_Out = Judged | AppliedFeedback | Invalid


def ensemble_alerts(j: Judged, flow: str, k: int, now: datetime) -> list[Alert]:
    """The alerts of a judged batch (rows where at least ``k`` detectors voted)."""
    e, n = j.result, len(DETECTORS)
    out = []
    for i in np.flatnonzero(e.alerts).tolist():
        r, voted = j.readings[i], int(e.votes[i])
        votes = {d: {"score": float(e.scores[i, c]), "threshold": float(e.thresholds[i, c]),
                     "vote": bool(e.flags[i, c])} for c, d in enumerate(DETECTORS)}  # fmt: skip
        out.append(Alert(
            alert_id=alert_id(flow, r.sensor_id, ENSEMBLE, r.ts), sensor_id=r.sensor_id,
            flow=flow, detector=ENSEMBLE, score=voted / n, threshold=k / n, ts=r.ts,
            detected_at=now, values=r.values, votes=votes,
            severity="critical" if voted == n else "warning", imputed=r.imputed,
        ))  # fmt: skip
    return out


def vote_scored(j: Judged, k: int) -> Scored:
    """The batch as a :class:`Scored` (score: fraction of detectors voting) for metrics."""
    e, n = j.result, len(DETECTORS)
    scores = e.votes.astype(np.float64) / n
    return Scored(j.readings, ENSEMBLE, scores, np.full(len(scores), k / n), e.alerts.copy())


class _EnsembleLogic(IdleEvictingLogic["Reading | Feedback", _Out, bytes]):
    def __init__(
        self,
        model: PumpEnsemble,
        channels: tuple[str, ...],
        flow: str,
        idle_timeout: timedelta | None,
        observe_seconds: Callable[[float], None] | None,
        context_of: Callable[[Reading], Hashable] | None = None,
    ) -> None:
        super().__init__(idle_timeout)
        self._model, self._channels, self._flow = model, channels, flow
        self._observe, self._context_of = observe_seconds, context_of

    def _judge(self, readings: list[Reading], out: list[_Out]) -> None:
        x = features_matrix(readings, self._channels)
        ok = np.isfinite(x).all(axis=1)
        if not ok.all():
            keep = ok.tolist()
            out.extend(_missing(r, self._channels) for r, g in zip(readings, keep, strict=True)
                       if not g)  # fmt: skip
            readings, x = [r for r, g in zip(readings, keep, strict=True) if g], x[ok]
            if not readings:
                return
        ctx = None if self._context_of is None else [self._context_of(r) for r in readings]
        t0 = time.perf_counter()
        result = self._model.process(x, ctx)
        if self._observe is not None:
            self._observe(time.perf_counter() - t0)
        out.append(Judged(tuple(readings), result))

    def _feedback(self, f: Feedback) -> _Out:
        if not self._model.trained:
            detail = f"sensor {f.sensor_id}'s ensemble is still in its training prefix"
            payload = {"alert_id": f.alert_id, "label": f.label}
            return Invalid(UNAPPLIED_FEEDBACK, detail, payload, f.origin, f.received_at)
        self._model.feedback(f.label)
        return AppliedFeedback(f, self._flow, ENSEMBLE, datetime.now(timezone.utc))

    def process(self, values: list[Reading | Feedback]) -> list[_Out]:
        out: list[_Out] = []
        pending: list[Reading] = []
        for v in values:
            if type(v) is Feedback:
                if pending:
                    self._judge(pending, out)
                    pending = []
                out.append(self._feedback(v))
            else:
                pending.append(v)  # type: ignore[arg-type]
        if pending:
            self._judge(pending, out)
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps(self._model, protocol=pickle.HIGHEST_PROTOCOL)


def _missing(r: Reading, channels: tuple[str, ...]) -> Invalid:
    absent = [c for c in channels if not np.isfinite(r.values.get(c) or np.nan)]
    detail = f"no value (nor a running mean to impute) for {', '.join(absent)}"
    payload = {"sensor_id": r.sensor_id, "ts": r.ts.isoformat(), "values": r.values}
    return Invalid(MISSING_CHANNEL, detail, payload, r.source, r.received_at)


@dataclass(frozen=True)
class EnsembleOut:
    """What :func:`ensemble` splits into."""

    scored: KeyedStream[Scored]
    """Every reading, scored by the fraction of detectors voting (for metrics)."""
    alerts: Stream[Alert]
    feedback: Stream[AppliedFeedback]
    """Feedback the sensors' ensembles took."""
    errs: Stream[Invalid]
    """Readings with a missing channel and feedback that could not be applied."""


@operator
def ensemble(
    step_id: str,
    up: KeyedStream[Reading | Feedback],
    new_model: Callable[[], PumpEnsemble],
    channels: Sequence[str],
    *,
    flow: str,
    k: int,
    idle_timeout: timedelta | None = timedelta(hours=24),
    observe_seconds: Callable[[float], None] | None = None,
    context_of: Callable[[Reading], Hashable] | None = None,
    restore_model: Callable[[bytes], PumpEnsemble] | None = None,
) -> EnsembleOut:
    """Score each pump's readings with its own ensemble and apply feedback to it.

    Args:
        step_id: Unique ID.
        up: Readings and feedback, keyed by sensor id.
        new_model: Builds a fresh ensemble for a sensor seen for the first time.
        channels: The reading fields, in the ensemble's column order.
        flow: Flow name stamped on alerts (part of their ids) and on applied feedback.
        k: Detectors that must vote for an alert (the ensemble's own ``k``).
        idle_timeout: Drop a sensor's ensemble after this much wall time without input.
        observe_seconds: Called with the wall time of every ``process`` call.
        context_of: A reading's threshold context (``models.thresholds.context_key``),
            for adaptive or fixed thresholds; ``None``: no contexts.
        restore_model: Rebuilds a sensor's ensemble from its snapshot (default: unpickle).

    Returns:
        The scored readings, the alerts and the applied feedback.
    """
    names = tuple(channels)

    def build(resume: bytes | None) -> _EnsembleLogic:
        if resume is None:
            model = new_model()
        else:
            model = (restore_model or pickle.loads)(resume)
        return _EnsembleLogic(model, names, flow, idle_timeout, observe_seconds, context_of)

    judged = op.stateful_batch("ensemble", up, build)

    def alerts(batch: list[tuple[str, _Out]]) -> list[Alert]:
        now = datetime.now(timezone.utc)
        return [a for _, j in batch if type(j) is Judged for a in ensemble_alerts(j, flow, k, now)]

    def scored(batch: list[tuple[str, _Out]]) -> list[tuple[str, Scored]]:
        return [(key, vote_scored(j, k)) for key, j in batch if type(j) is Judged]

    def applied(batch: list[tuple[str, _Out]]) -> list[AppliedFeedback]:
        return [f for _, f in batch if type(f) is AppliedFeedback]

    def errs(batch: list[tuple[str, _Out]]) -> list[Invalid]:
        return [e for _, e in batch if type(e) is Invalid]

    return EnsembleOut(
        op.flat_map_batch("scored", judged, scored),
        op.flat_map_batch("alerts", judged, alerts),
        op.flat_map_batch("feedback", judged, applied),
        op.flat_map_batch("errs", judged, errs),
    )
