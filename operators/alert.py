"""Turn anomalous scores into :class:`Alert` records with deterministic ids."""

from __future__ import annotations

from datetime import datetime, timezone

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators.records import Alert, Scored, alert_id

__all__ = ["make_alert", "severity", "to_alert"]


def severity(score: float, threshold: float) -> str:
    """``"critical"`` in the upper half of the range above the threshold, else ``"warning"``.

    >>> severity(0.75, 0.7), severity(0.9, 0.7)
    ('warning', 'critical')
    """
    return "critical" if score >= threshold + (1.0 - threshold) / 2.0 else "warning"


def make_alert(s: Scored, flow: str, detected_at: datetime) -> Alert:
    """Build the alert for one anomalous score."""
    r = s.reading
    return Alert(
        alert_id=alert_id(flow, r.sensor_id, s.detector, r.ts),
        sensor_id=r.sensor_id,
        flow=flow,
        detector=s.detector,
        score=s.score,
        threshold=s.threshold,
        ts=r.ts,
        detected_at=detected_at,
        values=r.values,
        votes={s.detector: s.score},
        severity=severity(s.score, s.threshold),
        imputed=r.imputed,
    )


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
        return [make_alert(s, flow, now) for _, s in batch if s.is_anomaly]

    return op.flat_map_batch("alerts", up, alerts)
