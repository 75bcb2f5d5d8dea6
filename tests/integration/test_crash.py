"""Crash recovery: ``kill -9`` the flow, or the broker, five times mid-stream.

The air-quality flow reads a real mosquitto (QoS 1, persistent session) with Bytewax
recovery on, while a publisher streams the labelled simulator fleet. Afterwards every
published reading has been scored, every score of a reading scored twice is the same
(its state resumed from the snapshot that matches the broker's acknowledgements), and
the alert ids equal those of the same flow on the simulator with no broker and no crash.
With the broker killed instead, mosquitto resends messages acknowledged after its last save
as new ones; the flow's order guard refuses them (``duplicate_reading``/``out_of_order``
dead letters), so nothing is scored twice and the alert ids again equal the offline run's.

The broker saves its database after every change (``autosave_interval 1`` with
``autosave_on_changes true``), so a ``kill -9`` of mosquitto loses at most what it
acknowledged in the moment before it died; its default (a save every 30 min and at
shutdown) would lose every queued message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.broker import PASSWORD, USER, Broker, mqtt_client, wait_until
from tests.integration.test_mqtt_flow import SIM, offline_alert_ids, sim_messages

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parents[2]
KILLS = 5
SAVE_EVERY_CHANGE = "autosave_interval 1\nautosave_on_changes true\n"


@pytest.fixture
def durable_broker(mosquitto: str, tmp_path: Path) -> Iterator[Broker]:
    """A broker that saves its database after every change (safe to ``kill -9``)."""
    b = Broker(mosquitto, tmp_path / "broker", extra=SAVE_EVERY_CHANGE)
    b.start()
    yield b
    b.stop()


def flow_env(broker: Broker, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The flow configured only by ``EDGEWATCH_*``: scored readings and alerts to files."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "EDGEWATCH_SOURCE": "mqtt",
        "EDGEWATCH_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
        "EDGEWATCH_MQTT_USERNAME": USER,
        "EDGEWATCH_MQTT_PASSWORD": PASSWORD,
        "EDGEWATCH_MQTT_CLIENT_ID": "crash-flow",
        "EDGEWATCH_MQTT_OUTPUTS": "off",
        "EDGEWATCH_METRICS_ADDR": "",
        "EDGEWATCH_ALERTS_PATH": str(tmp_path / "alerts.jsonl"),
        "EDGEWATCH_SCORED_PATH": str(tmp_path / "scored.jsonl"),
        "EDGEWATCH_DEADLETTER_PATH": str(tmp_path / "dead.jsonl"),
        **extra,
    }


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


class Publisher(threading.Thread):
    """Publish the simulator fleet at QoS 1 in paced chunks through a persistent session.

    paho keeps unacknowledged publishes and sends them again after a reconnect, so the
    stream survives broker restarts; ``acked`` counts the broker's PUBACKs.
    """

    def __init__(self, broker: Broker, messages: list[tuple[str, bytes]], pace_s: float) -> None:
        super().__init__(daemon=True)
        self.broker, self.messages, self.pace_s = broker, messages, pace_s
        self.mids: list[int] = []
        self.acked: set[int] = set()

    def run(self) -> None:
        client = mqtt_client(self.broker, "crash-publisher", persistent=True)
        client.reconnect_delay_set(1, 1)
        client.on_publish = lambda _c, _u, mid, *_: self.acked.add(mid)
        try:
            for i in range(0, len(self.messages), 50):  # queued by paho while disconnected
                self.mids += [client.publish(t, p, qos=1).mid for t, p in self.messages[i : i + 50]]
                time.sleep(self.pace_s)
            wait_until(lambda: self.acked.issuperset(self.mids), 60, "every PUBACK")
        finally:
            client.disconnect()
            client.loop_stop()


def check(tmp_path: Path, messages: list[tuple[str, bytes]]) -> dict[str, int | bool]:
    """Every reading scored, repeats scored alike, alert ids as offline; the counts."""
    published = {(str(m["sensor_index"]), float(m["last_seen"]))
                 for _, p in messages if (m := orjson.loads(p))}  # fmt: skip
    scores: defaultdict[tuple[str, float], set[float]] = defaultdict(set)
    lines = (tmp_path / "scored.jsonl").read_bytes().splitlines()
    for line in lines:
        r = orjson.loads(line)
        scores[(r["sensor_id"], r["ts"])].add(r["score"])
    alerts = [orjson.loads(x) for x in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    by_id: defaultdict[str, set[tuple[str, str, float]]] = defaultdict(set)
    for a in alerts:
        by_id[a["alert_id"]].add((a["sensor_id"], a["ts"], a["score"]))
    expected = offline_alert_ids()
    counts = {
        "published": len(published),
        "processed": len(scores),
        "scored_lines": len(lines),
        "rescored": len(lines) - len(scores),
        "alerts": len(alerts),
        "alert_duplicates": len(alerts) - len(by_id),
        "alert_ids_equal": set(by_id) == expected,
    }
    sys.stderr.write(f"crash test counts: {counts}\n")
    assert set(scores) == published, "readings lost or invented"
    assert all(len(s) == 1 for s in scores.values()), "a reading scored twice, differently"
    assert all(len(v) == 1 for v in by_id.values()), "one alert id, different alerts"
    assert set(by_id) == expected
    return counts


def kill_points(seed: int) -> list[float]:
    """Seconds to wait before each ``kill -9`` (seeded: the same on every run)."""
    rng = random.Random(seed)
    return [rng.uniform(0.3, 2.0) for _ in range(KILLS)]


def test_flow_killed_five_times_loses_nothing(durable_broker: Broker, tmp_path: Path) -> None:
    """``python -m bytewax.run … -r DIR -s 1 -b 0``, killed with SIGKILL and restarted."""
    broker, messages = durable_broker, sim_messages(SIM)
    rec = tmp_path / "recovery"
    rec.mkdir(mode=0o700)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rec), "1"], check=True)
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.air_quality:flow",
           "-r", str(rec), "-s", "1", "-b", "0"]  # fmt: skip
    env, log = flow_env(broker, tmp_path), tmp_path / "flow.log"
    subscribed = r"\ncrash-flow 1 sensors/\+/readings"
    proc = start(cmd, env, log)
    broker.wait_for_log(subscribed, timeout=30)
    publisher = Publisher(broker, messages, pace_s=0.25)
    publisher.start()
    try:
        for n, wait in enumerate(kill_points(seed=8), start=1):
            time.sleep(wait)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            last = {"EDGEWATCH_MQTT_IDLE_STOP_S": "3"} if n == KILLS else {}
            proc = start(cmd, flow_env(broker, tmp_path, **last), log)
            broker.wait_for_log(subscribed, count=n + 1, timeout=30)
        publisher.join(60)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    counts = check(tmp_path, messages)
    assert counts["published"] == len(messages)


def kill_broker(broker: Broker) -> None:
    """SIGKILL mosquitto (no shutdown save) and start it again on the same port."""
    proc = broker.proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    broker.proc = None
    broker.start()


def test_broker_killed_five_times_loses_nothing(durable_broker: Broker, tmp_path: Path) -> None:
    """``edgewatch run --recovery DIR`` keeps its state while mosquitto dies and restarts."""
    broker, messages = durable_broker, sim_messages(SIM)
    cmd = [sys.executable, "-m", "dataflows.cli", "run", "--recovery", str(tmp_path / "rec"),
           "--snapshot-interval", "1", "--max-print", "0"]  # fmt: skip
    env = flow_env(broker, tmp_path, EDGEWATCH_MQTT_IDLE_STOP_S="6")
    log = tmp_path / "flow.log"
    proc = start(cmd, env, log)
    subscribed: Callable[[int], None] = lambda n: broker.wait_for_log(  # noqa: E731
        r"\ncrash-flow 1 sensors/\+/readings", count=n, timeout=30
    )
    try:
        subscribed(1)
        publisher = Publisher(broker, messages, pace_s=0.25)
        publisher.start()
        for n, wait in enumerate(kill_points(seed=9), start=2):
            time.sleep(wait)
            kill_broker(broker)
            subscribed(n)
        publisher.join(60)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "rec").stat().st_mode & 0o777 == 0o700
    counts = check(tmp_path, messages)
    assert counts["published"] == counts["processed"] == len(messages)
    # Readings mosquitto sent again are refused by the order guard, never scored twice.
    assert counts["rescored"] == 0
    dead = [orjson.loads(x) for x in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert {d["reason"] for d in dead} <= {"duplicate_reading", "out_of_order"}
