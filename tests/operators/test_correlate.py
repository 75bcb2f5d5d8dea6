from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.correlate import (
    GroupCorrelator,
    correlate,
    incident_topic,
    keyed_incident,
    make_incident,
)
from operators.records import Alert, alert_id

T0 = datetime(2024, 4, 1, 12, tzinfo=timezone.utc)
GROUPS = {f"n{i}": "north" for i in range(6)} | {f"s{i}": "south" for i in range(6)}
W = timedelta(minutes=5)


def alert(sid: str, seconds: float, score: float = 0.8) -> Alert:
    ts = T0 + timedelta(seconds=seconds)
    return Alert(alert_id("t", sid, "hst", ts), sid, "t", "hst", score, 0.7, ts, ts, {"pm": 1.0})


def run(items: list, recovery: RecoveryConfig | None = None, batch_size: int = 3) -> list[Alert]:
    out: list[Alert] = []
    flow = Dataflow("correlate_test")
    src = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    op.output("out", correlate("fleet", src, GROUPS, flow="air", k=3, window=W), TestingSink(out))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    return out


def test_k_minus_one_sensors_make_no_incident() -> None:
    assert run([alert("n0", 0), alert("n1", 10), alert("n0", 20), alert("n1", 200)]) == []


def test_k_sensors_in_the_window_make_exactly_one_incident() -> None:
    items = [alert("n0", 0, 0.75), alert("n1", 30), alert("n0", 60, 0.95), alert("n2", 120, 0.9),
             alert("n3", 150), alert("n4", 170)]  # fmt: skip
    (inc,) = run(items)
    assert inc.sensor_id == "fleet/north" and inc.detector == "fleet" and inc.flow == "air"
    assert inc.votes == {"n0": 0.95, "n1": 0.8, "n2": 0.9}
    assert inc.ts == T0 and inc.alert_id == alert_id("air", "fleet/north", "fleet", T0)
    assert (inc.score, inc.threshold, inc.severity) == (3.0, 3.0, "warning")
    assert inc.values == {"sensors": 3.0, "alerts": 4.0, "span_s": 120.0}
    assert keyed_incident(inc) == ("north", inc.to_json())


def test_one_sensor_alerting_k_times_makes_no_incident() -> None:
    assert run([alert("n0", i) for i in range(10)]) == []


def test_alerts_further_apart_than_the_window_do_not_combine() -> None:
    assert run([alert("n0", 0), alert("n1", 200), alert("n2", 300)]) == []  # 300 s: not < W


def test_groups_are_separate_and_ungrouped_sensors_ignored() -> None:
    items = [alert("n0", 0), alert("s0", 1), alert("x1", 2), alert("x2", 3), alert("n1", 4),
             alert("s1", 5), alert("s2", 6)]  # fmt: skip
    (inc,) = run(items)
    assert inc.sensor_id == "fleet/south" and set(inc.votes) == {"s0", "s1", "s2"}


def test_two_bursts_apart_by_more_than_the_window_make_two_incidents() -> None:
    first = [alert(f"n{i}", 20 * i) for i in range(5)]  # burst until 80 s
    second = [alert(f"n{i}", 1000 + 20 * i) for i in (3, 4, 5)]  # after > 5 min of quiet
    got = run(first + second)
    assert [i.ts for i in got] == [T0, T0 + timedelta(seconds=1060)]
    assert set(got[1].votes) == {"n3", "n4", "n5"}


def test_a_burst_lasts_while_alerts_keep_coming() -> None:
    # an alert every 100 s for an hour, 3 sensors in every window: one burst, one incident
    items = [alert(f"n{i % 6}", 100 * i) for i in range(36)]
    assert len(run(items)) == 1
    assert len(run([*items, alert("n0", 3500 + 300), alert("n1", 3801), alert("n2", 3802)])) == 2


def test_ids_are_the_same_across_runs_and_batch_sizes() -> None:
    items = [alert(f"n{i % 4}", 37 * i) for i in range(40)] + [alert("n1", 9000 + i) for i in
                                                               range(3)]  # fmt: skip
    items += [alert(f"s{i}", 9500 + i) for i in range(4)]
    ids = [sorted(a.alert_id for a in run(items, batch_size=b)) for b in (1, 3, 100)]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 2


def test_out_of_order_alerts_within_the_window_count() -> None:
    items = [alert("n0", 100), alert("n1", 250), alert("n2", 30)]
    (inc,) = run(items)
    assert inc.ts == T0 + timedelta(seconds=30) and set(inc.votes) == {"n0", "n1", "n2"}
    too_late = [alert("n0", 400), alert("n1", 410), alert("n2", 30)]
    assert run(too_late) == []


def test_snapshot_round_trip_continues_identically() -> None:
    items = [alert(f"n{i % 5}", 90 * i, 0.7 + i / 100) for i in range(30)]
    whole = GroupCorrelator(3, W)
    expected = [whole.add(a) for a in items]
    got = []
    g = GroupCorrelator(3, W)
    for a in items:
        got.append(g.add(a))
        g = GroupCorrelator(3, W, g.state())
    assert got == expected and any(expected)
    assert len(g.state()) < 200


def test_resume_from_recovery_keeps_the_window(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    items = [alert("n0", 0), alert("n1", 10), TestingSource.ABORT(), alert("n2", 20),
             alert("n3", 30)]  # fmt: skip
    first = run(items, recovery, batch_size=1)
    second = run(items, recovery, batch_size=1)
    assert first == []
    assert {i.alert_id for i in second} == {alert_id("air", "fleet/north", "fleet", T0)}
    assert set(second[0].votes) == {"n0", "n1", "n2"}


def test_callable_groups_and_validation() -> None:
    out: list[Alert] = []
    flow = Dataflow("correlate_callable")
    src = op.input("in", flow, TestingSource([alert(f"a{i}", i) for i in range(3)]))
    incidents = correlate("fleet", src, lambda sid: sid[0], flow="air", k=2, window=W)
    op.output("out", incidents, TestingSink(out))
    run_main(flow)
    assert [set(i.votes) for i in out] == [{"a0", "a1"}]
    with pytest.raises(ValueError, match="k >= 2"):
        GroupCorrelator(1, W)
    with pytest.raises(ValueError, match="group"):
        incident_topic("", "a/b")
    assert incident_topic("site/", "north") == "site/alerts/fleet/north"


def test_severity_rises_with_the_count() -> None:
    members = [(i, f"n{i}", 0.9) for i in range(6)]
    assert make_incident("g", members, "f", 3, T0).severity == "critical"
    assert make_incident("g", members[:5], "f", 3, T0).severity == "warning"
