"""``edgewatch replay`` against a real mosquitto: what arrives, and every way it can fail."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from dataflows.cli import main
from operators.parse import parse_message
from operators.records import Reading
from tests.integration.broker import PASSWORD, USER, Broker, Certs, Subscriber, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
T0 = 1711929600


def write_jsonl(path: Path, n: int = 300, sensors: int = 7) -> list[bytes]:
    """``n`` readings, newest first (the replay must reorder them), and one broken line."""
    lines = [orjson.dumps({"sensor_id": f"s{i % sensors}", "ts": T0 + 60 * (n - i),
                           "values": {"pm1.0_cf_1": float(i)}}) for i in range(n)]  # fmt: skip
    lines.insert(n // 2, b"{not json")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def event_time(topic: str, payload: bytes) -> float:
    (r,) = parse_message(topic, payload, 0.0)
    assert isinstance(r, Reading), r
    return r.ts.timestamp()


def replay(broker: Broker, *args: str) -> int:
    return main(["replay", "--broker", broker.url(), *args])


def test_jsonl_arrives_in_time_order_on_each_sensors_topic(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = write_jsonl(tmp_path / "in.jsonl")
    sub = Subscriber(broker, "sensors/+/readings").start()
    assert replay(broker, "--format", "jsonl", str(tmp_path / "in.jsonl"), "--max") == 0
    got = sub.wait_for(len(lines))
    time.sleep(0.2)  # nothing more may come
    sub.stop()
    assert len(got) == len(lines) == 301
    assert {p for _, p, _, _ in got} == set(lines)  # every line, byte for byte
    readings = [(t, p) for t, p, _, _ in got if t != "sensors/_unparsed/readings"]
    times = [event_time(t, p) for t, p in readings]
    assert times == sorted(times) and len(set(times)) == 300
    assert {t for t, _ in readings} == {f"sensors/s{k}/readings" for k in range(7)}
    assert [p for t, p, _, _ in got if "_unparsed" in t] == [b"{not json"]
    assert {q for _, _, q, _ in got} == {1}
    out = capsys.readouterr().out
    assert re.fullmatch(r"published 301 messages \(301 acknowledged, 1 unparsed\) in "
                        r"\d+\.\d s, [\d,]+ msg/s\n", out), out  # fmt: skip


def test_simulator_csv_prefix_limit_and_qos_0(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = Subscriber(broker, "site1/sensors/+/readings").start()
    sim = ["--format", "simulator", "--sensors", "6", "--duration", "2h", "--interval", "60"]
    assert replay(broker, *sim, "--prefix", "site1/", "--max", "--qos", "0") == 0
    got = sub.wait_for(720)
    assert "(QoS 0, none acknowledged: 720 written, 0 lost, 0 unparsed)" in capsys.readouterr().out
    times = [event_time(t, p) for t, p, _, _ in got]
    assert times == sorted(times) and times[0] == T0 and times[-1] == T0 + 119 * 60
    assert {t for t, _, _, _ in got} == {f"site1/sensors/{1000 + k}/readings" for k in range(6)}
    sub.messages.clear()
    nab = tmp_path / "machine_temp.csv"
    nab.write_text("timestamp,value\n" + "".join(
        f"2024-04-01 00:{59 - i:02d}:00,{i}\n" for i in range(60)))  # fmt: skip
    t0 = time.monotonic()
    assert replay(broker, "--format", "nab", str(nab), "--prefix", "site1/", "--rate", "200",
                  "--limit", "40", "--qos", "2") == 0  # fmt: skip
    assert time.monotonic() - t0 >= 39 / 200  # paced
    got = sub.wait_for(40)
    assert "published 40 messages (40 acknowledged, 0 unparsed)" in capsys.readouterr().out
    values = [orjson.loads(p)["values"]["value"] for _, p, _, _ in got]
    assert values == [float(59 - i) for i in range(40)]  # oldest first
    sub.stop()


@pytest.mark.skipif(not (DATA / "purpleair" / "data.json").exists(), reason="no shared data")
def test_purpleair_snapshot_one_topic_per_sensor(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = Subscriber(broker, "sensors/+/readings").start()
    args = ["--format", "purpleair", str(DATA / "purpleair" / "data.json"), "--limit", "500"]
    assert replay(broker, *args, "--max") == 0
    got = sub.wait_for(500)
    sub.stop()
    assert "published 500 messages (500 acknowledged, 0 unparsed)" in capsys.readouterr().out
    for topic, payload, _, _ in got:
        row = orjson.loads(payload)
        assert topic == f"sensors/{row['sensor_index']}/readings" and "pm1.0_cf_1" in row
        assert isinstance(parse_message(topic, payload, 0.0)[0], Reading)


def test_tls_replay_and_tls_failure(
    tls_broker: Broker, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = Subscriber(tls_broker, "sensors/+/readings").start()
    tls = ["--cert-file", str(certs.client_cert), "--key-file", str(certs.client_key)]
    sim = ["--format", "simulator", "--sensors", "3", "--duration", "1h", "--max"]
    assert replay(tls_broker, *sim, "--ca-file", str(certs.ca), *tls) == 0
    assert len(sub.wait_for(90)) == 90
    sub.stop()
    assert "published 90 messages (90 acknowledged, 0 unparsed)" in capsys.readouterr().out
    t0 = time.monotonic()
    assert replay(tls_broker, *sim, "--ca-file", str(certs.other_ca), *tls) == 1
    assert time.monotonic() - t0 < 5  # a TLS failure is not retried
    err = capsys.readouterr().err
    assert re.match(rf"edgewatch: cannot publish: MQTT broker mqtts://{USER}@127\.0\.0\.1:\d+: "
                    r"TLS failure: .*CERTIFICATE_VERIFY_FAILED", err), err  # fmt: skip


def test_wrong_password_and_unreachable_broker_exit_1_quickly(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = ["replay", "--format", "simulator", "--sensors", "2", "--duration", "1h"]
    t0 = time.monotonic()
    assert main([*sim, "--broker", broker.url(password="wrong")]) == 1
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    why = "connection refused: (Bad user name or password|Not authorized); check the user name"
    assert re.fullmatch(
        rf"edgewatch: cannot publish: MQTT broker mqtt://{USER}@127\.0\.0\.1:{broker.port}: "
        rf"{why} and password .*\n",
        err,
    ), err
    t0 = time.monotonic()
    url = f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    assert main([*sim, "--broker", url, "--connect-timeout", "1"]) == 1
    assert time.monotonic() - t0 < 4
    err = capsys.readouterr().err
    assert "cannot publish: MQTT broker" in err and "unreachable" in err, err
    assert "gave up after 1 s" in err and "Traceback" not in err and PASSWORD not in err


def test_refused_topics_and_stalled_acknowledgements_exit_1(
    mosquitto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"user {USER}\ntopic readwrite sensors/#\n")
    broker = Broker(mosquitto, tmp_path / "broker", extra=f"acl_file {acl}")
    broker.start()
    try:
        sim = ["--format", "simulator", "--sensors", "2", "--duration", "1h", "--max"]
        assert replay(broker, *sim, "--prefix", "site1/") == 1
        captured = capsys.readouterr()
        refused = r"refused site1/sensors/100[01]/readings: Not authorized"
        assert re.search(rf"cannot publish: MQTT broker mqtt://\S+ {refused}", captured.err)
        done: list[int] = []
        runner = threading.Thread(target=lambda: done.append(
            replay(broker, "--format", "simulator", "--sensors", "2", "--duration", "1h",
                   "--rate", "40", "--ack-timeout", "1")))  # fmt: skip
        runner.start()
        broker.wait_for_log("New client connected .* as edgewatch-replay-")
        time.sleep(0.3)
        broker.pause()  # connected, but no PUBACK will come
        try:
            runner.join(15)
        finally:
            broker.resume()
        assert done == [1]
        captured = capsys.readouterr()
        assert re.search(r"cannot publish: MQTT broker mqtt://\S+: [\d,]+ messages not "
                         r"acknowledged within 1 s", captured.err), captured.err  # fmt: skip
        acked = re.match(r"published 60 messages \((\d+) acknowledged", captured.out)
        assert acked and 0 < int(acked[1]) < 60, captured.out
    finally:
        broker.stop()


def test_broker_restart_mid_replay_every_message_acknowledged(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    done: list[int] = []
    args = ["--format", "simulator", "--sensors", "4", "--duration", "2h", "--interval", "60"]
    runner = threading.Thread(target=lambda: done.append(replay(broker, *args, "--rate", "200")))
    runner.start()
    broker.wait_for_log("New client connected .* as edgewatch-replay-")
    time.sleep(0.5)
    broker.stop()
    time.sleep(0.5)
    broker.start()
    runner.join(30)
    assert done == [0]
    assert "published 480 messages (480 acknowledged, 0 unparsed)" in capsys.readouterr().out


def test_ctrl_c_prints_what_was_published_and_exits_130(broker: Broker) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "replay", "--broker", broker.url(),
         "--format", "simulator", "--rate", "100"],  # fmt: skip
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    broker.wait_for_log("New client connected .* as edgewatch-replay-", timeout=30)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, (out, err)
    assert re.fullmatch(
        r"interrupted: published [\d,]+ of 36,000 messages \([\d,]+ "
        r"acknowledged, 0 unparsed\) in \d+\.\d s, [\d,]+ msg/s\n",
        out,
    ), out
    assert err.endswith("edgewatch: interrupted\n") and "Traceback" not in err, err
