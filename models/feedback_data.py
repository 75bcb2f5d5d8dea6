"""Operators' labels of alerts, read back for retraining (``edgewatch train … --feedback``).

A feedback file holds JSON lines of any of:

- feedback records, as the MQTT ``feedback/<sensor_id>`` messages carry them:
  ``{"alert_id", "label": "true_positive" | "false_positive"}`` (``sensor_id`` optional);
- the pump flow's audit log (``audit_path``): its applied-feedback lines
  (``{"feedback": "<flow>", "sensor_id", "alert_id", "label", "applied_at", …}``) and
  its alert lines (``{"alert_id", "sensor_id", "flow", "detector", "ts", "values",
  "votes", …}``), which carry the values an alert was raised on;
- alert lines as the flow's JSON-lines alert output writes them.

A label is only usable together with its alert's values, so :func:`read_feedback`
matches every label to an alert line of any of the files by ``alert_id``. Every record
either counts as used or as ignored with one reason (:data:`IGNORE_REASONS`); the last
label of an alert wins, an identical repeat (the MQTT message and its audit line) is a
``duplicate``.

>>> import orjson
>>> lines = [{"alert_id": "a" * 24, "label": "false_positive"},
...          {"alert_id": "a" * 24, "sensor_id": "3", "flow": "pump", "detector": "ensemble",
...           "ts": "2020-03-09T10:30:00+00:00", "values": {"x": 1.5}},
...          {"alert_id": "b" * 24, "label": "true_positive"}, {"label": "maybe"}]
>>> fb = parse_feedback_lines(orjson.dumps(x) for x in lines)
>>> [(a.sensor_id, a.values) for a in fb.false_positives], sorted(fb.ignored.items())
([('3', {'x': 1.5})], [('alert_not_found', 1), ('bad_label', 1)])
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["IGNORE_REASONS", "FeedbackSet", "LabelledAlert", "parse_feedback_lines",
           "read_feedback"]  # fmt: skip

LABELS = ("true_positive", "false_positive")
IGNORE_REASONS = {
    "malformed": "not a JSON object with a 24-hex-digit alert_id",
    "bad_label": "label is not true_positive or false_positive",
    "duplicate": "the same label of the same alert again",
    "superseded": "a later label of the same alert replaced it",
    "alert_not_found": "no alert line with this alert_id in the feedback files",
    "other_flow": "the alert is not a pump ensemble alert",
    "missing_channel": "the alert's values lack a channel of the model",
    "unknown_sensor": "no training prefix of the alert's sensor to standardise it by",
    "not_in_training_data": "true positive: no training row at the alert's time",
}
"""Why a feedback record was not used, and what each reason means."""
_HEX = frozenset(string.hexdigits.lower())


@dataclass(frozen=True)
class LabelledAlert:
    """An alert an operator labelled: the sensor, event time and values it was raised on."""

    alert_id: str
    sensor_id: str
    ts: datetime
    values: dict[str, Any]
    label: str


@dataclass
class FeedbackSet:
    """Labelled alerts of some feedback files, and the records that were not usable.

    Attributes:
        false_positives: Alerts confirmed normal, in file order of their labels.
        true_positives: Alerts confirmed anomalous.
        records: Feedback records read (labels, not alert lines).
        ignored: Reason → records not used for it.
    """

    false_positives: list[LabelledAlert] = field(default_factory=list)
    true_positives: list[LabelledAlert] = field(default_factory=list)
    records: int = 0
    ignored: Counter[str] = field(default_factory=Counter)

    def ignore(self, reason: str, count: int = 1) -> None:
        """Count ``count`` records as not used for ``reason`` (one of :data:`IGNORE_REASONS`)."""
        assert reason in IGNORE_REASONS
        self.ignored[reason] += count

    def summary(self, used_fp: int, used_tp: int) -> dict[str, Any]:
        """The ``feedback`` section of a model's metadata."""
        return {"records": self.records, "used": {"false_positive": used_fp,
                "true_positive": used_tp}, "ignored": dict(sorted(self.ignored.items())),
                "reasons": {k: IGNORE_REASONS[k] for k in sorted(self.ignored)}}  # fmt: skip


def _aid(obj: dict[str, Any]) -> str | None:
    aid = obj.get("alert_id")
    ok = type(aid) is str and len(aid) == 24 and set(aid) <= _HEX
    return aid if ok else None


def parse_feedback_lines(lines: Iterable[bytes]) -> FeedbackSet:
    """Labels and alerts of JSON lines, matched by ``alert_id`` (see the module docstring)."""
    out = FeedbackSet()
    alerts: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    for raw in lines:
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is not dict:
            out.records += 1
            out.ignore("malformed")
            continue
        if "values" in obj and "label" not in obj:
            aid = _aid(obj)
            if aid is not None:
                alerts[aid] = obj
            continue
        out.records += 1
        aid = _aid(obj)
        if aid is None:
            out.ignore("malformed" if obj.get("label") in LABELS else "bad_label")
        elif obj.get("label") not in LABELS:
            out.ignore("bad_label")
        elif labels.get(aid) == obj["label"]:
            out.ignore("duplicate")
        else:
            if aid in labels:
                out.ignore("superseded")
            labels[aid] = obj["label"]
    for aid, label in labels.items():
        _match(out, aid, label, alerts.get(aid))
    return out


def _match(out: FeedbackSet, aid: str, label: str, alert: dict[str, Any] | None) -> None:
    if alert is None:
        out.ignore("alert_not_found")
        return
    if alert.get("flow") != "pump" or alert.get("detector") != "ensemble":
        out.ignore("other_flow")
        return
    try:
        ts = datetime.fromisoformat(str(alert["ts"]))
        values = dict(alert["values"])
        sensor = str(alert["sensor_id"])
    except (KeyError, TypeError, ValueError):
        out.ignore("malformed")
        return
    item = LabelledAlert(aid, sensor, ts, values, label)
    (out.false_positives if label == "false_positive" else out.true_positives).append(item)


def read_feedback(paths: Sequence[str | Path]) -> FeedbackSet:
    """:func:`parse_feedback_lines` over every line of ``paths``, in order.

    Labels and the alerts they name may be in different files.
    """

    def lines() -> Iterable[bytes]:
        for path in paths:
            with Path(path).open("rb") as fh:
                yield from fh

    return parse_feedback_lines(lines())
