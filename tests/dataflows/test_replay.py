"""``edgewatch replay`` without a broker: what would be published, pacing, progress, errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from dataflows.cli import main
from dataflows.inputs import build_source, iter_messages
from dataflows.publish import (
    UNPARSED,
    Pacer,
    Progress,
    ReplayMessage,
    ReplayStats,
    check_prefix,
)
from dataflows.replay import replay_messages
from dataflows.settings import Settings
from operators.parse import ParseLimits, parse_message
from operators.records import Reading
from tests.integration.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
LIMITS = ParseLimits(max_future_s=float("inf"))
T0 = 1711929600


def read(source: str, *paths: Path, **options: Any) -> list[ReplayMessage]:
    """What ``edgewatch replay`` would publish, read as the command reads it."""
    settings = Settings.load(source=source, source_path=tuple(map(str, paths)), **options)
    return replay_messages(iter_messages(build_source(settings)))


def offline(source: str, *paths: Path, **options: Any) -> list[Reading]:
    """Every reading the flow's parser gets from the input, in event-time order."""
    settings = Settings.load(source=source, source_path=tuple(map(str, paths)), **options)
    out = [
        r
        for origin, raw, at in iter_messages(build_source(settings))
        for r in parse_message(origin, raw, at, LIMITS)
        if isinstance(r, Reading)
    ]
    return sorted(out, key=lambda r: r.ts)


def on_the_wire(messages: list[ReplayMessage], prefix: str = "") -> list[Reading]:
    """Parse every published message the way the flow does: on its topic, one reading each."""
    out = []
    for m in messages:
        if m.sensor_id == UNPARSED:
            continue
        parsed = parse_message(m.topic(prefix), m.payload, 0.0, LIMITS)
        assert len(parsed) == 1 and isinstance(parsed[0], Reading), (m, parsed)
        out.append(parsed[0])
    return out


def same(a: list[Reading], b: list[Reading]) -> None:
    assert [(r.sensor_id, r.ts, r.values) for r in a] == [(r.sensor_id, r.ts, r.values) for r in b]


def test_jsonl_is_time_ordered_and_unparsable_lines_go_to_unparsed(tmp_path: Path) -> None:
    lines = [
        {"sensor_id": "b", "ts": T0 + 120, "values": {"pm": 2}},
        {"sensor_id": "a", "ts": T0, "values": {"pm": 1.5}},
        {"sensor_id": "a", "ts": T0 + 120, "values": {"pm": None}},  # a tie: input order kept
        {"sensor_id": "c", "ts": "2024-04-01T00:01:00Z", "values": {"pm": 3}},
    ]
    raw = [orjson.dumps(x) for x in lines]
    raw.insert(2, b"{broken")
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(raw) + b"\n\n")
    got = read("jsonl", src)
    assert [(m.sensor_id, m.ts - T0) for m in got] == [
        ("a", 0), (UNPARSED, 0), ("c", 60), ("b", 120), ("a", 120)
    ]  # fmt: skip
    assert [m.payload for m in got] == [raw[1], b"{broken", raw[4], raw[0], raw[3]]
    assert got[0].topic("site1/") == "site1/sensors/a/readings"
    same(on_the_wire(got), offline("jsonl", src))


def test_arrays_and_whole_responses_are_split_one_reading_per_topic(tmp_path: Path) -> None:
    array = [{"sensor_id": "x", "ts": T0 + 5, "values": {"v": 1}},
             {"sensor_id": "y", "ts": T0 + 1, "values": {"v": 2}},
             {"sensor_id": "x", "ts": "never", "values": {"v": 3}}]  # fmt: skip
    response = {"data_time_stamp": T0 + 3, "fields": ["sensor_index", "pm1.0_cf_1", "name"],
                "data": [[7, 1.0, "n"], [8, None, "m"], [9]]}  # fmt: skip
    single = {"data_time_stamp": T0 + 4, "sensor": {"sensor_index": 5, "humidity": 40}}
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(x) for x in (array, response, single)))
    got = read("jsonl", src)
    assert [(m.sensor_id, m.ts - T0) for m in got] == [
        ("y", 1), (UNPARSED, 1), ("7", 3), ("8", 3), (UNPARSED, 3), ("5", 4), ("x", 5)
    ]  # fmt: skip
    assert orjson.loads(got[2].payload) == {
        "sensor_id": "7", "ts": "2024-04-01T00:00:03+00:00", "values": {"pm1.0_cf_1": 1.0}
    }  # fmt: skip
    assert got[5].payload == orjson.dumps(single)  # one reading: published as it came
    assert orjson.loads(got[1].payload) == array[2]
    assert orjson.loads(got[4].payload) == {"_malformed_row": [9], "fields": response["fields"]}
    same(on_the_wire(got), offline("jsonl", src))


