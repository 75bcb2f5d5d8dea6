from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from river import preprocessing, stats

from operators.impute import OrderGuard, RunningMeanImputer, impute
from operators.records import Invalid, Reading

T0 = datetime(2024, 4, 1, tzinfo=timezone.utc)
FIELDS = ("temperature", "humidity")


def reading(sid: str, i: int, values: dict[str, float | None]) -> Reading:
    return Reading(sid, T0 + timedelta(minutes=2 * i), values, "test")


def test_matches_river_stat_imputer_bit_for_bit() -> None:
    rng = random.Random(3)
    rows = [
        {f: (None if rng.random() < 0.2 else rng.uniform(-10, 40)) for f in FIELDS}
        for _ in range(5000)
    ]
    rows[0] = {"temperature": 1.0, "humidity": 2.0}  # River fills 0.0 where no history
    river = preprocessing.StatImputer(*[(f, stats.Mean()) for f in FIELDS])
    expected = []
    for x in rows:
        river.learn_one(x)
        expected.append(river.transform_one(x))
    ours = RunningMeanImputer(FIELDS)
    got = []
    for lo in range(0, len(rows), 137):  # batches of odd sizes
        got += ours.transform_many([reading("s", i, r) for i, r in enumerate(rows[lo : lo + 137])])
    assert [r.values for r in got] == expected
    marked = [r.imputed for r in got]
    assert marked == [tuple(f for f in FIELDS if x[f] is None) for x in rows]


def test_missing_keys_and_no_history_are_safe() -> None:
    imp = RunningMeanImputer(FIELDS)
    out = imp.transform_many(
        [
            reading("s", 0, {"pm": 1.0}),  # neither field ever seen: left alone
            reading("s", 1, {"temperature": 10.0}),
            reading("s", 2, {"pm": 2.0}),  # absent key filled like None
        ]
    )
    assert out[0].values == {"pm": 1.0} and out[0].imputed == ()
    assert out[2].values == {"pm": 2.0, "temperature": 10.0}
    assert out[2].imputed == ("temperature",)


def test_unchanged_readings_are_not_copied() -> None:
    rs = [reading("s", i, {"temperature": 1.0, "humidity": 2.0}) for i in range(3)]
    out = RunningMeanImputer(FIELDS).transform_many(rs)
    assert out is rs


def test_state_round_trip_continues_identically() -> None:
    rows = [
        reading("s", i, {"temperature": float(i), "humidity": None if i % 3 else 1.0 * i})
        for i in range(30)
    ]
    whole = RunningMeanImputer(FIELDS).transform_many(rows)
    first = RunningMeanImputer(FIELDS)
    head = first.transform_many(rows[:11])
    tail = RunningMeanImputer(FIELDS, first.state()).transform_many(rows[11:])
    assert [r.values for r in head + tail] == [r.values for r in whole]


def test_per_sensor_state_in_a_real_dataflow() -> None:
    items = [
        reading("a", 0, {"temperature": 10.0}),
        reading("b", 0, {"temperature": 50.0}),
        reading("a", 1, {"temperature": None}),
        reading("b", 1, {"temperature": None}),
    ]
    out: list[tuple[str, Reading]] = []
    flow = Dataflow("impute_test")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda r: r.sensor_id)
    op.output("out", impute("impute", keyed, ["temperature"]).oks, TestingSink(out))
    run_main(flow)
    filled = {k: r.values["temperature"] for k, r in out if r.imputed}
    assert filled == {"a": 10.0, "b": 50.0}


def test_order_guard_refuses_repeats_and_late_readings_per_sensor() -> None:
    items = [
        reading("a", 0, {"temperature": 10.0}),
        reading("a", 1, {"temperature": 20.0}),
        reading("b", 0, {"temperature": 50.0}),
        reading("a", 1, {"temperature": 99.0}),  # sent again (same event time)
        reading("a", 0, {"temperature": 99.0}),  # late
        reading("b", 1, {"temperature": None}),
        reading("a", 2, {"temperature": None}),
    ]
    oks: list[tuple[str, Reading]] = []
    errs: list[Invalid] = []
    flow = Dataflow("guard_test")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items, 2)), lambda r: r.sensor_id)
    out = impute("impute", keyed, ["temperature"])
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert [(k, r.ts, r.values["temperature"]) for k, r in oks] == [
        ("a", T0, 10.0),
        ("a", T0 + timedelta(minutes=2), 20.0),
        ("b", T0, 50.0),
        ("b", T0 + timedelta(minutes=2), 50.0),  # the refused 99s taught nothing
        ("a", T0 + timedelta(minutes=4), 15.0),
    ]
    assert [(e.reason, e.payload["values"]) for e in errs] == [  # type: ignore[index]
        ("duplicate_reading", {"temperature": 99.0}),
        ("out_of_order", {"temperature": 99.0}),
    ]
    assert all("is not after the sensor's last" in e.detail and e.origin == "test" for e in errs)


def test_order_guard_off_passes_everything_in_arrival_order() -> None:
    items = [reading("a", i, {"temperature": float(i)}) for i in (0, 1, 1, 0)]
    oks: list[tuple[str, Reading]] = []
    flow = Dataflow("no_guard_test")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda r: r.sensor_id)
    op.output("oks", impute("impute", keyed, ["temperature"], reject_stale=False).oks,
              TestingSink(oks))  # fmt: skip
    run_main(flow)
    assert [r.values["temperature"] for _, r in oks] == [0.0, 1.0, 1.0, 0.0]


def test_order_guard_fast_path_and_mixed_batches_agree_and_resume() -> None:
    rng = random.Random(5)
    rows = [reading(rng.choice("ab"), rng.randrange(40), {}) for _ in range(400)]
    one = OrderGuard()
    whole = [type(x).__name__ for x in one.admit(rows)]
    split_run = OrderGuard()
    parts: list[str] = []
    for lo in range(0, len(rows), 7):  # single-sensor and mixed batches, resumed each time
        split_run = OrderGuard(split_run.state())
        parts += [type(x).__name__ for x in split_run.admit(rows[lo : lo + 7])]
    assert parts == whole and whole.count("Invalid") > 200
    same = [reading("a", i, {}) for i in range(5)]
    assert OrderGuard().admit(same) is same  # in order, one sensor: passed as is
