"""Fleet learning through a real mosquitto: three nodes, the aggregator, a sensor joining."""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from dataflows import air_quality, cli, fleet, pump
from dataflows.fleet_status import fleet_command
from dataflows.settings import Settings
from models.summaries import Summary, decode, encode
from operators.fleet_sync import NodeAccumulator, hst_template
from operators.records import Alert
from sources.simulator import Simulator, SimulatorConfig
from tests.integration.broker import (
    Broker,
    FlowRunner,
    Subscriber,
    free_port,
    mqtt_client,
    publish,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GROUP = "g"


def settings(broker: Broker, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"mqtt_url": broker.url(), "alerts_path": "", "metrics_addr": "",
                              "deadletter_path": str(tmp_path / "deadletter.jsonl"),
                              "fleet_sync_group": GROUP, "mqtt_idle_stop_s": 6.0}  # fmt: skip
    return Settings.load(env={}, **(values | overrides))


def aggregator(broker: Broker, tmp_path: Path, **overrides: Any) -> FlowRunner:
    s = settings(broker, tmp_path, mqtt_client_id="aggregator", **overrides)
    return FlowRunner(fleet.build_flow(s), epoch_s=0.2)


def node_summary(node: str, group: str = GROUP, level: float = 10.0, **change: Any) -> bytes:
    new = air_quality.hst_factory(Settings.load(env={}))
    acc = NodeAccumulator(hst_template(new, flow="air_quality", node=node, group=group))
    model = new()
    model.learn_many(np.random.default_rng(1).normal(level, 1.0, (72, 1)))
    masses = model.reference_masses()
    assert masses is not None
    acc.add(masses)
    summary = acc.summary(change.pop("now", None))
    assert summary is not None
    return encode(summary.__class__(**{**summary.__dict__, **change}))


def publish_retained(broker: Broker, items: list[tuple[str, bytes]]) -> None:
    """Publish as nodes do: retained, QoS 1, acknowledged."""
    client = mqtt_client(broker)
    infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def drift_docs(sub: Subscriber) -> list[dict[str, Any]]:
    return [orjson.loads(p) if p else {} for t, p, _, _ in sub.messages if t.endswith("/drift")]


def test_new_sensor_on_node_3_gets_the_fleet_prior_and_flags_its_first_window(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dataflows.fleet_node")
    watch = Subscriber(broker, f"models/air_quality/fleet/{GROUP}/#").start()
    agg = aggregator(broker, tmp_path)
    alerts: list[Alert] = []
    nodes = []
    for i in (1, 2, 3):
        s = settings(broker, tmp_path, source="mqtt", mqtt_topics=(f"n{i}/sensors/+/readings",),
                     mqtt_client_id=f"node{i}", mqtt_node=f"node-{i}", fleet_publish_s=0.3,
                     deadletter_path=str(tmp_path / f"dead{i}.jsonl"))  # fmt: skip
        flow = air_quality.build_flow(s, on_alerts=alerts.extend if i == 3 else None)
        nodes.append(FlowRunner(flow, epoch_s=0.2))
    for i in (1, 2, 3):
        broker.wait_for_log(rf"node{i}\S* \d+ n{i}/sensors/\+/readings")
    for i in (1, 2, 3):  # 150 readings of 3 sensors per node: two windows each
        cfg = SimulatorConfig(sensors=3, duration_s=150 * 120, seed=i, anomaly_rate=0.0)
        publish(broker, [(f"n{i}/sensors/{r['sensor_index']}/readings", orjson.dumps(r))
                         for r in Simulator(cfg).payloads()])  # fmt: skip
    wait_until(lambda: any(len(d.get("nodes", {})) == 3 for d in drift_docs(watch)), 30,
               "a drift document with three nodes")  # fmt: skip
    wait_until(lambda: "node node-3: fleet prior received" in caplog.text, 10, "node 3's prior")

    cfg = SimulatorConfig(sensors=1, duration_s=72 * 120, seed=99, anomaly_rate=0.0,
                          start=datetime(2024, 4, 3, tzinfo=timezone.utc))  # fmt: skip
    rows = [{**r, "sensor_index": 5000} for r in Simulator(cfg).payloads()]
    rows[30]["pm1.0_cf_1"] = 400.0  # an anomaly in the new sensor's first window
    publish(broker, [("n3/sensors/5000/readings", orjson.dumps(r)) for r in rows])
    spike = datetime.fromtimestamp(rows[30]["last_seen"], timezone.utc)
    wait_until(lambda: any(a.sensor_id == "5000" and a.ts == spike for a in alerts), 15,
               "the new sensor's alert on its spike")  # fmt: skip
    fresh = air_quality.hst_factory(Settings.load(env={}))()  # the same data, no prior
    x = np.array([[r["pm1.0_cf_1"]] for r in rows])
    assert fresh.score_learn_many(x).max() == 0.0  # silent for its whole first window

    def merges() -> list[tuple[Summary, int]]:
        return [(decode(p, expect_group=GROUP), len(p)) for t, p, _, _ in watch.messages
                if t == f"models/air_quality/fleet/{GROUP}" and p]  # fmt: skip

    # every sensor's two windows on all three nodes, merged while the flows still run
    # (at the end the aggregator may stop before the nodes' last summaries arrive)
    wait_until(lambda: any(m.meta["windows"] >= 3 * 3 * 2 for m, _ in merges()), 60,
               "a merge of every sensor's windows")  # fmt: skip
    for runner in (*nodes, agg):
        runner.wait(30)
    watch.stop()
    assert all(m.node == "*" and size <= 65_536 for m, size in merges())
    doc = drift_docs(watch)[-1]
    assert set(doc["nodes"]) == {"node-1", "node-2", "node-3"}
    assert all(0.0 <= n["drift"] <= 1.0 for n in doc["nodes"].values())


def test_bad_summaries_are_dead_lettered_with_their_reasons(broker: Broker, tmp_path: Path) -> None:
    dead = Subscriber(broker, "deadletter/fleet").start()
    watch = Subscriber(broker, f"models/air_quality/fleet/{GROUP}/drift").start()
    agg = aggregator(broker, tmp_path, mqtt_idle_stop_s=2.0)
    broker.wait_for_log(r"aggregator\S* \d+ models/air_quality/\+")
    publish_retained(broker, [
        ("models/air_quality/junk", b"{not a summary"),
        ("models/air_quality/big", b"EWSM" + bytes(70_000)),
        ("models/air_quality/other", node_summary("other", group="elsewhere")),
        ("models/air_quality/liar", node_summary("someone-else")),
        ("models/air_quality/old", node_summary("old", model_version="hst-masses/0")),
        ("models/air_quality/ok", node_summary("ok")),
    ])  # fmt: skip
    dead.wait_for(5, 15)
    agg.wait(30)
    reasons = {orjson.loads(p)["origin"]: orjson.loads(p)["reason"] for _, p, _, _ in dead.messages}
    assert reasons == {"models/air_quality/junk": "malformed",
                       "models/air_quality/big": "too_large",
                       "models/air_quality/other": "wrong_group",
                       "models/air_quality/liar": "mismatch",
                       "models/air_quality/old": "wrong_version"}  # fmt: skip
    assert set(drift_docs(watch)[-1]["nodes"]) == {"ok"}
    lines = (tmp_path / "deadletter.jsonl").read_bytes().splitlines()
    assert sorted(orjson.loads(x)["reason"] for x in lines) == sorted(reasons.values())

    out = io.StringIO()
    args = ["fleet", "status", "--broker", broker.url(), "--wait", "0.5"]
    assert fleet_command(cli._parser().parse_args(args), out) == 0
    table = {line.split()[1]: line for line in out.getvalue().splitlines()[1:]}
    assert table["ok"].split()[-1] == "merged" and "1m ago" not in table["ok"]
    assert table["junk"].endswith("invalid: malformed")
    assert table["other"].endswith("not merged")


def test_status_says_when_the_broker_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fleet", "status", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--wait", "0"]
    assert cli.main(args) == 1
    assert "unreachable" in capsys.readouterr().err


def test_a_silent_node_keeps_its_contribution_until_it_expires(
    broker: Broker, tmp_path: Path
) -> None:
    watch = Subscriber(broker, f"models/air_quality/fleet/{GROUP}/drift").start()
    agg = aggregator(broker, tmp_path, fleet_expiry_s=3.0, mqtt_idle_stop_s=6.0)
    broker.wait_for_log(r"aggregator\S* \d+ models/air_quality/\+")
    now = datetime.now(timezone.utc)
    older = node_summary("b", level=30.0, now=now - timedelta(seconds=2))
    publish(broker, [("models/air_quality/a", node_summary("a", now=now)),
                     ("models/air_quality/b", older)])  # fmt: skip
    wait_until(lambda: {"a", "b"} in [set(d.get("nodes", ())) for d in drift_docs(watch)], 10,
               "both nodes merged")  # fmt: skip
    wait_until(lambda: {"a"} in [set(d.get("nodes", ())) for d in drift_docs(watch)], 10,
               "b expired, a kept")  # fmt: skip
    wait_until(lambda: drift_docs(watch)[-1] == {}, 10, "a expired too: the topic cleared")
    agg.wait(30)


def pump_rows(sensor: str, n: int, level: float, seed: int, fault_at: int | None = None) -> list[
        dict[str, Any]]:  # fmt: skip
    """Readings of a synthetic pump: correlated noise of one shape around its own level."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(pump.CHANNELS))) @ np.random.default_rng(0).normal(
        size=(len(pump.CHANNELS),) * 2) + level  # fmt: skip
    if fault_at is not None:
        x[fault_at:, 0] += 8.0
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    return [{"sensor_id": sensor, "ts": (t0 + timedelta(seconds=i)).isoformat(),
             "values": dict(zip(pump.CHANNELS, row.tolist(), strict=True))}
            for i, row in enumerate(x)]  # fmt: skip


def test_pumps_share_their_moments_and_a_joining_pump_starts_from_the_prior(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dataflows.fleet_node")
    watch = Subscriber(broker, f"models/pump/fleet/{GROUP}/#").start()
    agg = aggregator(broker, tmp_path)
    alerts: list[Alert] = []
    for i in (1, 2):
        s = settings(broker, tmp_path, source="mqtt", mqtt_topics=(f"p{i}/sensors/+/readings",),
                     mqtt_client_id=f"pnode{i}", mqtt_node=f"pump-node-{i}", fleet_publish_s=0.3,
                     deadletter_path=str(tmp_path / f"pdead{i}.jsonl"))  # fmt: skip
        FlowRunner(pump.build_flow(s, on_alerts=alerts.extend if i == 2 else None), epoch_s=0.2)
    for i in (1, 2):
        broker.wait_for_log(rf"pnode{i}\S* \d+ p{i}/sensors/\+/readings")
    for i in (1, 2):  # two pumps a node, 300 readings each: all in their training prefix
        rows = [r for j in (1, 2) for r in pump_rows(f"{i}{j}", 300, 10.0 * i + j, i * j)]
        publish(broker, [(f"p{i}/sensors/{r['sensor_id']}/readings", orjson.dumps(r))
                         for r in rows])  # fmt: skip

    def merged() -> Summary | None:
        retained = [p for t, p, _, _ in watch.messages if t == f"models/pump/fleet/{GROUP}"]
        return decode(retained[-1], expect_group=GROUP, expect_kind="pump") if retained else None

    # nodes publish while they still learn: wait for the summary of every pump's rows
    # (1,200 less the rows a prior alerted on, which are not learned)
    wait_until(lambda: (m := merged()) is not None and m.meta["pumps"] == 4 and m.count >= 1100
               and f"node pump-node-2: fleet prior received: group g, {m.count} samples"
               in caplog.text, 20, "node 2's prior from all four pumps")  # fmt: skip
    fleet_prior = merged()
    assert fleet_prior is not None and len(encode(fleet_prior)) <= 65_536
    assert fleet_prior.count <= 1200

    rows = pump_rows("new", 120, 77.0, 9, fault_at=80)  # its own level, a fault at row 80
    publish(broker, [("p2/sensors/new/readings", orjson.dumps(r)) for r in rows])
    fault = datetime.fromisoformat(rows[90]["ts"])
    # rows 90-119: the shifted channel stands out on nearly all
    wait_until(lambda: sum(a.sensor_id == "new" and a.ts >= fault for a in alerts) >= 25, 15,
               "the joining pump's alerts on its fault, before its 400-row prefix")  # fmt: skip
    normal = datetime.fromisoformat(rows[79]["ts"])
    early = [a for a in alerts if a.sensor_id == "new" and a.ts <= normal]
    # the threshold is the 99th percentile of the fleet's 400 sketched local scores (4.09
    # here): about 2 % of normal rows (the score is the larger of two), 4 of the 70 here
    assert len(early) <= 5
    agg.wait(30)
    watch.stop()
