"""Hostile input through a real mosquitto into the running air-quality flow.

A few hundred seeded messages drawn from the families in :mod:`tests.messages` (random
bytes, 100,000-level nesting, 1 MB payloads, wrong types, NaN/inf, unicode sensor ids
and topics, out-of-order and far-future times, unknown sensors): the flow must not
stop, every good message must be scored exactly once and every bad one must be on
``deadletter/air_quality`` with the reason parsing it offline gives (or, for a
well-formed reading not later than its sensor's last, the order guard's reason).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.integration.broker import Broker, Subscriber, publish
from tests.integration.test_mqtt_flow import FlowThread, mqtt_settings
from tests.messages import in_order, mixed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

N, SEED = 300, 8


def test_hostile_messages_are_dead_lettered_and_good_ones_scored(
    broker: Broker, tmp_path: Path
) -> None:
    now = time.time()
    messages = in_order(mixed(SEED, N, now), now)
    expected = Counter(m.expected for m in messages)
    n_bad = N - expected["ok"]
    assert expected["ok"] > 100 and n_bad > 60 and len(expected) > 10
    assert expected["out_of_order"] > 10
    dead = Subscriber(broker, "deadletter/#").start()
    flow = FlowThread(mqtt_settings(broker, tmp_path, mqtt_idle_stop_s=2.0))
    broker.wait_for_log(r"\nflow-under-test 1 sensors/\+/readings")
    publish(broker, [(m.topic, m.payload) for m in messages])
    flow.join(40)  # stopped by idle time, not by an error

    assert sum(flow.scored.values()) == expected["ok"]
    letters = [orjson.loads(p) for _, p, _, _ in dead.wait_for(n_bad)]
    time.sleep(0.3)  # nothing more arrives
    dead.stop()
    assert len(dead.messages) == n_bad
    assert Counter(r["reason"] for r in letters) == expected - Counter(ok=expected["ok"])
    assert all(r["detail"] and r["origin"].startswith("sensors/") for r in letters)
    big = [r for r in letters if r["reason"] == "payload_too_large"]
    assert all(r["payload_bytes"] > 256 * 1024 and r["truncated"] for r in big)
