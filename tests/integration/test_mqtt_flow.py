"""The air-quality flow against a real mosquitto: readings in, alerts and dead letters out."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.testing import run_main

from dataflows.air_quality import build_flow
from dataflows.settings import Settings
from operators.records import Alert, Scored
from sinks.mqtt import MQTTPublishError, MQTTSink
from sources.mqtt import MQTTConnectError, MQTTSettings
from sources.simulator import Simulator, SimulatorConfig
from tests.integration.broker import (
    PASSWORD,
    USER,
    Broker,
    FlowRunner,
    Subscriber,
    publish,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
SIM = SimulatorConfig(sensors=4, interval_s=120, duration_s=86_400, seed=3)


def sim_messages(cfg: SimulatorConfig = SIM) -> list[tuple[str, bytes]]:
    """The simulated fleet as MQTT messages on ``sensors/<id>/readings``, in time order."""
    return [(f"sensors/{row['sensor_index']}/readings", orjson.dumps(row))
            for row in Simulator(cfg).payloads()]  # fmt: skip


def offline_alert_ids(cfg: SimulatorConfig = SIM) -> set[str]:
    """Alert ids of the same flow reading the simulator directly (no broker)."""
    alerts: list[Alert] = []
    settings = Settings.load(env={}, alerts_path="", deadletter_path="", sim_sensors=cfg.sensors,
                             sim_interval_s=cfg.interval_s, sim_duration_s=cfg.duration_s,
                             sim_seed=cfg.seed)  # fmt: skip
    run_main(build_flow(settings, on_alerts=alerts.extend))
    return {a.alert_id for a in alerts}


def mqtt_settings(broker: Broker, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "source": "mqtt",
        "mqtt_url": broker.url(),
        "mqtt_client_id": "flow-under-test",
        "mqtt_idle_stop_s": 3.0,
        "mqtt_node": "edge-test",
        "alerts_path": "",
        "deadletter_path": str(tmp_path / "deadletter.jsonl"),
    }
    return Settings.load(env={}, **(values | overrides))


class FlowThread(FlowRunner):
    """``build_flow(settings)`` run by ``run_main`` in a thread, scored keys collected."""

    def __init__(self, settings: Settings) -> None:
        self.scored: Counter[tuple[str, float]] = Counter()
        super().__init__(build_flow(settings, on_scored=self._on_scored), epoch_s=0.2)

    def _on_scored(self, batch: list[tuple[str, Scored]]) -> None:
        for _, s in batch:
            self.scored.update((r.sensor_id, r.ts.timestamp()) for r in s.readings)

    def join(self, timeout: float) -> None:
        self.wait(timeout)


def test_readings_in_alerts_and_dead_letters_out(broker: Broker, tmp_path: Path) -> None:
    expected = offline_alert_ids()
    assert len(expected) > 10
    alerts = Subscriber(broker, "alerts/#").start()
    dead = Subscriber(broker, "deadletter/#").start()
    status = Subscriber(broker, "status/#").start()
    flow = FlowThread(mqtt_settings(broker, tmp_path, max_payload_bytes=4096))
    status.wait_for(1)  # the alert sink says it is online before any message flows
    broker.wait_for_log(r"\nflow-under-test 1 sensors/\+/readings")
    bad = [
        ("sensors/x1/readings", b"{oops"),
        ("sensors/x1/readings", b'{"ts": 1711929600, "values": {"pm1.0_cf_1": NaN}}'),
        ("sensors/x2/readings", b'{"sensor_id": "x3", "ts": 1711929600, "values": {"a": 1}}'),
        ("sensors/x1/readings", b'{"ts": 1711929600, "values": {"a": "' + b"z" * 5000 + b'"}}'),
        ("sensors/x1/readings", b"\xff\xfe\x00garbage"),
    ]
    good = sim_messages()
    publish(broker, good[:1000] + bad + good[1000:])
    flow.join(60)

    assert len(flow.scored) == len(good) and max(flow.scored.values()) == 1
    got = [orjson.loads(payload) for _, payload, _, _ in alerts.wait_for(len(expected))]
    time.sleep(0.3)  # nothing more arrives
    assert {a["alert_id"] for a in got} == expected and len(got) == len(expected)
    assert all(topic == f"alerts/{orjson.loads(p)['sensor_id']}" and qos == 1
               for topic, p, qos, _ in alerts.messages)  # fmt: skip

    letters = dead.wait_for(len(bad))
    assert {t for t, _, _, _ in letters} == {"deadletter/air_quality"}
    records = [orjson.loads(p) for _, p, _, _ in letters]
    assert [r["reason"] for r in records] == [
        "malformed_json", "non_finite_value", "sensor_id_mismatch", "payload_too_large",
        "malformed_json",
    ]  # fmt: skip
    assert records[0]["payload"] == "{oops" and records[0]["origin"] == "sensors/x1/readings"
    assert records[3]["payload_bytes"] == len(bad[3][1]) and records[3]["truncated"] is True
    assert base64.b64decode(records[4]["payload_base64"]) == bad[4][1]  # exact bytes kept
    assert len((tmp_path / "deadletter.jsonl").read_bytes().splitlines()) == len(bad)

    status.wait_for(2)
    assert [(t, p, r) for t, p, _, r in status.messages] == [
        ("status/edge-test", b"online", False),
        ("status/edge-test", b"offline", False),
    ]
    for sub in (alerts, dead, status):
        sub.stop()
    retained = Subscriber(broker, "status/#").start()
    assert retained.wait_for(1) == [("status/edge-test", b"offline", 1, True)]
    retained.stop()


def test_broker_restart_mid_stream_every_reading_scored(broker: Broker, tmp_path: Path) -> None:
    messages = sim_messages(SimulatorConfig(sensors=5, interval_s=120, duration_s=43_200, seed=9))
    half = len(messages) // 2
    flow = FlowThread(mqtt_settings(broker, tmp_path, mqtt_idle_stop_s=6.0))
    broker.wait_for_log(r"\nflow-under-test 1 sensors/\+/readings")
    publish(broker, messages[:half])
    wait_until(lambda: sum(flow.scored.values()) >= 100, 20, "the first readings scored")
    broker.restart()  # SIGTERM: mosquitto keeps the persistent session and queued messages
    publish(broker, messages[half:])
    flow.join(60)
    published = {(m["sensor_index"], m["last_seen"]) for _, p in messages if (m := orjson.loads(p))}
    scored = {(int(sid), int(ts)) for sid, ts in flow.scored}
    assert scored == published and len(flow.scored) == len(messages)  # every reading, once+
    assert broker.log_text().count("New client connected") >= 4  # flow + sinks reconnected


def test_served_by_bytewax_run_from_the_environment(broker: Broker, tmp_path: Path) -> None:
    """``python -m bytewax.run dataflows.air_quality:flow`` configured only by EDGEWATCH_*."""
    status = Subscriber(broker, "status/#").start()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "EDGEWATCH_SOURCE": "mqtt",
        "EDGEWATCH_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
        "EDGEWATCH_MQTT_USERNAME": USER,
        "EDGEWATCH_MQTT_PASSWORD": PASSWORD,
        "EDGEWATCH_MQTT_NODE": "edge-env",
        "EDGEWATCH_MQTT_CLIENT_ID": "env-flow",
        "EDGEWATCH_ALERTS_PATH": str(tmp_path / "alerts.jsonl"),
        "EDGEWATCH_DEADLETTER_PATH": str(tmp_path / "dead.jsonl"),
    }
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.air_quality:flow", "-s", "1"]
    with (tmp_path / "flow.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        status.wait_for(1, timeout=30)
        broker.wait_for_log(r"\nenv-flow 1 sensors/\+/readings", timeout=30)
        publish(broker, sim_messages())
        alerts_file = tmp_path / "alerts.jsonl"
        expected = offline_alert_ids()
        wait_until(lambda: alerts_file.exists() and len(alerts_file.read_bytes().splitlines())
                   >= len(expected), 30, "every alert in the JSONL file")  # fmt: skip
        proc.send_signal(signal.SIGKILL)  # dies without a word: the broker sends the will
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ids = {orjson.loads(line)["alert_id"] for line in alerts_file.read_bytes().splitlines()}
    assert ids == expected
    status.wait_for(2)
    assert [(t, p) for t, p, _, _ in status.messages] == [
        ("status/edge-env", b"online"),
        ("status/edge-env", b"offline"),  # the last will, published by the broker
    ]
    status.stop()


def test_sink_refused_or_unacknowledged_batches_raise(mosquitto: str, tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"user {USER}\ntopic readwrite sensors/#\ntopic read alerts/#\n")
    broker = Broker(mosquitto, tmp_path / "broker", extra=f"acl_file {acl}")
    broker.start()
    try:
        sink = MQTTSink(MQTTSettings.from_url(broker.url()), publish_timeout_s=1.0)
        part = sink.build("alerts", 0, 1)
        with pytest.raises(MQTTPublishError, match="refused 2 messages: Not authorized"):
            part.write_batch([("s1", b"{}"), ("s2", b"{}")])
        ok = MQTTSink(MQTTSettings.from_url(broker.url()), topic="sensors/{key}/readings",
                      publish_timeout_s=1.0)  # fmt: skip
        ok_part = ok.build("ok", 0, 1)
        ok_part.write_batch([("s1", b"{}")])
        assert ok_part.published == 1
        broker.pause()  # connected, but no PUBACK will come
        try:
            with pytest.raises(MQTTPublishError, match="1 of 1 messages not acknowledged"):
                ok_part.write_batch([("s2", b"{}")])
        finally:
            broker.resume()
        ok_part.close()
        part.close()
        with pytest.raises(MQTTConnectError, match="Bad user name or password|Not authorized"):
            MQTTSink(MQTTSettings.from_url(broker.url(password="nope"))).build("x", 0, 1)
    finally:
        broker.stop()


def test_edgewatch_run_serves_the_broker_and_summarises(
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dataflows.cli import main  # noqa: PLC0415

    monkeypatch.setenv("EDGEWATCH_MQTT_IDLE_STOP_S", "2")
    monkeypatch.setenv("EDGEWATCH_MQTT_CLIENT_ID", "cli-flow")
    monkeypatch.setenv("EDGEWATCH_DEADLETTER_PATH", str(tmp_path / "dead.jsonl"))
    done: list[int] = []
    runner = threading.Thread(
        target=lambda: done.append(
            main(["run", "--source", "mqtt", "--broker", broker.url(), "--max-print", "3"])
        )
    )
    runner.start()
    broker.wait_for_log(r"\ncli-flow 1 sensors/\+/readings", timeout=30)
    messages = sim_messages()
    publish(broker, [*messages, ("sensors/zz/readings", b"[]")])
    runner.join(60)
    assert done == [0]
    out = capsys.readouterr().out
    assert f"MQTT 127.0.0.1:{broker.port} sensors/+/readings" in out
    assert f"events      {len(messages) + 1:,}  ({len(messages):,} scored, 1 invalid)" in out, out
    assert f"alerts      {len(offline_alert_ids()):,}" in out


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (
            "mqtt://{user}:wrong@127.0.0.1:{port}",
            "connection refused: (Bad user name or password|Not authorized)",
        ),
        ("mqtt://{user}:x@127.0.0.1:{free}", "unreachable .* gave up after 1 s"),
    ],
)
def test_edgewatch_run_broker_errors_exit_1_with_the_reason(
    broker: Broker, url: str, why: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from dataflows.cli import main  # noqa: PLC0415
    from tests.integration.broker import free_port  # noqa: PLC0415

    monkeypatch.setenv("EDGEWATCH_MQTT_CONNECT_TIMEOUT_S", "1")
    t0 = time.monotonic()
    url = url.format(user=USER, port=broker.port, free=free_port())
    assert main(["run", "--source", "mqtt", "--broker", url]) == 1
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert re.search(rf"edgewatch: the flow stopped: MQTTConnectError: MQTT broker mqtt://{USER}@"
                     rf"127\.0\.0\.1:\d+: {why}", err), err  # fmt: skip
    assert "wrong" not in err and "Traceback" not in err


def test_bad_topic_filters_exit_2_before_connecting(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataflows.cli import main  # noqa: PLC0415

    for topics, why in [("sensors/#/readings", "'#' must be a whole last level"),
                        ("sensors/a+/readings", "'\\+' must be a whole level")]:  # fmt: skip
        monkeypatch.setenv("EDGEWATCH_MQTT_TOPICS", topics)
        assert main(["run", "--source", "mqtt", "--broker", broker.url()]) == 2
        err = capsys.readouterr().err
        assert re.search(f"configuration error: bad MQTT topic filter .*{why}", err), err
    monkeypatch.setenv("EDGEWATCH_MQTT_TOPICS", "sensors/+/readings")
    assert main(["run", "--source", "mqtt", "--broker", broker.url(), "--group", "a/b"]) == 2
    assert "shared_group 'a/b' must be non-empty without / + #" in capsys.readouterr().err
    assert "New client connected" not in broker.log_text()
