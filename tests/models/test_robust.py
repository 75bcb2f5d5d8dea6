"""The robust per-device baseline: median/MAD z, floors, cold start, snapshot."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from models.robust import MAD_SCALE, RobustBaseline


def test_z_is_median_mad_with_the_scale_floored() -> None:
    b = RobustBaseline(2, history=50, min_history=5, abs_floor=(0.5, 0.5), rel_floor=0.01)
    rng = np.random.default_rng(1)
    rows = np.column_stack([rng.normal(100.0, 4.0, 50), np.full(50, 4.0)])
    for r in rows:
        b.learn(r)
    kept = rows[:, 0].astype(np.float32).astype(np.float64)  # the ring is float32
    med = np.median(kept)
    mad = np.median(np.abs(kept - med))
    z = b.score([120.0, 5.0])
    assert z[0] == pytest.approx((120.0 - med) / (MAD_SCALE * mad))
    # the second feature never varied: its scale is max(0.5, 0.01 * 4) = 0.5
    assert z[1] == pytest.approx(2.0)
    assert b.score([100.0, 4.0 - 1.5])[1] == pytest.approx(-3.0)  # signed


def test_an_outlier_in_the_history_barely_moves_the_baseline() -> None:
    b = RobustBaseline(1, history=20, min_history=5)
    for v in [4.0] * 19 + [4000.0]:
        b.learn([v])
    assert b.center.tolist() == [4.0]
    assert b.score([8.0])[0] == pytest.approx(4.0)  # abs floor 1.0: MAD of 4s is 0


def test_cold_baseline_scores_only_features_with_a_prior() -> None:
    b = RobustBaseline(3, history=10, min_history=3, prior=(math.nan, 0.0, math.nan))
    assert not b.warm
    assert b.score([50.0, 3.0, math.nan]).tolist() == [0.0, 3.0, 0.0]
    for _ in range(3):
        b.learn([4.0, 0.0, math.nan])
    assert b.warm and b.learned == 3
    # warm: every feature measured is scored; one never measured keeps its (NaN) prior
    assert b.score([50.0, 3.0, 7.0]).tolist() == [46.0, 3.0, 0.0]


def test_refresh_every_recomputes_only_when_due() -> None:
    b = RobustBaseline(1, history=50, min_history=2, refresh_every=3)
    for v in (4.0, 4.0):
        b.learn([v])
    assert b.center.tolist() == [4.0]  # turned warm: refreshed
    b.learn([100.0])
    b.learn([100.0])
    assert b.center.tolist() == [4.0]  # not due yet
    b.learn([100.0])
    assert b.center.tolist() == [100.0]  # 3 learned since: median of 4, 4, 100, 100, 100
    with pytest.raises(ValueError, match="refresh_every"):
        RobustBaseline(1, refresh_every=0)


def test_ring_forgets_the_oldest_vectors() -> None:
    b = RobustBaseline(1, history=5, min_history=1)
    for v in (100.0,) * 5 + (1.0,) * 5:
        b.learn([v])
    assert b.center.tolist() == [1.0]


def test_pickle_round_trip_is_exact() -> None:
    b = RobustBaseline(2, history=8, min_history=2, abs_floor=(1.0, 2.0), prior=(0.0, math.nan))
    for i in range(11):
        b.learn([i * 0.37, 5.0 - i])
    c = pickle.loads(pickle.dumps(b))
    probe = np.array([3.3, -2.0])
    assert c.score(probe).tolist() == b.score(probe).tolist()
    assert c.learned == b.learned and c.state_bytes() == b.state_bytes()
    assert b.state_bytes() < 500  # ring of 8 x 2 float32, median, scale, parameters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_features": 0}, "n_features"),
        ({"n_features": 2, "history": 3, "min_history": 4}, "min_history"),
        ({"n_features": 2, "abs_floor": (1.0,)}, "abs_floor and prior"),
        ({"n_features": 1, "abs_floor": (0.0,)}, "> 0"),
    ],
)
def test_bad_parameters_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RobustBaseline(**kwargs)  # type: ignore[arg-type]
