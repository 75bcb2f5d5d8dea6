from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.air_quality import build_flow
from dataflows.settings import ConfigError, Settings
from operators.limits import TokenBucket, _RateLogic, rate_limit
from operators.records import Invalid, Reading, Scored

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def reading(sid: str, at: float) -> Reading:
    return Reading(sid, T0 + timedelta(seconds=at), {"pm": 1.0}, "t", (), T0.timestamp() + at)


def test_bucket_rate_burst_and_backwards_clock() -> None:
    b = TokenBucket(rate=2.0, window_s=3.0)  # bursts of 6, then 2 per second
    assert sum(b.take(100.0) for _ in range(10)) == 6
    assert [b.take(100.5), b.take(100.5), b.take(99.0)] == [True, False, False]
    assert sum(b.take(200.0) for _ in range(10)) == 6  # refilled, never above capacity
    again = TokenBucket(2.0, 3.0, pickle.loads(pickle.dumps(b.state())))
    assert again.state() == b.state() and not again.take(200.0)
    with pytest.raises(ValueError, match="must be positive"):
        TokenBucket(0.0, 1.0)


def test_rate_logic_refuses_with_reason_and_is_evicted_when_idle() -> None:
    logic = _RateLogic(1.0, 2.0, None)
    out, retain = logic.on_batch([reading("a", 0.0), reading("a", 0.1), reading("a", 0.2)])
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["Reading", "Reading", "Invalid"] and retain == StatefulBatchLogic.RETAIN
    refused = list(out)[2]
    assert isinstance(refused, Invalid) and refused.reason == "rate_limited"
    assert orjson.loads(refused.to_json("f"))["payload"].startswith('{"sensor_id":"a"')
    deadline = logic.notify_at()
    assert deadline is not None
    assert timedelta(seconds=1) < deadline - datetime.now(timezone.utc) <= timedelta(seconds=2)
    assert logic.on_notify() == ((), StatefulBatchLogic.DISCARD)  # idle: state dropped
    tokens, clock = logic.snapshot()
    assert tokens == pytest.approx(0.2, abs=1e-4) and clock == T0.timestamp() + 0.2


def test_rate_limit_operator_per_sensor() -> None:
    items = [reading(s, i * 0.01) for i in range(20) for s in ("a", "b")]
    items += [reading("a", 5.0)]  # after a quiet spell, a is allowed again
    oks: list[Reading] = []
    errs: list[Invalid] = []
    flow = Dataflow("limits")
    out = rate_limit("rl", op.input("in", flow, TestingSource(items, batch_size=7)), 1.0, 3.0)
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert Counter(r.sensor_id for r in oks) == {"a": 4, "b": 3}
    assert Counter(e.reason for e in errs) == {"rate_limited": 34}


def test_air_quality_flow_dead_letters_rate_limited(tmp_path: Path) -> None:
    now = T0.timestamp()
    body = {"ts": now, "values": {"pm1.0_cf_1": 3.0}}
    messages = [(f"sensors/s{i % 3}/readings", orjson.dumps(body | {"ts": now + j}), now)
                for j in range(10) for i in range(3)]  # fmt: skip
    dead = tmp_path / "dead.jsonl"
    settings = Settings.load(env={}, alerts_path="", deadletter_path=str(dead),
                             max_rate_per_sensor=0.5, rate_window_s=8)  # fmt: skip
    scored: list[tuple[str, Scored]] = []
    run_main(build_flow(settings, source=TestingSource(messages), on_scored=scored.extend))
    assert sum(len(s) for _, s in scored) == 3 * 4  # a burst of 0.5 * 8 per sensor
    reasons = Counter(orjson.loads(line)["reason"] for line in dead.read_bytes().splitlines())
    assert reasons == {"rate_limited": 3 * 6}
    off = dataclasses.replace(settings, max_rate_per_sensor=0.0, deadletter_path="")
    scored.clear()
    run_main(build_flow(off, source=TestingSource(messages), on_scored=scored.extend))
    assert sum(len(s) for _, s in scored) == 30


def test_rate_settings_are_validated() -> None:
    env = {"EDGEWATCH_MAX_RATE_PER_SENSOR": "2.5", "EDGEWATCH_RATE_WINDOW_S": "4"}
    s = Settings.load(env=env)
    assert (s.max_rate_per_sensor, s.rate_window_s) == (2.5, 4.0)
    with pytest.raises(ConfigError, match="max_rate_per_sensor"):
        Settings.load(env={}, max_rate_per_sensor=-1)
    with pytest.raises(ConfigError, match="rate_window_s"):
        Settings.load(env={}, rate_window_s=0)
