from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from river import anomaly

from models.halfspace import HalfSpaceTrees
from operators.records import Reading, Scored
from operators.score import features_matrix, score

T0 = datetime(2024, 4, 1, tzinfo=timezone.utc)
LIMITS = {"pm": (0.0, 1200.0)}


def new_model() -> HalfSpaceTrees:
    return HalfSpaceTrees(
        n_trees=10, height=8, window_size=72, limits=LIMITS, seed=11, features=("pm",)
    )


def fleet_stream(n: int, sensors: int, seed: int = 1) -> list[Reading]:
    rng = random.Random(seed)
    base = {f"s{i}": rng.uniform(2, 40) for i in range(sensors)}
    out = []
    for i in range(n):
        sid = f"s{i % sensors}"
        v = base[sid] * rng.uniform(0.7, 1.3)
        if rng.random() < 0.01:
            v *= 25
        out.append(Reading(sid, T0 + timedelta(seconds=120 * (i // sensors)), {"pm": v}, "t"))
    return out


def river_scores(readings: list[Reading], per_sensor: bool) -> list[float]:
    models: dict[str, anomaly.HalfSpaceTrees] = {}
    out = []
    for r in readings:
        key = r.sensor_id if per_sensor else "fleet"
        m = models.setdefault(
            key,
            anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=72, limits=LIMITS, seed=11),
        )
        x = {"pm": r.values["pm"]}
        out.append(m.score_one(x))
        m.learn_one(x)
    return out


def flow_scores(
    items: list, per_sensor: bool, recovery: RecoveryConfig | None = None, batch_size: int = 97
) -> list[Scored]:
    got: list[tuple[str, Scored]] = []
    flow = Dataflow("score_test")
    src = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    keyed = op.key_on("key", src, (lambda r: r.sensor_id) if per_sensor else (lambda r: "fleet"))
    op.output("out", score("score", keyed, "hst", ["pm"], new_model), TestingSink(got))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert all(len(s) == len(s.scores) and s.detector == "hst" for _, s in got)
    return [(r, score) for _, s in got for r, score, _ in s.rows()]


@pytest.mark.parametrize("per_sensor", [True, False])
def test_dataflow_scores_equal_river_per_key(per_sensor: bool) -> None:
    readings = fleet_stream(6000, sensors=7)
    got = flow_scores(readings, per_sensor)
    expected = dict(
        zip(
            [(r.sensor_id, r.ts) for r in readings], river_scores(readings, per_sensor), strict=True
        )
    )
    assert len(got) == len(readings)
    assert max(abs(s - expected[(r.sensor_id, r.ts)]) for r, s in got) == 0.0
    assert sum(s > 0.7 for _, s in got) > 0  # the injected spikes do score high


def test_crash_and_resume_from_recovery_gives_identical_scores(tmp_path: Path) -> None:
    readings = fleet_stream(3000, sensors=5, seed=4)
    whole = flow_scores(readings, per_sensor=True)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    cut = 1700
    items = [*readings[:cut], TestingSource.ABORT(), *readings[cut:]]  # one ABORT, fires once
    first = flow_scores(items, True, recovery, batch_size=50)
    second = flow_scores(items, True, recovery, batch_size=50)
    assert len(first) < len(readings) and second
    resumed = {(r.sensor_id, r.ts): s for r, s in first + second}
    assert len(resumed) == len(readings)  # nothing lost; replays carry the same scores
    assert resumed == {(r.sensor_id, r.ts): s for r, s in whole}


def test_features_matrix_marks_missing_as_nan() -> None:
    r = [Reading("s", T0, {"a": 1.0, "b": None}, "t"), Reading("s", T0, {"b": 2.0}, "t")]
    m = features_matrix(r, ["a", "b"])
    assert m.shape == (2, 2) and np.isnan(m[0, 1]) and np.isnan(m[1, 0]) and m[1, 1] == 2.0


def test_idle_sensor_is_evicted_and_restarts_fresh() -> None:
    readings = fleet_stream(300, sensors=1, seed=9)
    items = [*readings[:150], TestingSource.PAUSE(timedelta(seconds=0.5)), *readings[150:]]
    got: list[tuple[str, Scored]] = []
    flow = Dataflow("evict_test")
    keyed = op.key_on(
        "key", op.input("in", flow, TestingSource(items, batch_size=10)), lambda r: r.sensor_id
    )
    scored = score("score", keyed, "hst", ["pm"], new_model, idle_timeout=timedelta(seconds=0.1))
    op.output("out", scored, TestingSink(got))
    run_main(flow)
    scores = [v for _, s in got for _, v, _ in s.rows()]
    assert len(scores) == 300
    assert all(v == 0.0 for v in scores[:72]) and any(v > 0 for v in scores[72:150])
    # after the pause the model was dropped: a fresh first window scores 0 again
    assert all(v == 0.0 for v in scores[150:222]) and any(v > 0 for v in scores[222:])
    kept = flow_scores(readings, per_sensor=True)  # without idling, no restart
    assert any(v > 0 for _, v in kept[150:222])
