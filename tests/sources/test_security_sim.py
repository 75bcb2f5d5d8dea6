from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from itertools import islice
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from sources import security_sim
from sources.broker_log import BrokerEvent
from sources.security_sim import (
    KINDS,
    DeviceFleet,
    DeviceFleetConfig,
    DeviceFleetSource,
    Misbehaviour,
)
from sources.simulator import MISBEHAVIOUR_KINDS
from sources.simulator import DeviceFleet as ReExported

# 60 devices, 6 h at 15 s = ~86,000 messages; 10 episodes over the 7 kinds.
CFG = DeviceFleetConfig(devices=60, duration_s=6 * 3600, loss=0.01, reboot_every_days=1.0)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
VALUES = {"uptime", "rssi", "pm2.5_atm", "temperature", "humidity"}
Event = tuple[str, bytes, float] | BrokerEvent


def ts(e: Event) -> float:
    return e.ts if isinstance(e, BrokerEvent) else e[2]


def valid(payload: bytes) -> dict[str, Any] | None:
    """The reading in a payload, or None where it is not a valid one."""
    try:
        row = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(row, dict) or set(row) != {"sensor_id", "ts", "values"}:
        return None
    values = row["values"]
    if (
        not isinstance(row["sensor_id"], str)
        or not isinstance(values, dict)
        or set(values) != VALUES
    ):
        return None
    numbers = [row["ts"], *values.values()]
    return row if all(isinstance(v, int | float) for v in numbers) else None


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(DeviceFleet(CFG).events())


@pytest.fixture(scope="module")
def labels() -> dict[str, list[Misbehaviour]]:
    out: dict[str, list[Misbehaviour]] = defaultdict(list)
    for m in DeviceFleet(CFG).labels():
        out[m.kind].append(m)
    return out


def during(episodes: list[Misbehaviour], device: str, t: float) -> bool:
    return any(m.device == device and m.start <= t < m.end for m in episodes)


def own(events: list[Event], device: str) -> list[tuple[float, bytes]]:
    """(t, payload) of the device's messages on its own topic (not others' foreign ones)."""
    topic, me = f"sensors/{device}/readings", f'"sensor_id":"{device}"'.encode()
    return [(e[2], e[1]) for e in events if not isinstance(e, BrokerEvent) and e[0] == topic
            and (valid(e[1]) is None or me in e[1])]  # fmt: skip


def broker(events: list[Event], device: str, kind: str) -> list[BrokerEvent]:
    return [e for e in events if isinstance(e, BrokerEvent) and e.client_id == device
            and e.kind == kind]  # fmt: skip


def test_same_config_gives_identical_events_and_seeds_differ(events: list[Event]) -> None:
    assert list(DeviceFleet(CFG).events()) == events
    other = DeviceFleetConfig(devices=60, duration_s=6 * 3600, loss=0.01, seed=8)
    assert list(islice(DeviceFleet(other).events(), 1000)) != events[:1000]
    assert DeviceFleet(other).labels() != DeviceFleet(CFG).labels()
    assert ReExported is DeviceFleet and MISBEHAVIOUR_KINDS == KINDS


def test_events_are_in_time_order_and_well_formed(events: list[Event]) -> None:
    times = [ts(e) for e in events]
    assert times == sorted(times)
    assert T0 <= times[0] and times[-1] < T0 + CFG.duration_s
    fleet = DeviceFleet(CFG)
    assert fleet.device_ids()[:2] == ["dev-00", "dev-01"] and len(fleet.device_ids()) == 60
    assert fleet.device_hours() == 360.0
    first: dict[str, Event] = {}
    for e in events:
        if isinstance(e, BrokerEvent):
            assert e.kind in {"connect", "disconnect", "auth_failure"}
            if e.client_id:  # mosquitto does not name the client of a refused login
                first.setdefault(e.client_id, e)
            continue
        device = e[0].split("/")[1]
        first.setdefault(device, e)
        row = valid(e[1])
        if row is not None and row["sensor_id"] == device:
            v = row["values"]
            assert row["ts"] == e[2] and -100 <= v["rssi"] <= -30 and v["uptime"] >= 0
            assert 2 <= v["humidity"] <= 100 and 20 <= v["temperature"] <= 110
    for device in fleet.device_ids():  # every device connects before its first message
        e = first[device]
        assert isinstance(e, BrokerEvent) and e.kind == "connect" and e.detail == device
        assert e.address.startswith("10.0.0.") and int(e.address.split(":")[1]) >= 1024


def test_labels_cover_every_kind_on_distinct_devices_after_warmup() -> None:
    labels = DeviceFleet(CFG).labels()
    assert len(labels) == 10 and {m.kind for m in labels} == set(KINDS)
    assert len({m.device for m in labels}) == 10
    assert [m.start for m in labels] == sorted(m.start for m in labels)
    for m in labels:
        assert T0 + CFG.warmup_s <= m.start and m.end <= T0 + CFG.duration_s
        assert 180 <= m.end - m.start <= 1800
    only = DeviceFleetConfig(devices=5, duration_s=7200, misbehaviours=3, kinds=("silent",))
    assert {m.kind for m in DeviceFleet(only).labels()} == {"silent"}


