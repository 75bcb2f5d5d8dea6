from __future__ import annotations

import numpy as np
import pytest

from sources.smart_meter_sim import ANOMALY_KINDS, SmartMeterConfig, SmartMeterSimulator

CFG = SmartMeterConfig(households=3, duration_s=3 * 86_400)


def test_households_are_deterministic_distinct_and_labelled() -> None:
    sim = SmartMeterSimulator(CFG)
    p0, l0 = sim.household(0)
    p0b, l0b = SmartMeterSimulator(CFG).household(0)
    np.testing.assert_array_equal(p0, p0b)
    np.testing.assert_array_equal(l0, l0b)
    assert not np.array_equal(p0, sim.household(1)[0])
    assert len(p0) == 3 * 2880 and (p0 >= 0).all()
    assert not l0[:2880].any()  # the first day stays clean
    kinds = {int(k) for h in range(3) for k in np.unique(sim.household(h)[1])}
    assert kinds == {0, *range(1, len(ANOMALY_KINDS) + 1)}


def test_anomalies_change_the_load_as_described() -> None:
    power, labels = SmartMeterSimulator(CFG).household(0)
    normal = power[labels == 0]
    spike = ANOMALY_KINDS.index("spike") + 1
    if (labels == spike).any():
        assert power[labels == spike].min() > np.percentile(normal, 99)
    stuck = labels == ANOMALY_KINDS.index("stuck_appliance") + 1
    if stuck.any():
        assert power[stuck].mean() > normal.mean() + 1.0


def test_payloads_interleave_households_every_30_s() -> None:
    rows = list(SmartMeterSimulator(SmartMeterConfig(households=2, duration_s=90)).payloads())
    assert [(r["sensor_id"], r["ts"] - rows[0]["ts"]) for r in rows] == [
        ("meter-0", 0), ("meter-1", 0), ("meter-0", 30), ("meter-1", 30),
        ("meter-0", 60), ("meter-1", 60),
    ]  # fmt: skip


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="anomaly_rate"):
        SmartMeterConfig(anomaly_rate=0.9)
