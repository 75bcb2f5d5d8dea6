from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from operators.parse import parse_message
from operators.records import Reading
from sources.simulator import KINDS, Simulator, SimulatorConfig, SimulatorSource

# 12 sensors, 1 day at 120 s = 8,640 readings, 4 % of them inside episodes.
CFG = SimulatorConfig(sensors=12, duration_s=86_400, anomaly_rate=0.04)
DROPPED = ("temperature", "humidity", "pressure", "pm1.0_cf_1")


def key(row: dict[str, Any]) -> tuple[str, int]:
    return str(row["sensor_index"]), row["last_seen"]


def drain(source: SimulatorSource) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name in source.list_parts():
        part, rows = source.build_part("sim", name, None), list[dict[str, Any]]()
        while True:
            try:
                rows.extend(row for _, row, _ in part.next_batch())
            except StopIteration:
                break
        out[name] = rows
    return out


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return list(Simulator(CFG).payloads())


@pytest.fixture(scope="module")
def labels() -> dict[tuple[str, int], str]:
    return Simulator(CFG).labels()


def test_same_config_gives_identical_bytes_and_seeds_differ(rows: list[dict[str, Any]]) -> None:
    again = [orjson.dumps(r) for r in Simulator(CFG).payloads()]
    assert again == [orjson.dumps(r) for r in rows]
    assert Simulator(CFG).labels() == Simulator(CFG).labels()
    other = SimulatorConfig(sensors=12, duration_s=86_400, anomaly_rate=0.04, seed=8)
    assert [orjson.dumps(r) for r in Simulator(other).payloads()] != again
    assert Simulator(other).labels() != Simulator(CFG).labels()


def test_shape_order_and_count(rows: list[dict[str, Any]]) -> None:
    assert len(rows) == 12 * 720
    start = int(datetime(2024, 4, 1, tzinfo=timezone.utc).timestamp())
    assert [r["sensor_index"] for r in rows[:13]] == [*range(1000, 1012), 1000]
    assert [r["last_seen"] for r in rows[11:13]] == [start, start + 120]
    assert all(r["data_time_stamp"] == r["last_seen"] for r in rows)
    assert set(rows[0]) == {
        "sensor_index", "last_seen", "rssi", "uptime", "humidity", "temperature", "pressure",
        "pm1.0_cf_1", "pm2.5_cf_1", "pm10.0_cf_1", "pm2.5_atm", "data_time_stamp",
    }  # fmt: skip


def test_values_are_plausible(rows: list[dict[str, Any]]) -> None:
    def present(field: str) -> list[Any]:
        return [r[field] for r in rows if r[field] is not None]

    for field in ("pm1.0_cf_1", "pm2.5_cf_1", "pm10.0_cf_1", "pm2.5_atm"):
        values = present(field)
        assert min(values) >= 0 and all(round(v, 1) == v for v in values)
    assert all(type(v) is int for f in ("rssi", "uptime", "humidity", "temperature")
               for v in present(f))  # fmt: skip
    assert 20 <= min(present("temperature")) and max(present("temperature")) <= 110
    assert 2 <= min(present("humidity")) and max(present("humidity")) <= 100
    assert 950 <= min(present("pressure")) and max(present("pressure")) <= 1050
    assert -95 <= min(present("rssi")) and max(present("rssi")) <= -30
    by_sensor: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        by_sensor[r["sensor_index"]].append(r["uptime"])
    assert all(u == sorted(u) for u in by_sensor.values())
    baselines = [sorted(r["pm1.0_cf_1"] for r in rows[i::12] if r["pm1.0_cf_1"])[360]
                 for i in range(12)]  # fmt: skip
    assert 2 <= min(baselines) and max(baselines) <= 40 and len(set(baselines)) > 6


