from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.parse import (
    REASONS,
    ParseLimits,
    parse,
    parse_keyed,
    parse_many,
    parse_message,
    parse_routed,
)
from operators.records import Invalid, Reading
from tests.messages import FAMILIES, Message

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


def one(payload: bytes | dict, origin: str = "test", limits: ParseLimits | None = None):
    out = parse_message(origin, payload, NOW, limits or ParseLimits())
    assert len(out) == 1
    return out[0]


def reason(payload: bytes | dict, origin: str = "test", **kw: float) -> str:
    got = one(payload, origin, ParseLimits(**kw))
    assert isinstance(got, Invalid), got
    assert got.reason in REASONS
    return got.reason


def test_generic_reading_iso_and_epoch() -> None:
    a = one(b'{"sensor_id": "a1", "ts": "2024-04-01T00:00:00Z", "values": {"pm": 3, "t": null}}')
    b = one({"sensor_id": "a1", "ts": 1711929600000, "values": {"pm": 3.0, "t": None}})
    assert isinstance(a, Reading) and isinstance(b, Reading)
    assert a.ts == b.ts == datetime(2024, 4, 1, tzinfo=timezone.utc)
    assert a.values == {"pm": 3.0, "t": None}
    assert a.sensor_id == "a1" and a.source == "test" and a.received_at == NOW


def test_purpleair_row_uses_last_seen_then_data_time_stamp() -> None:
    row = {
        "sensor_index": 131075,
        "rssi": -59,
        "pm1.0_cf_1": 3.4,
        "name": "Backyard",
        "latitude": 36.0,
        "longitude": -78.8,
        "data_time_stamp": 1712000000,
    }
    r = one(row)
    assert isinstance(r, Reading)
    assert r.sensor_id == "131075"
    assert r.ts.timestamp() == 1712000000
    assert r.values == {"rssi": -59.0, "pm1.0_cf_1": 3.4}
    r2 = one({**row, "last_seen": 1712000100})
    assert isinstance(r2, Reading) and r2.ts.timestamp() == 1712000100


def test_purpleair_response_and_single_sensor() -> None:
    resp = {
        "data_time_stamp": 1712000000,
        "fields": ["sensor_index", "pm1.0_cf_1"],
        "data": [[1, 2.0], [2, None], [3]],
    }
    out = parse_message("purpleair", orjson.dumps(resp), NOW)
    assert [type(x).__name__ for x in out] == ["Reading", "Reading", "Invalid"]
    assert out[1].values == {"pm1.0_cf_1": None}  # type: ignore[union-attr]
    assert out[2].reason == "malformed_row"  # type: ignore[union-attr]
    single = {"data_time_stamp": 1712000000, "sensor": {"sensor_index": 9, "pm2.5_atm": 4.1}}
    r = one(orjson.dumps(single))
    assert isinstance(r, Reading) and r.sensor_id == "9" and r.values == {"pm2.5_atm": 4.1}


def test_json_array_of_readings() -> None:
    body = orjson.dumps([{"sensor_id": "a", "ts": 1711929600, "values": {"x": 1}}, 5])
    out = parse_message("t", body, NOW)
    assert isinstance(out[0], Reading)
    assert isinstance(out[1], Invalid) and out[1].reason == "not_an_object"