def test_csv_nab_and_skab_rows_parse_back_to_the_same_readings(tmp_path: Path) -> None:
    csv = tmp_path / "fleet.csv"
    csv.write_text("timestamp,value,other\n2024-04-01 00:02:00,1.5,\n"
                   "2024-04-01 00:01:00,2,x\n1711929600,3,4\n")  # fmt: skip
    skab = tmp_path / "pump.csv"
    skab.write_text("datetime;Current;anomaly;changepoint\n2020-03-09 10:14:33;1.33;0;0\n")
    got = read("csv", csv)
    assert [m.sensor_id for m in got] == ["fleet", "fleet", UNPARSED]  # file stem; "x" refused
    assert orjson.loads(got[0].payload) == {
        "sensor_id": "fleet", "ts": 1711929600.0, "values": {"value": 3.0, "other": 4.0}
    }  # fmt: skip
    same(on_the_wire(got), offline("csv", csv))
    same(on_the_wire(read("nab", csv)), offline("nab", csv))
    pump = read("skab", skab)
    assert [m.topic() for m in pump] == ["sensors/pump/readings"]
    assert orjson.loads(pump[0].payload)["values"] == {"Current": 1.33}  # labels dropped
    same(on_the_wire(pump), offline("skab", skab))


def test_simulator_rows_keep_the_purpleair_shape_and_come_in_time_order() -> None:
    options = {"sim_sensors": 5, "sim_duration_s": 3600, "sim_interval_s": 60}
    got = read("simulator", **options)
    assert len(got) == 300
    assert [m.ts for m in got] == sorted(m.ts for m in got)
    assert {m.sensor_id for m in got[:5]} == {"1000", "1001", "1002", "1003", "1004"}
    row = orjson.loads(got[0].payload)
    assert row["sensor_index"] == 1000 and row["last_seen"] == T0
    same(on_the_wire(got), offline("simulator", **options))


@pytest.mark.skipif(not (DATA / "purpleair" / "data.json").exists(), reason="no shared data")
def test_purpleair_snapshot_one_message_per_sensor_row() -> None:
    snapshot = DATA / "purpleair" / "data.json"
    got = read("purpleair", snapshot)
    rows = orjson.loads(snapshot.read_bytes())["data"]
    assert len(got) == len(rows) == 25_552
    assert [m.sensor_id for m in got] == [str(r[0]) for r in rows]  # one time stamp: file order
    first = orjson.loads(got[0].payload)
    assert first["sensor_index"] == rows[0][0] and first["data_time_stamp"] == 1712793665
    same(on_the_wire(got, "site1/"), offline("purpleair", snapshot))


def test_pacer_keeps_an_absolute_schedule() -> None:
    now, slept = [100.0], []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s + (0.05 if len(slept) == 2 else 0.0)  # the second sleep overshoots

    pacer = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
    for i in range(6):
        pacer.wait(i)
    # Due at 100.0, .1, .2, .3, .4, .5: the overshoot is made up, not carried on.
    assert [round(s, 6) for s in slept] == [0.1, 0.1, 0.05, 0.1, 0.1]
    assert round(now[0], 6) == 100.5
    fast = Pacer(1e6, clock=lambda: now[0], sleep=sleep)
    for i in range(100):  # 100 µs worth: all under min_sleep_s, no sleep at all
        fast.wait(i)
    assert len(slept) == 5
    Pacer(None, clock=lambda: 1 / 0).wait(3)  # no rate: not even the clock is read


def test_progress_lines_and_the_repainted_terminal_line() -> None:
    now = [0.0]
    stats = ReplayStats(qos=1, total=400)
    log = io.StringIO()
    plain = Progress(log, tty=False, every_s=5.0, clock=lambda: now[0])
    for t, sent in ((0.0, 0), (4.0, 100), (5.0, 200), (6.0, 300), (10.5, 400)):
        now[0], stats.sent, stats.acknowledged = t, sent, sent - 50
        plain.update(stats)
    assert log.getvalue().splitlines() == [
        "edgewatch replay: 200/400 messages (50%), 40 msg/s, 150 acknowledged",
        "edgewatch replay: 400/400 messages (100%), 38 msg/s, 350 acknowledged",
    ]
    term = io.StringIO()
    tty = Progress(term, tty=True, clock=lambda: now[0])
    tty.update(ReplayStats(0, 10))
    now[0] += 1.0
    tty.update(ReplayStats(0, 10, sent=5, acknowledged=4))
    tty.close()
    assert term.getvalue() == "\r\x1b[K5/10 messages (50%), 5 msg/s, 4 written\r\x1b[K"


@pytest.mark.parametrize("prefix", ["a/+/", "#", "x\0", "$SYS/"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="bad topic prefix"):
        check_prefix(prefix)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--format", "jsonl", "missing.jsonl"], "input file(s) not found: missing.jsonl"),
        (["--format", "jsonl"], "--format jsonl needs a PATH"),
        (["--format", "csv", "."], "a PATH is a directory: name its files"),
        (["--format", "simulator", "x.json"], "--format simulator takes no PATH"),
        (["--format", "simulator", "--prefix", "site/#"], "bad topic prefix 'site/#'"),
        (["--format", "simulator", "--rate", "0"], "--rate must be positive"),
        (["--format", "simulator", "--sensors", "0"], "sensors must be at least 1"),
        (["--format", "simulator", "--password-file", "nope"], "mqtt_password_file=nope"),
        (["--format", "simulator", "--broker", "http://x"], "broker URL must look like"),
    ],
)
def test_usage_and_input_errors_exit_2_before_connecting(
    args: list[str], why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    broker = ["--broker", f"mqtt://127.0.0.1:{free_port()}", "--connect-timeout", "0.2"]
    assert main(["replay", *broker, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgewatch: configuration error: ") and why in err, err


def test_unreadable_input_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "snap.json"
    bad.write_text("[1, 2")
    assert main(["replay", "--format", "purpleair", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {bad} as --format purpleair: {bad} is not JSON" in err, err
