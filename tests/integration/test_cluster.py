"""A Bytewax cluster of two processes behind one ``$share`` subscription on a real mosquitto.

The processes are what a deployment runs: ``python -m bytewax.run
dataflows.air_quality:flow -i <id> -a <addresses>`` configured by ``EDGEWATCH_*``
variables, and ``edgewatch run -p 2``. Readings are published in rounds, one reading per
sensor per round, and the next round only once the last is scored, so every sensor's
readings are in event-time order whichever process the broker hands them to; the
checks do not depend on how fast the machine is.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from bytewax.testing import TestingSource, run_main

from dataflows.air_quality import build_flow
from dataflows.bench_scale import scale_bench_command
from dataflows.cli import _parser
from dataflows.cluster import local_addresses
from dataflows.settings import Settings
from operators.records import RawMessage, Scored
from tests.integration.broker import Broker, free_port, publish, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
SENSORS, ROUNDS, WINDOW = 12, 30, 8
T0 = time.time() - 86_400.0  # event times: a minute apart, a day ago


def reading(sensor: int, k: int) -> tuple[str, bytes]:
    """Round ``k``'s reading of sensor ``sensor``: noise around a level, a spike now and then."""
    rnd = random.Random(sensor * 1000 + k)
    value = 900.0 if k > WINDOW and rnd.random() < 0.1 else 10.0 + sensor + rnd.gauss(0, 1)
    body = {"sensor_id": f"s{sensor}", "ts": T0 + 60 * k, "values": {"pm1.0_cf_1": value}}
    return f"sensors/s{sensor}/readings", orjson.dumps(body)


def reference_scores() -> dict[tuple[str, float], float]:
    """Every reading's score from one worker reading the same messages in order."""
    messages: list[RawMessage] = [(t, p, time.time()) for k in range(ROUNDS)
                                  for t, p in (reading(s, k) for s in range(SENSORS))]  # fmt: skip
    out: dict[tuple[str, float], float] = {}

    def keep(batch: list[tuple[str, Scored]]) -> None:
        for _, s in batch:
            for r, v in zip(s.readings, s.scores.tolist(), strict=True):
                out[(r.sensor_id, r.ts.timestamp())] = v

    settings = Settings.load(env={}, alerts_path="", deadletter_path="", hst_window=WINDOW)
    run_main(build_flow(settings, source=TestingSource(messages), on_scored=keep))
    return out


def flow_env(broker: Broker, tmp: Path, metrics_port: int) -> dict[str, str]:
    """The environment of every process: MQTT source in shared group ``g``, files in ``tmp``."""
    return {**os.environ, "EDGEWATCH_SOURCE": "mqtt", "EDGEWATCH_MQTT_URL": broker.url(),
            "EDGEWATCH_MQTT_GROUP": "g", "EDGEWATCH_MQTT_CLIENT_ID": "ew-cluster",
            "EDGEWATCH_MQTT_NODE": "cluster", "EDGEWATCH_HST_WINDOW": str(WINDOW),
            "EDGEWATCH_SCORED_PATH": str(tmp / "scored.jsonl"),
            "EDGEWATCH_ALERTS_PATH": str(tmp / "alerts.jsonl"),
            "EDGEWATCH_DEADLETTER_PATH": str(tmp / "dead.jsonl"),
            "EDGEWATCH_METRICS_ADDR": f"127.0.0.1:{metrics_port}"}  # fmt: skip


def scored_lines(tmp: Path) -> dict[str, list[dict[str, float | str]]]:
    """Scored lines per worker file (``scored.w0.jsonl``, ``scored.w1.jsonl``)."""
    return {p.name: [orjson.loads(line) for line in p.read_bytes().splitlines()]
            for p in sorted(tmp.glob("scored.w*.jsonl"))}  # fmt: skip


def publish_rounds(broker: Broker, tmp: Path) -> None:
    """Publish round after round, each once the previous one is scored."""
    for k in range(ROUNDS):
        publish(broker, [reading(s, k) for s in range(SENSORS)])
        done = (k + 1) * SENSORS
        wait_until(lambda d=done: sum(map(len, scored_lines(tmp).values())) >= d, 30,  # type: ignore[misc]
                   f"{done} readings scored")  # fmt: skip


