"""The simulated SKAB-shaped pumps: deterministic, labelled, with the fitted statistics."""

from __future__ import annotations

import numpy as np
import pytest

from dataflows.pump import SKAB_FIELDS
from sources.pump_sim import CORR, FIELDS, MEAN, PHI, SD, PumpSim, PumpSimConfig


def test_the_same_config_gives_the_same_readings_and_another_seed_others() -> None:
    cfg = PumpSimConfig(pumps=3, readings=300, anomaly_rate=0.1)
    a, b = PumpSim(cfg), PumpSim(cfg)
    for pump in range(3):
        (xa, ka), (xb, kb) = a.matrix(pump), b.matrix(pump)
        assert np.array_equal(xa, xb) and np.array_equal(ka, kb)
    other = PumpSim(PumpSimConfig(pumps=3, readings=300, anomaly_rate=0.1, seed=8)).matrix(0)
    assert not np.allclose(other[0], a.matrix(0)[0])
    assert list(a.payloads()) == list(b.payloads())
    assert FIELDS == SKAB_FIELDS


def test_labels_lie_inside_their_episodes_after_the_warm_up() -> None:
    cfg = PumpSimConfig(pumps=4, readings=400, anomaly_rate=0.1, warmup=50)
    sim = PumpSim(cfg)
    labels = sim.labels()
    assert 0.09 * 1600 <= len(labels) <= 0.11 * 1600
    assert {kind for kind in labels.values()} == {"spike", "drift", "stuck", "cavitation"}
    for pump in range(4):
        x, kinds = sim.matrix(pump)
        stamps = {t - cfg.start_epoch: k for (p, t), k in labels.items() if p == f"pump-{pump}"}
        assert {i: str(k) for i, k in enumerate(kinds) if k} == stamps
        assert not kinds[: cfg.warmup].any()
        for i, kind in stamps.items():  # a stuck channel repeats the reading before it
            if kind == "stuck" and stamps.get(i - 1) != "stuck":
                assert (x[i] == x[i - 1]).any()


def test_normal_readings_follow_the_fitted_process() -> None:
    sim = PumpSim(PumpSimConfig(pumps=100, readings=1000, anomaly_rate=0.0))
    xs = [sim.matrix(pump)[0] for pump in range(100)]
    sd, z = np.array(SD), np.concatenate([x - x.mean(axis=0) for x in xs])
    fast = [0, 1, 2, 3, 4, 6, 7]  # the thermocouple (lag-1 0.995) barely moves in 1,000 rows
    assert z.std(axis=0)[fast] / sd[fast] == pytest.approx(np.ones(7), abs=0.1)
    levels = (np.array([x.mean(axis=0) for x in xs]) - MEAN) / sd  # 1-3 sd either way
    assert np.abs(levels).max() < 5.0 and np.abs(levels).mean() > 1.0
    corr = np.corrcoef(z[:, fast], rowvar=False)
    assert corr == pytest.approx(np.array(CORR)[np.ix_(fast, fast)], abs=0.06)
    lag = [np.mean([np.corrcoef(x[1:, c], x[:-1, c])[0, 1] for x in xs]) for c in fast]
    assert lag == pytest.approx(np.array(PHI)[fast], abs=0.03)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="kinds"):
        PumpSimConfig(kinds=("leak",))
