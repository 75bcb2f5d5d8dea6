"""Pump fleet learning: exact pooled moments, score sketches, priors for joining pumps."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from models.ensemble import EnsembleConfig, PumpEnsemble
from models.fleet import drift, merge
from models.pump_fleet import FleetPump, PumpNode, PumpPrior, pump_template
from models.summaries import Summary, SummaryError, decode, encode
from sources.pump_sim import FIELDS, PumpSim, PumpSimConfig

CONFIG = EnsembleConfig(channels=("a", "b", "c"), train_rows=400, epochs=20)
MIX = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 0.5]])


def stream(n: int, level: float, seed: int) -> np.ndarray:
    """A pump's rows: correlated noise of one shape, at its own level."""
    rows: np.ndarray = np.random.default_rng(seed).normal(size=(n, 3)) @ MIX + level
    return rows


def node(name: str = "n", settle: int = 400) -> PumpNode:
    return PumpNode(pump_template(CONFIG, flow="pump", node=name, group="g"), settle)


def run(pump: PumpEnsemble, x: np.ndarray, batch: int = 7) -> Any:
    return [pump.process(x[i : i + batch]) for i in range(0, len(x), batch)]


def feed(acc: PumpNode, x: np.ndarray) -> FleetPump:
    pump = FleetPump(CONFIG)
    pump.node = acc
    run(pump, x)
    return pump


