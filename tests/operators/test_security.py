"""Judging device windows: baseline rule, history-dependent features, HST vote, episodes."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.device_features import BROKER_FEATURES, FEATURES, DeviceWindow
from operators.observe import BROKER_DEVICE
from operators.records import Alert
from operators.security import SecurityConfig, Verdict, _Device, _JudgeLogic, judge, vote

F = {name: i for i, name in enumerate(FEATURES)}
NAMES = frozenset({("uptime", "rssi", "pm2.5_atm")})


def normal_x(rng: np.random.Generator) -> np.ndarray:
    x = np.zeros(len(FEATURES))
    x[F["messages"]] = rng.choice([3, 4, 4, 4, 5])
    x[F["size_mean"]] = x[F["size_max"]] = 150 + rng.normal(0, 2)
    x[F["kbytes"]] = x[F["messages"]] * x[F["size_mean"]] / 1000
    x[F["topics"]] = 1
    x[F["jitter_s"]] = abs(rng.normal(1.0, 0.3))
    x[F["rssi_mean"]] = -60 + rng.normal(0, 1)
    x[F["new_fields"]] = math.nan
    return x


def window(device: str, wid: int, x: np.ndarray, uptime: float = math.nan,
           names: frozenset[tuple[str, ...]] = NAMES) -> DeviceWindow:  # fmt: skip
    silent = x[F["messages"]] == 0
    return DeviceWindow(device, wid, (wid + 1) * 60.0, x, frozenset() if silent else names,
                        uptime, uptime, silent)  # fmt: skip


def judge_all(windows: list[DeviceWindow], config: SecurityConfig | None = None) -> list[Verdict]:
    logic = _JudgeLogic(config or SecurityConfig(), None, None)
    return logic.process(windows)


def test_baseline_does_not_learn_from_windows_it_flagged() -> None:
    rng = np.random.default_rng(3)
    ws = [window("a", i, normal_x(rng)) for i in range(30)]
    flood = normal_x(rng)
    flood[F["messages"]] = 80
    ws += [window("a", 30 + i, flood.copy()) for i in range(20)]  # 20 windows of flooding
    logic = _JudgeLogic(SecurityConfig(history=120), None, None)
    verdicts = logic.process(ws)
    assert not any(v.vote for v in verdicts[:30])
    assert all(v.vote and v.reason == "messages" for v in verdicts[30:])
    assert logic.device is not None and logic.device.base.learned == 30
    drivers = verdicts[30].drivers["messages"]
    assert drivers["value"] == 80 and drivers["median"] == 4 and drivers["z"] == 76
    # a learning baseline would have made the flood normal; this one still says 76 sigma
    assert verdicts[-1].score == pytest.approx(76.0)


def test_new_device_is_judged_only_on_features_whose_normal_is_zero() -> None:
    rng = np.random.default_rng(4)
    x = normal_x(rng)
    x[F["messages"]] = 500  # no history: volume is not judged yet
    y = normal_x(rng)
    y[F["auth_failures"]] = 6  # but failed logins are never normal
    a, b = judge_all([window("a", 0, x)]), judge_all([window("b", 0, y)])
    assert not a[0].vote
    assert b[0].vote and b[0].reason == "auth_failures" and b[0].score == pytest.approx(12.0)


def test_reboots_new_fields_and_silence_need_the_device_history() -> None:
    rng = np.random.default_rng(5)
    ws = [window("a", i, normal_x(rng), uptime=1000.0 + 60 * i) for i in range(12)]
    ws.append(window("a", 12, normal_x(rng), uptime=30.0))  # uptime went back: a reboot
    odd = frozenset({("uptime", "rssi", "pm2.5_atm", "cmd", "shell")})
    ws.append(window("a", 13, normal_x(rng), uptime=90.0, names=odd))
    silent = np.zeros(len(FEATURES))
    silent[[F[k] for k in ("size_mean", "size_max", "jitter_s", "rssi_mean")]] = math.nan
    ws += [window("a", 14 + i, silent.copy()) for i in range(3)]
    v = judge_all(ws, SecurityConfig(refresh_every=1))
    assert [x.window.x[F["reboots"]] for x in v[11:14]] == [0, 1, 0]
    assert v[0].window.x[F["new_fields"]] == 3 and v[1].window.x[F["new_fields"]] == 0
    assert v[13].window.x[F["new_fields"]] == 2
    assert [x.window.x[F["silent_windows"]] for x in v[13:]] == [0, 1, 2, 3]
    # the count varies (3-5), so one silent window is within 3 sigma; the second is not
    assert not v[14].vote and v[15].vote and v[15].reason == "silent_windows"


def test_a_window_judged_once_and_state_round_trips() -> None:
    rng = np.random.default_rng(6)
    logic = _JudgeLogic(SecurityConfig(), None, None)
    logic.process([window("a", i, normal_x(rng)) for i in range(15)])
    assert logic.process([window("a", 3, normal_x(rng))]) == []  # already judged
    again = _JudgeLogic(SecurityConfig(), logic.snapshot(), None)
    probe = window("a", 20, normal_x(rng))
    assert again.process([probe])[0].z.tolist() == logic.process([probe])[0].z.tolist()
    assert len(logic.snapshot()) < 4000
    device = pickle.loads(logic.snapshot())
    assert isinstance(device, _Device) and device.base.learned == 16


def run_vote(windows: list[DeviceWindow], config: SecurityConfig) -> list[Alert]:
    flow = Dataflow("t")
    verdicts = judge("judge", op.input("in", flow, TestingSource(windows, 500)), config)
    out: list[Alert] = []
    op.output("out", vote("vote", verdicts, config, "security", 60.0), TestingSink(out))
    run_main(flow)
    return out


def fleet(devices: int, windows: int, tweak: Callable[[str, int, np.ndarray], None]
          ) -> list[DeviceWindow]:  # fmt: skip
    rng = np.random.default_rng(7)
    out = []
    for wid in range(windows):
        for d in range(devices):
            x = normal_x(rng)
            tweak(f"d{d}", wid, x)
            out.append(window(f"d{d}", wid, x))
    return out


def test_one_alert_per_episode_with_both_votes_and_drivers() -> None:
    def flood(device: str, wid: int, x: np.ndarray) -> None:
        if device == "d3" and 40 <= wid < 45:
            x[F["messages"]] = 80

    config = SecurityConfig(hst_window=50)
    alerts = run_vote(fleet(20, 60, flood), config)
    assert [(a.sensor_id, a.ts.timestamp()) for a in alerts] == [("d3", 41 * 60.0)]
    a = alerts[0]
    assert a.kind == "security" and a.flow == "security" and a.detector == "security"
    assert a.votes["zscore"]["vote"] and a.votes["hst"]["vote"]
    assert a.details["reason"] == "messages" and a.details["window_s"] == 60.0
    assert a.details["drivers"]["messages"]["median"] == 4 and a.values["messages"] == 80
    assert a.to_dict()["details"]["drivers"]["messages"]["z"] == 76


def test_k_of_two_needs_the_fleet_hst_to_agree() -> None:
    # a firmware rollout, one device a window: every device's payloads grow for good. Each
    # is unusual for its own baseline (the rule votes for all), but once the fleet HST has
    # seen it on enough devices it is common, and its vote stops the later alerts
    def rollout(device: str, wid: int, x: np.ndarray) -> None:
        if wid >= 20 + int(device[1:]):
            x[F["size_mean"]] += 600
            x[F["size_max"]] += 600

    either = run_vote(fleet(40, 70, rollout), SecurityConfig(hst_window=40, k=1))
    both = run_vote(fleet(40, 70, rollout), SecurityConfig(hst_window=40, k=2))
    assert {a.sensor_id for a in either} == {f"d{d}" for d in range(40)}
    assert {"d0", "d1"} <= {a.sensor_id for a in both} and len(both) < len(either)
    early = sum(int(a.sensor_id[1:]) < 20 for a in both)
    assert early > len(both) - early  # the second half of the rollout alerts less


def test_broker_windows_are_judged_by_the_rule_alone() -> None:
    base = np.array([5.0, 100.0, 20_000.0, 100.0, 0.0])
    ws = [DeviceWindow(BROKER_DEVICE, i, (i + 1) * 60.0, base.copy()) for i in range(15)]
    spike = base.copy()
    spike[BROKER_FEATURES.index("publish_dropped_per_s")] = 50.0
    ws.append(DeviceWindow(BROKER_DEVICE, 15, 16 * 60.0, spike))
    alerts = run_vote(ws, SecurityConfig())
    assert [a.details["reason"] for a in alerts] == ["broker_publish_dropped_per_s"]
    assert set(alerts[0].votes) == {"zscore"}