def test_topic_names_the_sensor() -> None:
    r = one({"ts": 1711929600, "values": {"x": 1}}, origin="edge/sensors/s9/readings")
    assert isinstance(r, Reading) and r.sensor_id == "s9"
    assert (
        reason(
            {"sensor_id": "other", "ts": 1711929600, "values": {"x": 1}},
            origin="sensors/s9/readings",
        )
        == "sensor_id_mismatch"
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": 1}', "malformed_json"),
        (b"\xff\xfe garbage", "malformed_json"),
        (b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": NaN}}', "non_finite_value"),
        (b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": Infinity}}', "non_finite_value"),
        ({"sensor_id": "a", "ts": 1711929600, "values": {"x": math.inf}}, "non_finite_value"),
        ({"sensor_id": "a", "ts": 1711929600, "values": {"x": math.nan}}, "non_finite_value"),
        (b"[1]", "not_an_object"),
        (b"[]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"hello": 1}', "unknown_format"),
        (b'{"ts": 1711929600, "values": {"x": 1}}', "missing_sensor_id"),
        (b'{"sensor_id": null, "ts": 1711929600, "values": {"x": 1}}', "missing_sensor_id"),
        (b'{"sensor_id": "", "ts": 1711929600, "values": {"x": 1}}', "bad_sensor_id"),
        (b'{"sensor_id": "a/b", "ts": 1711929600, "values": {"x": 1}}', "bad_sensor_id"),
        (b'{"sensor_id": [1], "ts": 1711929600, "values": {"x": 1}}', "bad_sensor_id"),
        (b'{"sensor_id": "a", "values": {"x": 1}}', "missing_timestamp"),
        (b'{"sensor_id": "a", "ts": "yesterday", "values": {"x": 1}}', "bad_timestamp"),
        (b'{"sensor_id": "a", "ts": true, "values": {"x": 1}}', "bad_timestamp"),
        (b'{"sensor_id": "a", "ts": 12, "values": {"x": 1}}', "bad_timestamp"),
        (b'{"sensor_id": "a", "ts": 4102444800, "values": {"x": 1}}', "future_timestamp"),
        (b'{"sensor_id": "a", "ts": 1711929600}', "missing_values"),
        (b'{"sensor_id": "a", "ts": 1711929600, "values": {}}', "missing_values"),
        (b'{"sensor_id": "a", "ts": 1711929600, "values": [1]}', "missing_values"),
        (b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": "12"}}', "non_numeric_value"),
        (b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": true}}', "non_numeric_value"),
        (b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": {"y": 1}}}', "non_numeric_value"),
        (b'{"sensor_index": 5, "pm1.0_cf_1": 1.0}', "missing_timestamp"),
    ],
)
def test_each_bad_input_has_its_reason(payload: bytes | dict, expected: str) -> None:
    assert reason(payload) == expected


@pytest.mark.parametrize("ts", [10**400, 10**17, -(10**400), 1e300, 253402300800 * 1000 * 10])
def test_absurd_timestamps_are_refused_offline_too(ts: float) -> None:
    out = parse_message("t", {"sensor_id": "a", "ts": ts, "values": {"x": 1}}, 0.0)
    assert isinstance(out[0], Invalid) and out[0].reason == "bad_timestamp"


def test_huge_integer_value_is_not_finite() -> None:
    assert reason({"sensor_id": "a", "ts": 1711929600, "values": {"x": 10**400}}) == (
        "non_finite_value"
    )


def test_size_limits() -> None:
    big = b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": 1}, "pad": "' + b"x" * 2000 + b'"}'
    assert reason(big, max_payload_bytes=1000) == "payload_too_large"
    many = {"sensor_id": "a", "ts": 1711929600, "values": {f"f{i}": 1 for i in range(10)}}
    assert reason(many, max_values=5) == "too_many_values"
    deep = b"[" * 5000 + b"]" * 5000
    assert reason(deep) == "malformed_json"


def test_invalid_keeps_payload_for_dead_letter() -> None:
    inv = one(b"{oops")
    assert isinstance(inv, Invalid)
    line = orjson.loads(inv.to_json("air_quality"))
    assert line["payload"] == "{oops" and line["reason"] == "malformed_json"
    assert line["flow"] == "air_quality" and line["origin"] == "test"
    huge = Invalid("payload_too_large", "", b"x" * 10_000).to_json("f", max_payload=100)
    assert orjson.loads(huge)["truncated"] is True and len(orjson.loads(huge)["payload"]) == 100


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    for item in parse_message("fuzz", data, NOW):
        assert isinstance(item, (Reading, Invalid))
        if isinstance(item, Invalid):
            assert item.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "sensor_id": json_values,
            "sensor_index": json_values,
            "ts": json_values,
            "values": json_values,
            "last_seen": json_values,
            "sensor": json_values,
        },
    )
)
def test_random_objects_never_raise(obj: dict) -> None:
    for item in parse_message("fuzz", obj, NOW):
        if isinstance(item, Reading):
            assert all(v is None or math.isfinite(v) for v in item.values.values())
            assert item.ts.tzinfo is not None
        else:
            assert item.reason in REASONS


def test_operator_splits_streams_in_a_real_dataflow() -> None:
    msgs = [
        ("t", b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": 1}}', NOW),
        ("t", b"not json", NOW),
        ("t", {"sensor_index": 7, "pm1.0_cf_1": 2.0, "data_time_stamp": 1711929600}, NOW),
    ]
    oks: list[Reading] = []
    errs: list[Invalid] = []
    flow = Dataflow("parse_test")
    out = parse("parse", op.input("in", flow, TestingSource(msgs)))
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert [r.sensor_id for r in oks] == ["a", "7"]
    assert [e.reason for e in errs] == ["malformed_json"]


@pytest.mark.parametrize("operator", [parse_keyed, parse_routed])
def test_keyed_parsers_key_readings_and_route_invalid_ones(operator: Callable[..., Any]) -> None:
    rng = random.Random(4)
    messages = [rng.choice(FAMILIES)(rng, NOW) for _ in range(120)]
    msgs = [(m.topic, m.payload, NOW) for m in messages]
    expected = [x for m in msgs for x in parse_message(*m)]
    oks: list[tuple[str, Reading]] = []
    errs: list[Invalid] = []
    flow = Dataflow("keyed_parse_test")
    out = operator("parse", op.input("in", flow, TestingSource(msgs, 7)), _sensor)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert all(k == r.sensor_id for k, r in oks)
    by_sensor = sorted((r.sensor_id, r.ts, repr(r.values)) for _, r in oks)
    assert by_sensor == sorted(
        (r.sensor_id, r.ts, repr(r.values)) for r in expected if type(r) is Reading
    )
    assert sorted(e.reason for e in errs) == sorted(
        e.reason for e in expected if type(e) is Invalid
    )


def _sensor(r: Reading) -> str:
    return r.sensor_id


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from(FAMILIES))
def test_hostile_message_families_get_their_reason(
    rng: random.Random, family: Callable[[random.Random, float], Message]
) -> None:
    msg = family(rng, NOW)
    out = parse_message(msg.topic, msg.payload, NOW)
    assert len(out) == 1
    got = out[0]
    if msg.expected == "ok":
        assert isinstance(got, Reading), got
        assert got.sensor_id == msg.topic.split("/")[1]
        assert all(v is None or math.isfinite(v) for v in got.values.values())
    else:
        assert isinstance(got, Invalid) and got.reason == msg.expected, (got, msg.payload[:200])
        line = orjson.loads(got.to_json("fuzz"))  # the dead letter can always be written
        assert line["reason"] == msg.expected and line["payload_bytes"] > 0


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 40))
def test_batch_fast_path_gives_what_parsing_each_message_gives(rng: random.Random, n: int) -> None:
    batch = [(m.topic, m.payload, NOW) for m in (rng.choice(FAMILIES)(rng, NOW) for _ in range(n))]
    batch.append(("purpleair", {"sensor_index": 7, "last_seen": NOW, "pm": 1.0}, NOW))
    one_by_one = [x for origin, p, t in batch for x in parse_message(origin, p, t)]
    assert parse_many(batch) == one_by_one


def test_deep_array_items_keep_a_dead_letter_payload() -> None:
    n = 1000  # parses (orjson reads 1024 levels) but is too deep to write back (254)
    body = b"[" + b"[" * n + b"]" * n + b', {"a": ' + b"[" * n + b"]" * n + b"}]"
    out = parse_message("t", body, NOW)
    assert [x.reason for x in out] == ["not_an_object", "unknown_format"]  # type: ignore[union-attr]
    assert all(orjson.loads(x.to_json("f"))["payload_bytes"] > 0 for x in out)  # type: ignore[union-attr]


def test_topic_sensor_id_is_checked_like_a_payload_one() -> None:
    body = b'{"ts": 1711929600, "values": {"pm": 1}}'
    assert reason(body, "sensors/a\u200bb/readings") == "bad_sensor_id"
    assert reason(body, f"sensors/{'x' * 129}/readings") == "bad_sensor_id"
    assert isinstance(one(body, "sensors/\u6e29\u5ea6/readings"), Reading)
