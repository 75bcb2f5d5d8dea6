"""Per-device window features: observation, folding, Bytewax windows, silent devices."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.device_features import (
    BROKER_FEATURES,
    FEATURES,
    DeviceWindow,
    WindowAcc,
    device_windows,
)
from operators.observe import (
    BROKER_DEVICE,
    UNKNOWN_DEVICE,
    Ticker,
    observe_event,
    observe_message,
    observe_stats,
)

T0 = 1_800_000_000.0  # a window boundary for 60 s windows (divisible by 60)
F = {name: i for i, name in enumerate(FEATURES)}


def msg(device: str, t: float, uptime: float = 100.0, rssi: int = -60,
        topic_of: str | None = None, **extra: Any) -> tuple[str, bytes, float]:  # fmt: skip
    values = {"uptime": uptime, "rssi": rssi, "pm2.5_atm": 3.5, **extra}
    body = orjson.dumps({"sensor_id": device, "ts": t, "values": values})
    return (f"sensors/{topic_of or device}/readings", body, t)


def fold(observations: list[Any]) -> WindowAcc:
    acc = WindowAcc()
    for _, o in observations:
        acc.add(o)
    return acc


def test_a_window_of_messages_and_broker_events_gives_every_feature() -> None:
    obs = [observe_message(msg("a", T0 + t, uptime=500 + t)) for t in (0, 15, 31, 45)]
    obs.append(observe_message(msg("a", T0 + 50, topic_of="b")))  # a writes on b's topic
    obs.append(observe_message(("sensors/a/readings", b'{"sensor_id": "a", "ts": ', T0 + 52)))
    obs.append(observe_message(msg("a", T0 + 55, uptime=3)))  # rebooted
    for kind in ("connect", "auth_failure", "auth_failure", "acl_denied", "disconnect",
                 "protocol_error", "timeout"):  # fmt: skip
        seen = observe_event(T0 + 56, kind, "a")
        assert seen is not None
        obs.append(seen)
    assert {d for d, _ in obs} == {"a"}
    acc = fold(obs)
    x = acc.vector()
    sizes = [o[3] for _, o in obs if o[2] == 0]
    assert x[F["messages"]] == 7 and x[F["kbytes"]] == pytest.approx(sum(sizes) / 1000)
    assert x[F["size_mean"]] == pytest.approx(sum(sizes) / 7) and x[F["size_max"]] == max(sizes)
    assert x[F["topics"]] == 2 and x[F["foreign_writes"]] == 1
    assert x[F["invalid_ratio"]] == pytest.approx(1 / 7)
    gaps = [15, 16, 14, 5, 2, 3]
    mean = sum(gaps) / 6
    assert x[F["jitter_s"]] == pytest.approx(math.sqrt(sum((g - mean) ** 2 for g in gaps) / 6))
    assert x[F["reboots"]] == 1 and x[F["rssi_mean"]] == -60
    assert [x[F[k]] for k in ("connects", "disconnects", "auth_failures", "acl_denied",
                              "protocol_errors")] == [1, 2, 2, 1, 1]  # fmt: skip
    assert math.isnan(x[F["new_fields"]]) and x[F["silent_windows"]] == 0
    assert acc.names == {("uptime", "rssi", "pm2.5_atm")}
    assert (acc.uptime_first, acc.uptime_last) == (500, 3)


def test_who_the_device_is() -> None:
    assert observe_message(("sensors/b/readings", b"garbage", T0))[0] == "b"
    assert observe_message(("other/topic", b"[]", T0))[0] == UNKNOWN_DEVICE
    pa = orjson.dumps({"sensor_index": 42, "last_seen": int(T0), "pm2.5_atm": 1.0})
    assert observe_message(("sensors/42/readings", pa, T0))[0] == "42"
    # an id that is not a plain name (a topic wildcard, a slash) is not believed
    sneaky = orjson.dumps({"sensor_id": "x/#", "ts": T0, "values": {"a": 1}})
    assert observe_message(("sensors/c/readings", sneaky, T0))[0] == "c"
    assert observe_event(T0, "bogus_kind", "a") is None
    assert observe_event(T0, "connect", "bad id/+")[0] == UNKNOWN_DEVICE  # type: ignore[index]


def test_oversized_payloads_are_invalid_and_not_decoded() -> None:
    big = b'{"sensor_id": "a", "pad": "' + b"x" * 300_000 + b'"}'
    device, o = observe_message(("sensors/a/readings", big, T0))
    assert device == "a" and o[3] == len(big) and not o[6]


def test_broker_stats_average_over_the_window() -> None:
    acc = fold([observe_stats(T0 + i, {"clients_connected": c, "messages_received_per_s": 10.0 * c})
                for i, c in enumerate((4.0, 6.0))])  # fmt: skip
    v = acc.broker_vector()
    assert (
        v[0] == 5.0
        and v[1] == 50.0
        and math.isnan(v[BROKER_FEATURES.index("publish_dropped_per_s")])
    )
    assert observe_stats(T0, {})[0] == BROKER_DEVICE


def run_windows(items: list[tuple[str, bytes, float]], expire: int = 60) -> list[DeviceWindow]:
    flow = Dataflow("t")
    raw = op.input("in", flow, TestingSource(items, batch_size=7))
    ticker = Ticker(60.0, expire)

    def observe(batch: list[tuple[str, bytes, float]]) -> list[tuple[str, Any]]:
        return ticker([observe_message(m) for m in batch])

    keyed = op.flat_map_batch("observe", raw, observe)
    windows, late = device_windows("w", keyed, timedelta(seconds=60))
    out: list[DeviceWindow] = []
    lost: list[Any] = []
    op.output("out", windows, TestingSink(out))
    op.output("late", late, TestingSink(lost))
    run_main(flow)
    assert lost == []
    return out


def test_bytewax_windows_per_device_and_silent_devices_filled_in() -> None:
    items = []
    for t in range(0, 600, 15):  # a: 10 minutes, every 15 s; b: stops after 2 minutes
        items.append(msg("a", T0 + t + 0.5))
        if t < 120:
            items.append(msg("b", T0 + t + 0.7))
    out = run_windows(items)
    a = sorted((w.window, w.x[F["messages"]]) for w in out if w.device == "a")
    first = int(T0 // 60)
    assert a == [(first + i, 4.0) for i in range(10)]
    b = sorted((w.window, w.silent, w.x[F["messages"]]) for w in out if w.device == "b")
    assert b[:2] == [(first, False, 4.0), (first + 1, False, 4.0)]
    # b is silent from first + 2 until the stream ends (a's last window, first + 9)
    assert b[2:] == [(first + i, True, 0.0) for i in range(2, 10)]
    assert all(w.end == (w.window + 1) * 60 for w in out)


def test_a_long_silent_device_is_forgotten() -> None:
    items = [msg("b", T0 + 1)] + [msg("a", T0 + t) for t in range(0, 900, 20)]
    out = run_windows(items, expire=3)
    b = [w for w in out if w.device == "b"]
    assert [w.silent for w in b] == [False, True, True, True]
    assert sum(w.device == "a" for w in out) == 15 and not any(w.silent for w in out[:1])
