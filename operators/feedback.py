"""Operator feedback on alerts: ``feedback/<sensor_id>`` messages to :class:`Feedback` records.

A feedback message is ``{"alert_id": "<24 hex digits>", "label": "true_positive" |
"false_positive"}`` on ``<prefix>feedback/<sensor_id>``: the topic names the sensor, the
payload the alert an operator judged. Anything else becomes an :class:`Invalid` with
reason ``malformed_feedback`` (``payload_too_large`` above the size limit) and a detail
saying what is wrong, for the dead-letter stream.

>>> out = parse_feedback_message("feedback/p1", b'{"alert_id": "' + b"a" * 24 +
...                              b'", "label": "false_positive"}', 0.0)
>>> out.sensor_id, out.label
('p1', 'false_positive')
>>> parse_feedback_message("feedback/p1", b'{"label": "maybe"}', 0.0).detail
'label must be true_positive or false_positive, got maybe'
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream, operator

from operators.records import Invalid, RawMessage

__all__ = [
    "FEEDBACK_REASONS",
    "FEEDBACK_TOPIC",
    "LABELS",
    "MALFORMED_FEEDBACK",
    "AppliedFeedback",
    "Feedback",
    "FeedbackOut",
    "parse_feedback",
    "parse_feedback_message",
]

FEEDBACK_TOPIC = "feedback/+"
LABELS = ("true_positive", "false_positive")
MALFORMED_FEEDBACK = "malformed_feedback"
FEEDBACK_REASONS = (MALFORMED_FEEDBACK,)
_MAX_BYTES = 4096
_HEX = frozenset(string.hexdigits.lower())


@dataclass(frozen=True, slots=True)
class Feedback:
    """An operator's label of one alert of one sensor."""

    sensor_id: str
    alert_id: str
    label: str
    origin: str = ""
    received_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AppliedFeedback:
    """Feedback a sensor's model has taken; an audit line of its own (``detector`` field).

    Attributes:
        feedback: The label as received.
        flow: The flow whose model took it.
        detector: The model that took it (``"ensemble"``).
        applied_at: Wall time it was applied.
    """

    feedback: Feedback
    flow: str
    detector: str
    applied_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The audit record: ``{"feedback", "sensor_id", "alert_id", "label", "applied_at"}``."""
        f = self.feedback
        return {"feedback": self.flow, "sensor_id": f.sensor_id, "alert_id": f.alert_id,
                "label": f.label, "applied_at": self.applied_at.isoformat()}  # fmt: skip


def _bad(detail: str, payload: bytes, origin: str, received_at: float) -> Invalid:
    return Invalid(MALFORMED_FEEDBACK, detail, payload, origin, received_at)


def parse_feedback_message(  # noqa: PLR0911 - one return per way to be wrong
    origin: str, payload: bytes | dict[str, Any], received_at: float
) -> Feedback | Invalid:
    """One feedback message to a :class:`Feedback`, or an :class:`Invalid` saying why not."""
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload, default=repr)
    if len(raw) > _MAX_BYTES:
        return Invalid("payload_too_large", f"{len(raw)} bytes > {_MAX_BYTES}", raw, origin,
                       received_at)  # fmt: skip
    parts = origin.split("/")
    sensor = parts[-1] if len(parts) >= 2 and parts[-2] == "feedback" else ""
    if not sensor or len(sensor) > 128 or not sensor.isprintable():
        return _bad(f"topic {origin[:80]!r} is not feedback/<sensor_id>", raw, origin, received_at)
    try:
        obj = orjson.loads(raw) if isinstance(payload, bytes) else payload
    except orjson.JSONDecodeError as exc:
        return _bad(f"not JSON: {exc}", raw, origin, received_at)
    if type(obj) is not dict:
        return _bad("feedback must be a JSON object", raw, origin, received_at)
    aid, label = obj.get("alert_id"), obj.get("label")
    if label not in LABELS:
        detail = f"label must be true_positive or false_positive, got {str(label)[:40]}"
        return _bad(detail, raw, origin, received_at)
    if type(aid) is not str or len(aid) != 24 or not set(aid) <= _HEX:
        return _bad("alert_id must be an alert's 24 hex digits", raw, origin, received_at)
    return Feedback(sensor, aid, str(label), origin, received_at)


@dataclass(frozen=True)
class FeedbackOut:
    """What :func:`parse_feedback` splits into."""

    oks: Stream[Feedback]
    errs: Stream[Invalid]


@operator
def parse_feedback(step_id: str, up: Stream[RawMessage]) -> FeedbackOut:
    """Parse ``feedback/<sensor_id>`` messages; malformed ones go to ``errs``.

    Args:
        step_id: Unique ID.
        up: Raw messages from the feedback topics.

    Returns:
        ``oks``: the feedback records; ``errs``: the malformed messages with their reason.
    """
    parsed = op.map("parse", up, lambda m: parse_feedback_message(*m))
    return FeedbackOut(
        op.filter_map("oks", parsed, lambda x: x if isinstance(x, Feedback) else None),
        op.filter_map("errs", parsed, lambda x: x if isinstance(x, Invalid) else None),
    )
