"""The pump flow against a real mosquitto: readings in, alerts out, operator feedback in."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from dataflows.inputs import iter_messages
from dataflows.pump import SKAB_DIR, build_flow
from dataflows.settings import Settings
from sinks.metrics import counter_values, metrics
from sources.files import skab_source
from tests.integration.broker import Broker, FlowRunner, Subscriber, publish, wait_until

SKAB = SKAB_DIR / "1.csv"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not SKAB.is_file(), reason="no SKAB valve1 data"),
]
CUT = 640  # this pump's first alerts come from row 579 on


def readings() -> list[tuple[str, bytes]]:
    return [("site1/sensors/1/readings", orjson.dumps(payload))
            for _, payload, _ in iter_messages(skab_source([SKAB]))]  # fmt: skip


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_feedback_raises_the_pumps_thresholds_and_is_logged_counted_and_audited(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dataflows.pump")
    settings = Settings.load(
        env={}, source="mqtt", mqtt_url=broker.url(), mqtt_prefix="site1/",
        mqtt_client_id="pump-under-test", mqtt_idle_stop_s=8.0, mqtt_node="edge-test",
        alerts_path=str(tmp_path / "alerts.jsonl"), deadletter_path=str(tmp_path / "dead.jsonl"),
        audit_path=str(tmp_path / "audit.jsonl"), metrics_addr="",
    )  # fmt: skip
    before = counter_values(metrics().feedback)
    alerts = Subscriber(broker, "site1/alerts/#").start()
    dead = Subscriber(broker, "site1/deadletter/#").start()
    flow = FlowRunner(build_flow(settings), epoch_s=0.2)
    broker.wait_for_log(r"\npump-under-test-feedback 1 site1/feedback/\+")
    broker.wait_for_log(r"\npump-under-test 1 site1/sensors/\+/readings")
    data = readings()
    publish(broker, data[:CUT])
    first = orjson.loads(alerts.wait_for(1, timeout=20)[0][1])
    assert first["sensor_id"] == "1" and first["detector"] == "ensemble"

    bad = [
        ("site1/feedback/1", b"{oops"),
        ("site1/feedback/1", orjson.dumps({"alert_id": first["alert_id"], "label": "meh"})),
        ("site1/feedback/1", orjson.dumps({"alert_id": "nope", "label": "true_positive"})),
    ]
    good = orjson.dumps({"alert_id": first["alert_id"], "label": "false_positive"})
    publish(broker, [*bad, ("site1/feedback/1", good)])
    wait_until(lambda: any("feedback" in a for a in lines(tmp_path / "audit.jsonl")), 10,
               "the applied feedback in the audit log")  # fmt: skip
    publish(broker, data[CUT:])
    flow.wait(40)

    got = [orjson.loads(p) for _, p, _, _ in alerts.messages]
    assert all(t == "site1/alerts/1" for t, _, _, _ in alerts.messages)
    assert {a["alert_id"] for a in got} == {a["alert_id"] for a in lines(tmp_path / "alerts.jsonl")}
    early = [a for a in got if a["ts"] <= first["ts"]]
    late = [a for a in got if a["ts"] > orjson.loads(data[CUT][1])["ts"]]
    assert early and late
    for det in ("hst", "mahalanobis", "autoencoder"):  # false positive: thresholds x 1.1
        assert {a["votes"][det]["threshold"] for a in early} == {first["votes"][det]["threshold"]}
        assert {round(a["votes"][det]["threshold"] / first["votes"][det]["threshold"], 9)
                for a in late} == {1.1}  # fmt: skip

    audit = lines(tmp_path / "audit.jsonl")
    applied = [a for a in audit if "feedback" in a]
    assert [(a["sensor_id"], a["alert_id"], a["label"]) for a in applied] == [
        ("1", first["alert_id"], "false_positive")
    ]
    assert applied[0]["feedback"] == "pump" and applied[0]["applied_at"]
    assert {a["delivered_to"] == ["jsonl", "mqtt"] for a in audit} == {True}
    after = counter_values(metrics().feedback)
    assert after[("pump", "false_positive")] - before.get(("pump", "false_positive"), 0) == 1
    assert any("false_positive" in r.getMessage() and first["alert_id"] in r.getMessage()
               for r in caplog.records)  # fmt: skip

    letters = [orjson.loads(p) for t, p, _, _ in dead.wait_for(len(bad))]
    assert all(t == "site1/deadletter/pump" for t, _, _, _ in dead.messages)
    assert [d["reason"] for d in letters] == ["malformed_feedback"] * 3
    assert [d["origin"] for d in letters] == ["site1/feedback/1"] * 3