def test_labels_cover_every_kind_only_inside_episodes(
    rows: list[dict[str, Any]], labels: dict[tuple[str, int], str]
) -> None:
    counts = Counter(labels.values())
    assert set(counts) == set(KINDS)
    assert 0.03 <= len(labels) / len(rows) <= 0.06
    start = rows[0]["last_seen"]
    assert min(ts for _, ts in labels) >= start + 7200  # warm-up stays clean
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        kind = labels.get(key(r))
        if kind is None:  # clean readings: complete and normal
            assert all(r[f] is not None for f in DROPPED)
            assert r["pm1.0_cf_1"] < 150
            continue
        runs[str(r["sensor_index"]), kind].append(r)
        if kind == "spike":
            assert r["pm1.0_cf_1"] > 150
        elif kind == "dropout":
            assert all(r[f] is None for f in DROPPED)
    for (_, kind), members in runs.items():
        pm = [r["pm1.0_cf_1"] for r in members]
        if kind == "stuck":
            assert 20 <= len(pm) and len(set(pm)) <= len(pm) // 20  # one value per episode
        if kind == "drift":
            assert pm[-1] > 3 * pm[0]


def test_partitions_union_equals_single_output(rows: list[dict[str, Any]]) -> None:
    parts = drain(SimulatorSource(CFG, batch_size=97, partitions=5))
    assert sorted(parts) == [f"sim-{j}-of-5" for j in range(5)]
    for j, got in enumerate(parts.values()):
        assert {r["sensor_index"] - 1000 for r in got} == set(range(j, 12, 5))
        assert [r["last_seen"] for r in got] == sorted(r["last_seen"] for r in got)
    union = sorted(orjson.dumps(r) for got in parts.values() for r in got)
    assert union == sorted(orjson.dumps(r) for r in rows)
    single = drain(SimulatorSource(CFG, partitions=1))
    assert [orjson.dumps(r) for r in single["sim-0-of-1"]] == [orjson.dumps(r) for r in rows]


def test_resume_from_snapshot_continues_exactly() -> None:
    source = SimulatorSource(CFG, batch_size=100, partitions=3)
    name = source.list_parts()[1]
    whole = drain(source)[name]
    part = source.build_part("sim", name, None)
    first = [row for _ in range(4) for _, row, _ in part.next_batch()][:333]
    part = source.build_part("sim", name, 333)  # resume mid-batch, mid-timestep
    rest: list[dict[str, Any]] = []
    while True:
        try:
            rest.extend(row for _, row, _ in part.next_batch())
        except StopIteration:
            break
    assert first + rest == whole
    assert part.snapshot() == len(whole)


def test_runs_in_a_bytewax_dataflow_and_parses(rows: list[dict[str, Any]]) -> None:
    out: list[tuple[str, dict[str, Any], float]] = []
    flow = Dataflow("sim_test")
    stream = op.input("in", flow, SimulatorSource(CFG, batch_size=500, partitions=4))
    op.output("out", stream, TestingSink(out))
    run_main(flow)
    assert len(out) == len(rows)
    assert {origin for origin, _, _ in out} == {"simulator"}
    assert abs(out[0][2] - time.time()) < 60
    assert sorted(orjson.dumps(p) for _, p, _ in out) == sorted(orjson.dumps(r) for r in rows)
    parsed = [x for m in out[:2000] for x in parse_message(*m)]
    assert all(isinstance(x, Reading) for x in parsed)
    assert parsed[0].ts.timestamp() == out[0][1]["last_seen"]  # type: ignore[union-attr]


def test_realtime_paces_with_next_awake() -> None:
    cfg = SimulatorConfig(sensors=2, duration_s=600, interval_s=120)
    part = SimulatorSource(cfg, partitions=1, realtime=1200.0).build_part("s", "sim-0-of-1", None)
    assert len(part.next_batch()) == 2  # only t0 is due
    assert part.next_batch() == []
    awake = part.next_awake()
    assert awake is not None and 0 < (awake.timestamp() - time.time()) <= 0.11
    got, deadline = 2, time.monotonic() + 5
    while got < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
        got += len(part.next_batch())
    assert got == 10
    with pytest.raises(StopIteration):
        part.next_batch()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="tz-aware"):
        SimulatorConfig(start=datetime(2024, 4, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="kinds"):
        SimulatorConfig(kinds=("spike", "meteor"))
    assert SimulatorConfig().readings_per_sensor == 720
    only = SimulatorConfig(sensors=4, anomaly_rate=0.05, kinds=("stuck",))
    assert set(Simulator(only).labels().values()) == {"stuck"}
