"""Feedback files for retraining: labels matched to alerts, every record used or explained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from models.feedback_data import IGNORE_REASONS, read_feedback

A, B, C, D = ("a" * 24, "b" * 24, "c" * 24, "d" * 24)


def alert(aid: str, sensor: str = "7", **extra: Any) -> dict[str, Any]:
    return {"schema": 1, "alert_id": aid, "sensor_id": sensor, "flow": "pump",
            "detector": "ensemble", "score": 1.0, "threshold": 0.67,
            "ts": "2020-03-09T10:30:00+00:00", "values": {"Current": 1.5},
            "votes": {}, "model_version": "pump-ensemble-1+ae:numpy"} | extra  # fmt: skip


def write(path: Path, items: list[Any]) -> Path:
    path.write_bytes(b"\n".join(i if isinstance(i, bytes) else orjson.dumps(i) for i in items))
    return path


def test_labels_from_messages_and_the_audit_log_meet_their_alerts(tmp_path: Path) -> None:
    audit = write(tmp_path / "audit.jsonl", [
        alert(A), alert(B, sensor="8"), alert(C, flow="air_quality", detector="hst"),
        {"feedback": "pump", "sensor_id": "7", "alert_id": A, "label": "false_positive",
         "applied_at": "2020-03-09T10:31:00+00:00", "model_version": None},
    ])  # fmt: skip
    labels = write(tmp_path / "feedback.jsonl", [
        {"alert_id": A, "label": "false_positive"},  # the MQTT message of the audited label
        {"alert_id": B, "label": "false_positive"},
        {"alert_id": B, "label": "true_positive"},  # changed its mind: the last one counts
        {"alert_id": C, "label": "false_positive"},
        {"alert_id": D, "label": "false_positive"},
        {"alert_id": "xyz", "label": "false_positive"},
        {"alert_id": A, "label": "maybe"},
        b"{not json", b"", b"[1, 2]",
    ])  # fmt: skip
    fb = read_feedback([audit, labels])
    assert [(a.alert_id, a.sensor_id, a.values) for a in fb.false_positives] == [
        (A, "7", {"Current": 1.5})]  # fmt: skip
    assert [a.alert_id for a in fb.true_positives] == [B]
    assert fb.records == 10  # labels and junk lines, not the alert lines
    assert dict(fb.ignored) == {"duplicate": 1, "superseded": 1, "other_flow": 1,
                                "alert_not_found": 1, "malformed": 3, "bad_label": 1}  # fmt: skip
    summary = fb.summary(used_fp=1, used_tp=0)
    assert summary["used"] == {"false_positive": 1, "true_positive": 0}
    assert summary["reasons"]["superseded"] == IGNORE_REASONS["superseded"]
    assert fb.records == sum(fb.ignored.values()) + len(fb.false_positives) + len(fb.true_positives)