def metric(port: int, name: str) -> float:
    """Sum of the samples of ``name`` on one process's ``/metrics``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))  # fmt: skip


@contextmanager
def interrupted_at_exit(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Stop the processes (SIGINT to their session, as Ctrl-C does) however the test ends."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def check_cluster_output(tmp: Path, expected: dict[tuple[str, float], float]) -> None:
    """Every reading scored once, each sensor by one worker, in order, as one worker would."""
    files = scored_lines(tmp)
    assert len(files) == 2 and all(files.values()), files.keys()  # both workers scored some
    owner: dict[str, str] = {}
    got: dict[tuple[str, float], float] = {}
    for name, lines in files.items():
        last: dict[str, float] = {}
        for line in lines:
            sid, ts = str(line["sensor_id"]), float(line["ts"])
            assert owner.setdefault(sid, name) == name, f"{sid} scored by two workers"
            assert ts > last.get(sid, float("-inf")), f"{sid} scored out of order"
            last[sid] = ts
            assert (sid, ts) not in got, f"{sid} {ts} scored twice"
            got[(sid, ts)] = float(line["score"])
    assert len(got) == SENSORS * ROUNDS
    assert got == expected  # the state of each sensor saw all its readings, in order
    assert len({v for v in got.values() if v > 0}) > 10  # the models had warmed up
    assert not (tmp / "dead.jsonl").exists() and not list(tmp.glob("dead.w*.jsonl"))


def test_bytewax_run_cluster_shares_the_stream_and_routes_state_per_sensor(
    broker: Broker, tmp_path: Path
) -> None:
    expected = reference_scores()
    base = free_port()
    env = flow_env(broker, tmp_path, base)
    addresses = ";".join(local_addresses(2))
    procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.air_quality:flow",
                               "-s", "1", "-i", str(i), "-a", addresses],
                              cwd=REPO, env=env, start_new_session=True)
             for i in range(2)]  # fmt: skip
    with interrupted_at_exit(procs):
        broker.wait_for_log(r"ew-cluster-w\d 1 \$share/g/sensors/\+/readings", 2, timeout=40)
        publish_rounds(broker, tmp_path)
        # Process i serves metrics on the base port + i; each has one subscriber client
        # of the shared group, and between them they scored every reading.
        wait_until(lambda: sum(metric(base + i, "edgewatch_events_total") for i in (0, 1))
                   >= SENSORS * ROUNDS, 10, "the scored count in the metrics")  # fmt: skip
        assert [metric(base + i, "edgewatch_mqtt_connected") for i in (0, 1)] == [1.0, 1.0]
        assert all(metric(base + i, "edgewatch_events_total") > 0 for i in (0, 1))
    check_cluster_output(tmp_path, expected)


def test_edgewatch_run_local_processes_is_one_cluster(broker: Broker, tmp_path: Path) -> None:
    expected = reference_scores()
    base = free_port()
    out = tmp_path / "stdout.txt"
    cmd = [sys.executable, "-m", "dataflows.cli", "run", "-p", "2", "--max-print", "0"]
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=flow_env(broker, tmp_path, base),
                                stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        with interrupted_at_exit([proc]):
            broker.wait_for_log(r"ew-cluster-w\d 1 \$share/g/sensors/\+/readings", 2, timeout=40)
            publish_rounds(broker, tmp_path)
            wait_until(lambda: metric(base + 1, "edgewatch_mqtt_connected") == 1.0, 10,
                       "process 1's metrics")  # fmt: skip
    assert proc.returncode == 130  # interrupted, as Ctrl-C stops a broker flow
    text = out.read_text()
    assert "process 0 of 2" in text and "process 1 of 2" in text, text
    scored = [int(line.split()[1].replace(",", "")) for line in text.splitlines()
              if line.strip().startswith("events")]  # fmt: skip
    assert len(scored) == 2 and sum(scored) == SENSORS * ROUNDS, text
    check_cluster_output(tmp_path, expected)


def test_bench_processes_reports_scaling_through_the_broker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parser().parse_args(["bench", "--processes", "2", "--events", "6000", "--sensors",
                                 "20", "--per-message", "10", "--json"])  # fmt: skip
    assert scale_bench_command(args) == 0
    result = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = {r["processes"]: r for r in result["runs"]}
    assert set(runs) == {1, 2}  # one process is always measured: efficiency is against it
    for p, r in runs.items():
        assert r["scored"] == 6000 and r["lost"] == 0 and r["messages"] == 600
        assert len(r["per_process"]) == p and all(n > 0 for n in r["per_process"])
        assert sum(r["messages_per_process"]) == 600 and r["events_per_s"] > 0
    assert runs[1]["efficiency"] == 1.0
    assert runs[2]["efficiency"] == pytest.approx(runs[2]["speedup"] / 2, abs=1e-3)
