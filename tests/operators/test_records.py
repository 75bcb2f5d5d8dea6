from __future__ import annotations

import pickle
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest

from operators.alert import alerts_of, make_alert, severity
from operators.records import Alert, Reading, Scored, alert_id
from operators.threshold import apply_threshold

T = datetime(2024, 4, 1, 12, 0, tzinfo=timezone.utc)


def test_records_are_frozen_and_pickle() -> None:
    r = Reading("s1", T, {"pm": 1.0}, "sim")
    with pytest.raises(AttributeError):
        r.sensor_id = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(r)) == r


def test_alert_id_is_deterministic_and_discriminating() -> None:
    base = alert_id("air_quality", "s1", "hst", T)
    assert base == alert_id("air_quality", "s1", "hst", T)
    others = {
        alert_id("pump", "s1", "hst", T),
        alert_id("air_quality", "s2", "hst", T),
        alert_id("air_quality", "s1", "ae", T),
        alert_id("air_quality", "s1", "hst", T.replace(second=1)),
    }
    assert base not in others and len(others) == 4


def test_alert_json_schema_v1() -> None:
    r = Reading("s1", T, {"pm": 900.0}, "sim", ("t",))
    a = make_alert(r, "hst", 0.93, 0.7, "air_quality", T)
    doc = orjson.loads(a.to_json())
    assert set(doc) == {
        "schema",
        "kind",
        "alert_id",
        "sensor_id",
        "flow",
        "detector",
        "score",
        "threshold",
        "ts",
        "detected_at",
        "values",
        "votes",
        "severity",
        "imputed",
    }
    assert doc["schema"] == 1 and doc["severity"] == "critical" and doc["kind"] == "anomaly"
    assert doc["ts"] == "2024-04-01T12:00:00+00:00" and doc["votes"] == {"hst": 0.93}
    assert doc["alert_id"] == alert_id("air_quality", "s1", "hst", T)
    assert isinstance(a, Alert) and a.imputed == ("t",)


def test_threshold_is_strict_and_alerts_follow_flags() -> None:
    rs = tuple(Reading("s", T.replace(minute=i), {"pm": float(i)}, "x") for i in range(4))
    s = apply_threshold(Scored(rs, "hst", np.array([0.7, 0.7000001, 0.2, 0.99])), 0.7)
    assert s.flags is not None and s.flags.tolist() == [False, True, False, True]
    assert [(r.ts.minute, flag) for r, _, flag in s.rows()] == [
        (0, False),
        (1, True),
        (2, False),
        (3, True),
    ]
    alerts = alerts_of(s, "air_quality", T)
    assert [(a.ts.minute, a.severity, a.threshold) for a in alerts] == [
        (1, "warning", 0.7),
        (3, "critical", 0.7),
    ]
    assert alerts_of(Scored(rs, "hst", np.ones(4)), "air_quality", T) == []  # not thresholded
    assert severity(0.84, 0.7) == "warning" and severity(0.85, 0.7) == "critical"