def centred(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x - x.mean(axis=0)
    return out


def test_node_summaries_pool_within_pump_moments_exactly_in_any_order() -> None:
    streams = [stream(300, 10.0 * i, i) for i in range(6)]  # all in the prefix: all learned
    accs = [node(f"n{i}", settle=10**6) for i in range(4)]  # no model: nothing trimmed
    for i, x in enumerate(streams):
        feed(accs[i % 4], x)
    parts = [s for a in accs if (s := a.summary()) is not None]
    union = np.concatenate(streams)
    within = sum((centred(x).T @ centred(x) for x in streams), np.zeros((3, 3)))
    lag = sum((centred(x[1:]).T @ centred(x[:-1]) for x in streams), np.zeros((3, 3)))
    a, b, c, d = parts
    for merged in (merge(parts), merge(parts[::-1]), merge([merge([a, b]), merge([c, d])]),
                   merge([d, merge([c, merge([b, a])])])):  # fmt: skip
        back = decode(encode(merged))
        assert back.count == len(union) and back.meta["pumps"] == 6
        np.testing.assert_allclose(back.arrays["mean"], union.mean(0), rtol=1e-9)
        m2 = (union - union.mean(0)).T @ (union - union.mean(0))
        upper = np.triu_indices(3)
        np.testing.assert_allclose(back.arrays["m2"], m2[upper], rtol=1e-9)
        np.testing.assert_allclose(back.arrays["within"], within[upper], rtol=1e-9)
        np.testing.assert_allclose(back.arrays["lag"], lag.ravel(), rtol=1e-9, atol=1e-9)
        assert back.meta["pairs"] == 6 * 299
    assert drift(parts[0], parts[0]) == pytest.approx(0.0, abs=1e-9)
    assert drift(parts[0], merge(parts)) > 0


def warm_fleet(settle: int = 400) -> Summary:
    """Two nodes of three pumps at different levels, past their prefixes (scores sketched)."""
    accs = [node("n1", settle), node("n2", settle)]
    for i in range(6):
        feed(accs[i % 2], stream(600, 20.0 * i, 10 + i))
    return merge([s for a in accs if (s := a.summary()) is not None])


def test_a_joining_pump_is_judged_by_the_prior_before_its_prefix() -> None:
    fleet = decode(encode(warm_fleet()))
    assert len(encode(fleet)) <= 65_536
    prior = PumpPrior.of(fleet, q=0.99)
    assert prior is not None and 0 < prior.threshold < 10
    x = stream(120, 555.0, 99)  # a level no fleet pump has: its own mean is what counts
    x[80:, 0] += 6.0  # a fault: a shift of one channel
    seeded, cold = FleetPump(CONFIG, prior), PumpEnsemble(CONFIG)
    out, plain = run(seeded, x), run(cold, x)
    alerts = np.concatenate([o.alerts for o in out])
    training = np.concatenate([o.training for o in out])
    assert not np.concatenate([o.alerts for o in plain]).any()  # waiting for 400 rows
    assert training[: CONFIG.window].all() and not training[2 * CONFIG.window :].any()
    assert alerts[90:].mean() > 0.9 and alerts[:80].mean() < 0.05
    votes = np.concatenate([o.votes for o in out])
    assert (votes[alerts] == CONFIG.k).all()


def test_prior_needs_scores_and_node_refuses_bad_fleets() -> None:
    young = node("n")
    feed(young, stream(300, 0.0, 1))  # under settle rows: no scores sketched yet
    summary = young.summary()
    assert summary is not None and PumpPrior.of(summary, 0.99) is None
    other = PumpNode(pump_template(EnsembleConfig(channels=("a", "b"), train_rows=400),
                                   flow="pump", node="n", group="g"))  # fmt: skip
    with pytest.raises(SummaryError, match="mismatch"):
        other.offer(encode(summary), 0.99)
    with pytest.raises(SummaryError, match="wrong_group"):
        PumpNode(pump_template(CONFIG, flow="pump", node="n", group="h")).offer(
            encode(summary), 0.99)  # fmt: skip
    fleet = warm_fleet()
    young.offer(encode(fleet), 0.99)
    assert young.prior is not None and young.model() is young.prior.model
    assert young.offer(b"", 0.99) is None and young.prior is None


def test_fleet_pump_pickles_and_goes_on_exactly() -> None:
    acc = node("n", settle=50)
    prior = PumpPrior.of(warm_fleet(settle=50), q=0.99)
    pump = FleetPump(CONFIG, prior)
    pump.node = acc
    x = stream(200, 3.0, 5)
    run(pump, x[:100])
    copy = pickle.loads(pickle.dumps(pump))
    assert type(copy) is FleetPump and copy.node is None
    assert copy.prior is not None and pump.prior is not None
    assert copy.prior.threshold == pump.prior.threshold
    assert copy.prior.model is pump.prior.model  # rebuilt from C0 and C1, shared
    copy.node = node("other", settle=50)
    a, b = run(pump, x[100:]), run(copy, x[100:])
    for one, two in zip(a, b, strict=True):
        np.testing.assert_array_equal(one.alerts, two.alerts)
        np.testing.assert_array_equal(one.scores, two.scores)


def sim_fleet(seed: int) -> tuple[EnsembleConfig, PumpPrior, PumpSim]:
    """12 warm simulated pumps on 3 nodes (``sources.pump_sim``), their merged prior."""
    config = EnsembleConfig(channels=tuple(FIELDS[i] for i in (0, 1, 2, 3, 6, 7)), epochs=20)
    sim = PumpSim(PumpSimConfig(pumps=12, readings=1000, seed=seed, kinds=()))
    accs = [PumpNode(pump_template(config, flow="pump", node=f"n{i}", group="g"))
            for i in range(3)]  # fmt: skip
    cols = [FIELDS.index(c) for c in config.channels]
    for i in range(12):
        pump = FleetPump(config)
        pump.node = accs[i % 3]
        run(pump, sim.matrix(i)[0][:, cols], batch=50)
    prior = PumpPrior.of(merge([s for a in accs if (s := a.summary()) is not None]), q=0.99)
    assert prior is not None
    return config, prior, sim


def test_joining_simulated_pumps_are_calibrated_and_catch_each_kind() -> None:
    config, prior, _ = sim_fleet(3)
    cols = [FIELDS.index(c) for c in config.channels]
    clean = PumpSim(PumpSimConfig(pumps=20, readings=100, seed=4, kinds=(), first=100))
    false = sum(int(np.concatenate([o.alerts for o in run(FleetPump(config, prior),
                                                          clean.matrix(i)[0][:, cols])]).sum())
                for i in range(20))  # fmt: skip
    assert false / (20 * 100) < 0.03  # q = 0.99, whatever each pump's level and noise scale
    faulty = PumpSim(
        PumpSimConfig(
            pumps=20,
            readings=100,
            seed=5,
            first=200,
            warmup=20,
            anomaly_rate=0.12,
            kinds=("spike", "drift", "cavitation"),
        )
    )
    caught: dict[str, list[int]] = {}
    for i in range(20):
        x, kinds = faulty.matrix(i)
        alerts = np.concatenate([o.alerts for o in run(FleetPump(config, prior), x[:, cols])])
        for kind in set(kinds) - {""}:
            tally = caught.setdefault(str(kind), [0, 0])
            tally[0] += int(alerts[kinds == kind].sum())
            tally[1] += int((kinds == kind).sum())
    rates = {kind: hit / total for kind, (hit, total) in caught.items()}
    assert rates["spike"] > 0.9 and rates["cavitation"] > 0.5 and rates["drift"] > 0.3, rates


def test_pumps_noisier_than_the_fleet_are_not_stuck_flagging() -> None:
    config, prior, sim = sim_fleet(3)
    cols = [FIELDS.index(c) for c in config.channels]
    rates = []
    for i in range(6):
        x = sim.matrix(i)[0][:, cols][:300]
        loud = x.mean(axis=0) + 1.4 * (x - x.mean(axis=0))  # twice the fleet's variance
        rates.append(np.concatenate([o.alerts for o in run(FleetPump(config, prior), loud)]))
    # their own noise scale (under the fleet's: 0.27 of rows, one pump 0.59)
    assert np.mean(rates) < 0.05 and max(r.mean() for r in rates) < 0.15
