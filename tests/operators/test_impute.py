from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from river import preprocessing, stats

from operators.impute import RunningMeanImputer, impute
from operators.records import Reading

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
    op.output("out", impute("impute", keyed, ["temperature"]), TestingSink(out))
    run_main(flow)
    filled = {k: r.values["temperature"] for k, r in out if r.imputed}
    assert filled == {"a": 10.0, "b": 50.0}
