"""The air-quality flow end to end: files in, alerts and dead letters out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from bytewax.testing import run_main

from dataflows.air_quality import build_flow
from dataflows.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, sensors: int = 3, n: int = 400, spike_at: int = 300) -> None:
    lines = []
    for i in range(n):
        for s in range(sensors):
            pm = 10.0 + (i % 7) + s
            if i == spike_at and s == 1:
                pm = 900.0
            row = {
                "sensor_id": f"s{s}",
                "ts": 1711929600 + 120 * i,
                "values": {"pm1.0_cf_1": pm, "temperature": None if i % 50 == 7 else 70.0},
            }
            lines.append(orjson.dumps(row))
    lines.insert(5, b'{"sensor_id": "s0", "ts": "not a time", "values": {"pm1.0_cf_1": 1}}')
    lines.insert(9, b"{broken json")
    lines.insert(11, b'{"sensor_id": "s2", "ts": 1711929600, "values": {"pm1.0_cf_1": "NaN"}}')
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_flow_writes_alerts_and_dead_letters(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src)
    settings = Settings.load(
        env={},
        source="jsonl",
        source_path=(str(src),),
        alerts_path=str(tmp_path / "alerts.jsonl"),
        deadletter_path=str(tmp_path / "dead.jsonl"),
    )
    run_main(build_flow(settings))
    alerts = [orjson.loads(x) for x in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    dead = [orjson.loads(x) for x in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert sorted(d["reason"] for d in dead) == [
        "bad_timestamp",
        "malformed_json",
        "non_numeric_value",
    ]
    assert all(d["flow"] == "air_quality" and d["payload"] for d in dead)
    spike = [a for a in alerts if a["sensor_id"] == "s1" and a["values"]["pm1.0_cf_1"] == 900.0]
    assert len(spike) == 1 and spike[0]["score"] > 0.7 and spike[0]["severity"] == "critical"
    assert len({a["alert_id"] for a in alerts}) == len(alerts)


def test_fleet_mode_is_one_model_across_sensors(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, sensors=4, n=200, spike_at=150)
    keys: dict[str, set[str]] = {}
    scores: dict[str, dict[tuple[str, str], float]] = {}
    for mode in ("per-sensor", "fleet"):
        batches: list = []
        settings = Settings.load(
            env={},
            source="jsonl",
            source_path=(str(src),),
            mode=mode,
            alerts_path="",
            deadletter_path=str(tmp_path / "d.jsonl"),
        )
        run_main(build_flow(settings, on_scored=batches.extend))
        keys[mode] = {k for k, _ in batches}
        scores[mode] = {
            (r.sensor_id, r.ts.isoformat()): v for _, s in batches for r, v, _ in s.rows()
        }
    assert keys == {"per-sensor": {"s0", "s1", "s2", "s3"}, "fleet": {"fleet"}}
    assert scores["per-sensor"].keys() == scores["fleet"].keys()
    assert len(scores["fleet"]) == 4 * 200  # the three extra bad lines are dead letters
    assert scores["per-sensor"] != scores["fleet"]
    # per sensor, a model scores 0 for its first window (72 readings); the fleet model
    # fills its first window after 72 readings of all sensors together
    first = sum(v == 0.0 for v in scores["per-sensor"].values())
    assert first == 4 * 72 and sum(v == 0.0 for v in scores["fleet"].values()) == 72


def test_bytewax_run_reads_edgewatch_env(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, sensors=2, n=320)
    env = {
        **os.environ,
        "EDGEWATCH_SOURCE": "jsonl",
        "EDGEWATCH_SOURCE_PATH": str(src),
        "EDGEWATCH_DEADLETTER_PATH": str(tmp_path / "dead.jsonl"),
        "EDGEWATCH_THRESHOLD": "0.69",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.air_quality:flow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    alerts = [orjson.loads(x) for x in done.stdout.splitlines()]
    assert alerts and all(a["threshold"] == 0.69 and a["schema"] == 1 for a in alerts)
    assert (tmp_path / "dead.jsonl").exists()
