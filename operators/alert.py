"""Turn anomalous scores into :class:`Alert` records with deterministic ids."""

from __future__ import annotations

from datetime import datetime, timezone

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators.records import Alert, Reading, Scored, alert_id

__all__ = ["alerts_of", "make_alert", "severity", "to_alert"]


def severity(score: float, threshold: float) -> str:
    """``"critical"`` in the upper half of the range above the threshold, else ``"warning"``.

    >>> severity(0.75, 0.7), severity(0.9, 0.7)
    ('warning', 'critical')
    """
    return "critical" if score >= threshold + (1.0 - threshold) / 2.0 else "warning"


def make_alert(
    r: Reading, detector: str, score: float, threshold: float, flow: str, detected_at: datetime
) -> Alert:
    """Build the alert for one anomalous reading."""
    return Alert(
        alert_id=alert_id(flow, r.sensor_id, detector, r.ts),
        sensor_id=r.sensor_id,
        flow=flow,
        detector=detector,
        score=score,
        threshold=threshold,
        ts=r.ts,
        detected_at=detected_at,
        values=r.values,
        votes={detector: score},
        severity=severity(score, threshold),
        imputed=r.imputed,
    )


def alerts_of(s: Scored, flow: str, detected_at: datetime) -> list[Alert]:
    """The alerts of a thresholded :class:`Scored` batch (none before thresholding)."""
    if s.flags is None or s.thresholds is None or not s.flags.any():
        return []
    return [
        make_alert(s.readings[i], s.detector, float(s.scores[i]), float(s.thresholds[i]),
                   flow, detected_at)
        for i in np.flatnonzero(s.flags).tolist()
    ]  # fmt: skip


@operator
def to_alert(step_id: str, up: KeyedStream[Scored], flow: str) -> Stream[Alert]:
    """Keep the anomalous scores and make an :class:`Alert` of each.

    Args:
        step_id: Unique ID.
        up: Scored readings after ``threshold``.
        flow: The flow name stamped on every alert (part of the ``alert_id``).

    Returns:
        Unkeyed stream of alerts.
    """

    def alerts(batch: list[tuple[str, Scored]]) -> list[Alert]:
        now = datetime.now(timezone.utc)
        return [a for _, s in batch for a in alerts_of(s, flow, now)]

    return op.flat_map_batch("alerts", up, alerts)