def rate(msgs: list[tuple[float, bytes]], lo: float, hi: float) -> float:
    return sum(lo <= t < hi for t, _ in msgs) / (hi - lo)


def test_flood_publishes_twenty_times_the_normal_rate(
    events: list[Event], labels: dict[str, list[Misbehaviour]]
) -> None:
    assert len(labels["flood"]) == 2
    for m in labels["flood"]:
        msgs = own(events, m.device)
        assert rate(msgs, m.start, m.end) == pytest.approx(20 / 15, rel=0.05)
        assert rate(msgs, T0, m.start) == pytest.approx(1 / 15, rel=0.05)
        assert rate(msgs, m.end, T0 + CFG.duration_s) == pytest.approx(1 / 15, rel=0.1)


def test_foreign_topics_come_from_one_device_during_its_episode(
    events: list[Event], labels: dict[str, list[Misbehaviour]]
) -> None:
    episodes = labels["foreign_topic"]
    foreign: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for e in events:
        if not isinstance(e, BrokerEvent) and (row := valid(e[1])) and row["sensor_id"] not in e[0]:
            foreign[row["sensor_id"]].append((e[2], e[0]))
    assert set(foreign) == {m.device for m in episodes}
    for m in episodes:
        got = foreign[m.device]
        assert all(m.start <= t < m.end for t, _ in got)
        assert len(got) == pytest.approx((m.end - m.start) / 15, rel=0.15)
        assert len({topic for _, topic in got}) > min(10, len(got) // 3)
        assert rate(own(events, m.device), m.start, m.end) == pytest.approx(1 / 15, rel=0.25)


def test_oversized_payloads_only_during_the_episode(
    events: list[Event], labels: dict[str, list[Misbehaviour]]
) -> None:
    sizes: list[int] = []
    for e in events:
        if isinstance(e, BrokerEvent):
            continue
        if during(labels["oversized"], e[0].split("/")[1], e[2]):
            sizes.append(len(e[1]))
            assert orjson.loads(e[1])["sensor_id"] in e[0]
        else:
            assert len(e[1]) < 300
    assert 20_000 <= min(sizes) and max(sizes) <= 200_200 and len(sizes) > 20


def test_malformed_payloads_are_most_of_the_episode_and_nowhere_else(
    events: list[Event], labels: dict[str, list[Misbehaviour]]
) -> None:
    m = labels["malformed"][0]
    inside = [p for t, p in own(events, m.device) if m.start <= t < m.end]
    bad = [p for p in inside if valid(p) is None]
    assert 0.7 <= len(bad) / len(inside) < 1.0

    def why(payload: bytes) -> str:
        try:
            row = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "broken"
        if not isinstance(row, dict):
            return "not an object"
        return "no sensor_id" if "sensor_id" not in row else "wrong types"

    assert set(Counter(map(why, bad))) == {"broken", "not an object", "no sensor_id",
                                           "wrong types"}  # fmt: skip
    exempt = [m, *labels["oversized"]]
    for e in events:
        if not isinstance(e, BrokerEvent):
            assert valid(e[1]) or during(exempt, e[0].split("/")[1], e[2])


def test_reboot_loop_resets_uptime_with_disconnect_and_connect(
    events: list[Event], labels: dict[str, list[Misbehaviour]]
) -> None:
    m = labels["reboot_loop"][0]
    msgs = [(t, orjson.loads(p)["values"]["uptime"]) for t, p in own(events, m.device)]
    inside = [up for t, up in msgs if m.start <= t < m.end]
    assert max(inside[1:]) < 3 * 15 and min(inside) < 15
    connects = [e.ts for e in broker(events, m.device, "connect")]
    disconnects = [e.ts for e in broker(events, m.device, "disconnect")]
    assert len(connects) - 1 == len(disconnects)
    resets = 0
    for (t1, up1), (t2, up2) in zip(msgs, msgs[1:], strict=False):
        reset = up2 < up1 + (t2 - t1) - 1  # uptime did not grow with the elapsed time
        assert reset == any(t1 < t < t2 for t in disconnects)
        resets += reset
    assert len(inside) / 2 <= resets <= len(inside) + 1
    assert all(m.start <= t < m.end for t in connects[1:] + disconnects)
    before = [up for t, up in msgs if t < m.start]
    assert before == sorted(before) and before[0] > 100


def test_silent_device_publishes_nothing_during_its_episode(
    events: list[Event], labels: dict[str, list[Misbehaviour]]
) -> None:
    m = labels["silent"][0]
    msgs = own(events, m.device)
    assert rate(msgs, m.start, m.end) == 0
    assert rate(msgs, m.start - 900, m.start) > 0 and rate(msgs, m.end, m.end + 900) > 0


def test_wrong_password_gives_auth_failures_during_its_episode(
    events: list[Event], labels: dict[str, list[Misbehaviour]]
) -> None:
    m = labels["wrong_password"][0]
    failures = [e for e in events if isinstance(e, BrokerEvent) and e.kind == "auth_failure"]
    # as mosquitto 2.0 logs a refused login: no client id, the connection's address
    host = DeviceFleet(CFG).host(m.device)
    assert {(e.client_id, e.address.rpartition(":")[0], e.detail) for e in failures} == {
        ("", host, "not authorised")
    }
    times = [e.ts for e in failures]
    assert all(m.start <= t < m.end for t in times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert 2 <= min(gaps) and max(gaps) <= 6 and times[0] - m.start <= 6
    assert rate(own(events, m.device), m.start, m.end) == pytest.approx(1 / 15, rel=0.25)


def test_healthy_devices_rate_loss_and_ordinary_reboots(events: list[Event]) -> None:
    sick = {m.device for m in DeviceFleet(CFG).labels()}
    uptimes: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for e in events:
        if isinstance(e, BrokerEvent) or (device := e[0].split("/")[1]) in sick:
            continue
        row = orjson.loads(e[1])  # a foreign_topic device's messages name the sender
        if row["sensor_id"] == device:
            uptimes[device].append((e[2], row["values"]["uptime"]))
    assert len(uptimes) == 50
    received = lost = resets = 0
    for device, msgs in uptimes.items():
        assert len(msgs) / CFG.duration_s == pytest.approx(1 / 15, rel=0.02)
        received += len(msgs)
        lost += sum(round((b[0] - a[0]) / 15) - 1 for a, b in zip(msgs, msgs[1:], strict=False))
        reboots = [e.ts for e in broker(events, device, "disconnect")]
        for (t1, up1), (t2, up2) in zip(msgs, msgs[1:], strict=False):
            if up2 < up1:  # an ordinary reboot: disconnect + connect between the messages
                resets += 1
                assert sum(t1 < t < t2 for t in reboots) == 1 and up2 < 15
            else:
                assert up2 - up1 == pytest.approx(t2 - t1, abs=1.01)
        assert len(reboots) == len(broker(events, device, "connect")) - 1
    assert lost / (received + lost) == pytest.approx(CFG.loss, rel=0.3)
    assert 5 <= resets <= 30  # about one a day per device: 50 devices x 6 h


def test_source_resumes_from_a_snapshot_without_gaps_or_repeats(
    events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = DeviceFleetSource(CFG, batch_size=997)
    assert source.list_parts() == ["device-fleet"]
    part = source.build_part("s", "device-fleet", None)
    first = [e for _ in range(3) for e in part.next_batch()]
    assert part.snapshot() == len(first) == 2991
    monkeypatch.setattr(security_sim, "_SKIP_CHUNK", 1000)  # skipping takes 3 calls
    resumed = source.build_part("s", "device-fleet", part.snapshot())
    assert [resumed.next_batch() for _ in range(3)] == [[], [], []]
    assert resumed.snapshot() == 2991
    rest: list[Event] = []
    while True:
        try:
            rest.extend(resumed.next_batch())
        except StopIteration:
            break
    assert first + rest == events and resumed.snapshot() == len(events)


def test_runs_in_a_bytewax_dataflow() -> None:
    cfg = DeviceFleetConfig(devices=20, duration_s=3 * 3600, misbehaviours=7)
    out: list[Event] = []
    flow = Dataflow("fleet_test")
    op.output("out", op.input("in", flow, DeviceFleetSource(cfg, batch_size=500)),
              TestingSink(out))  # fmt: skip
    run_main(flow)
    assert out == list(DeviceFleet(cfg).events())


def test_generation_speed_of_the_default_fleet() -> None:
    start = time.perf_counter()
    n = sum(1 for _ in islice(DeviceFleet(DeviceFleetConfig()).events(), 300_000))
    print(f"default fleet: {n / (time.perf_counter() - start):,.0f} events/s")  # noqa: T201


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"devices": 0}, "devices"),
        ({"jitter_s": 8.0}, "jitter_s"),
        ({"loss": 1.0}, "loss"),
        ({"start": datetime(2026, 1, 1)}, "tz-aware"),  # noqa: DTZ001
        ({"misbehaviours": 1001}, "misbehaviours"),
        ({"kinds": ("flood", "meteor")}, "kinds"),
        ({"duration_s": 3600}, "30 minutes"),
        ({"reboot_every_days": 0}, "reboot_every_days"),
        ({"flood_factor": 0.5}, "flood_factor"),
    ],
)
def test_config_is_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeviceFleetConfig(**kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceFleetSource(CFG, batch_size=0)
