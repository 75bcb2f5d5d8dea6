"""HalfSpaceTrees against river.anomaly.HalfSpaceTrees, score for score."""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import anomaly

from models.halfspace import HalfSpaceTrees

PM = "pm1.0_cf_1"
AIR: dict[str, Any] = {
    "n_trees": 10,
    "height": 8,
    "window_size": 72,
    "limits": {PM: (0, 1200)},
    "seed": 11,
}
XYZ = ("x", "y", "z")
WIDE: dict[str, Any] = {"n_trees": 10, "height": 8, "window_size": 250, "seed": 3}


def river_loop(params: Mapping[str, Any], rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """River's scores, score before learn."""
    model = anomaly.HalfSpaceTrees(**params)
    scores = np.empty(len(rows))
    for i, x in enumerate(rows):
        scores[i] = model.score_one(x)
        model.learn_one(x)
    return scores


def dicts(X: np.ndarray, names: Sequence[str]) -> list[dict[str, float]]:
    """Rows as River dicts: NaN becomes an absent key."""
    return [
        {k: v for k, v in zip(names, row.tolist(), strict=True) if not math.isnan(v)} for row in X
    ]


def assert_identical(ours: np.ndarray, river: np.ndarray | list[float]) -> None:
    """Equal bit for bit: masses are integers, so every partial sum is exact."""
    np.testing.assert_array_equal(ours, river)


def in_random_batches(model: HalfSpaceTrees, X: np.ndarray, seed: int, most: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores, start = [], 0
    while start < len(X):
        stop = start + int(rng.integers(1, most + 1))
        scores.append(model.score_learn_many(X[start:stop]))
        start = stop
    return np.concatenate(scores)


def one_by_one(model: HalfSpaceTrees, rows: Sequence[Mapping[str, float | None]]) -> np.ndarray:
    scores = np.empty(len(rows))
    for i, x in enumerate(rows):
        scores[i] = model.score_one(x)
        model.learn_one(x)
    return scores


def air_stream(n: int, seed: int) -> np.ndarray:
    """PM1.0 readings: a daily cycle, noise, bursts and a few spikes past the limits."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    pm = 25 + 15 * np.sin(2 * np.pi * t / 720) + rng.gamma(2.0, 6.0, n)
    bursts = rng.random(n) < 0.002
    pm[bursts] = rng.uniform(300, 1500, bursts.sum())
    return pm.reshape(-1, 1)


def xyz_stream(n: int, seed: int) -> np.ndarray:
    """Three features in [0, 1] with a drifting mean and rare outliers."""
    rng = np.random.default_rng(seed)
    X = rng.beta(2, 5, (n, 3)) * 0.8 + 0.2 * np.linspace(0, 1, n)[:, None]
    outliers = rng.random(n) < 0.005
    X[outliers] = rng.random((outliers.sum(), 3))
    return X


@pytest.fixture(scope="module")
def air() -> tuple[np.ndarray, np.ndarray]:
    X = air_stream(60_000, seed=1)  # 833 windows
    return X, river_loop(AIR, dicts(X, [PM]))


@pytest.fixture(scope="module")
def xyz() -> tuple[np.ndarray, np.ndarray]:
    X = xyz_stream(40_000, seed=2)  # 160 windows
    return X, river_loop(WIDE, dicts(X, XYZ))


def test_air_quality_batches_identical_to_river(air: tuple[np.ndarray, np.ndarray]) -> None:
    X, expected = air
    model = HalfSpaceTrees(**AIR, features=[PM])
    scores = in_random_batches(model, X, seed=3, most=5000)
    assert_identical(scores, expected)
    assert (expected[:72] == 0).all() and (expected[72:] > 0).all()
    assert expected.max() > 0.9  # the spikes do score high


def test_air_quality_one_by_one_identical_to_river(air: tuple[np.ndarray, np.ndarray]) -> None:
    X, expected = air
    model = HalfSpaceTrees(**AIR)
    scores = one_by_one(model, dicts(X[:5000], [PM]))
    assert model.features == (PM,)
    assert_identical(scores, expected[:5000])


def test_three_features_batches_identical_to_river(xyz: tuple[np.ndarray, np.ndarray]) -> None:
    X, expected = xyz
    model = HalfSpaceTrees(**WIDE, features=XYZ)
    scores = in_random_batches(model, X, seed=4, most=5000)
    assert_identical(scores, expected)


def test_three_features_one_by_one_identical_to_river(xyz: tuple[np.ndarray, np.ndarray]) -> None:
    X, expected = xyz
    model = HalfSpaceTrees(**WIDE)
    scores = one_by_one(model, dicts(X[:3000], XYZ))
    assert model.features == XYZ
    assert_identical(scores, expected[:3000])


def test_columns_follow_given_feature_order() -> None:
    X = xyz_stream(2000, seed=5)
    expected = river_loop(WIDE, dicts(X, XYZ))
    model = HalfSpaceTrees(**WIDE, features=("z", "x", "y"))
    assert model.features == ("z", "x", "y")
    assert_identical(model.score_learn_many(X[:, [2, 0, 1]]), expected)


def test_learn_many_and_score_many_match_river() -> None:
    X = xyz_stream(3000, seed=6)
    probes = np.random.default_rng(7).random((50, 3))
    river = anomaly.HalfSpaceTrees(**WIDE)
    model = HalfSpaceTrees(**WIDE, features=XYZ)
    for start in range(0, 3000, 370):  # crosses pivots inside batches
        for x in dicts(X[start : start + 370], XYZ):
            river.learn_one(x)
        model.learn_many(X[start : start + 370])
        expected = [river.score_one(x) for x in dicts(probes, XYZ)]
        assert_identical(model.score_many(probes), expected)


def test_missing_features_match_river_absent_keys() -> None:
    rng = np.random.default_rng(8)
    X = xyz_stream(12_000, seed=9)
    X[1:][rng.random((11_999, 3)) < 0.05 / 3] = np.nan  # ~5% of rows miss a value
    X[rng.random(12_000) < 0.005] = np.nan  # and a few miss all of them
    X[0] = [0.5, 0.5, 0.5]  # River takes its features from the first row
    rows = dicts(X, XYZ)
    expected = river_loop(WIDE, rows)

    batched = HalfSpaceTrees(**WIDE, features=XYZ)
    assert_identical(in_random_batches(batched, X, seed=10, most=700), expected)
    absent = HalfSpaceTrees(**WIDE)
    assert_identical(one_by_one(absent, rows[:3000]), expected[:3000])
    as_none = [
        {k: None if math.isnan(v) else v for k, v in zip(XYZ, r, strict=True)} for r in X[:3000]
    ]
    assert_identical(one_by_one(HalfSpaceTrees(**WIDE), as_none), expected[:3000])

    probes = X[:200]
    assert np.isnan(probes).any()
    singles = [absent.score_one(x) for x in rows[:200]]
    assert np.array_equal(absent.score_many(probes), singles)


def test_missing_single_feature_matches_river() -> None:
    X = air_stream(5000, seed=11)
    X[1:][np.random.default_rng(12).random(4999) < 0.05] = np.nan
    expected = river_loop(AIR, dicts(X, [PM]))
    model = HalfSpaceTrees(**AIR, features=[PM])
    assert_identical(in_random_batches(model, X, seed=13, most=300), expected)


@settings(max_examples=60, deadline=None)
@given(
    n_trees=st.integers(1, 4),
    height=st.integers(1, 5),
    window_size=st.integers(1, 9),
    seed=st.integers(0, 2**32),
    n_features=st.integers(1, 3),
    data=st.data(),
)
def test_small_models_match_river(
    n_trees: int, height: int, window_size: int, seed: int, n_features: int, data: st.DataObject
) -> None:
    names = XYZ[:n_features]
    params: dict[str, Any] = {
        "n_trees": n_trees,
        "height": height,
        "window_size": window_size,
        "seed": seed,
    }
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    X = rng.uniform(-0.5, 1.5, (data.draw(st.integers(1, 80)), n_features))
    X[1:][rng.random(X[1:].shape) < 0.2] = np.nan
    expected = river_loop(params, dicts(X, names))
    model = HalfSpaceTrees(**params, features=names)
    sizes = data.draw(st.integers(1, 12))
    assert_identical(in_random_batches(model, X, seed=sizes, most=sizes), expected)


def test_window_over_255_uses_wider_masses() -> None:
    params: dict[str, Any] = {**AIR, "window_size": 300}
    X = air_stream(2000, seed=14)
    expected = river_loop(params, dicts(X, [PM]))
    model = HalfSpaceTrees(**params, features=[PM])
    assert_identical(in_random_batches(model, X, seed=15, most=400), expected)


def test_pickle_mid_window_restores_exactly() -> None:
    X = air_stream(3000, seed=16)
    whole = HalfSpaceTrees(**AIR, features=[PM])
    expected = whole.score_learn_many(X)
    first = HalfSpaceTrees(**AIR, features=[PM])
    first.score_learn_many(X[:1000])  # 13 windows and 64 rows into the 14th
    snapshot = pickle.dumps(first, protocol=pickle.HIGHEST_PROTOCOL)
    for restored in (pickle.loads(snapshot), pickle.loads(snapshot), first):
        assert restored.score_learn_many(X[1000:]).tolist() == expected[1000:].tolist()


def test_pickled_air_quality_model_is_small() -> None:
    model = HalfSpaceTrees(**AIR, features=[PM])
    assert model.state_bytes() < 256  # no masses before the first row
    model.learn_many(air_stream(108, seed=17))  # one window and half the next
    assert model.state_bytes() == len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    assert model.state_bytes() < 1024  # measured: 0.6 to 0.85 KiB; 10 KiB uncompressed
    model.learn_many(air_stream(10_000, seed=18))
    assert model.state_bytes() < 1024


def test_unseeded_model_restores_its_drawn_seed() -> None:
    X = xyz_stream(600, seed=19)
    model = HalfSpaceTrees(window_size=50, features=XYZ)
    model.learn_many(X[:300])
    restored = pickle.loads(pickle.dumps(model))
    assert np.array_equal(restored.score_learn_many(X[300:]), model.score_learn_many(X[300:]))
    assert restored.seed is None


def test_fresh_model_round_trips_and_scores_zero() -> None:
    model = pickle.loads(pickle.dumps(HalfSpaceTrees(**AIR)))
    assert model.features is None
    assert model.score_one({PM: 5.0}) == 0.0
    assert model.n_trees == 10 and model.limits == {PM: (0, 1200)}


def test_first_window_scores_zero() -> None:
    model = HalfSpaceTrees(**AIR, features=[PM])
    assert model.score_many(np.array([[1.0], [2.0]])).tolist() == [0.0, 0.0]
    scores = model.score_learn_many(air_stream(73, seed=20))
    assert (scores[:72] == 0).all() and scores[72] > 0


def test_score_many_does_not_change_state() -> None:
    model = HalfSpaceTrees(**WIDE, features=XYZ)
    model.learn_many(xyz_stream(400, seed=21))
    before = pickle.dumps(model)
    probes = xyz_stream(100, seed=22)
    probes[::7, 1] = np.nan
    first = model.score_many(probes)
    assert pickle.dumps(model) == before
    assert np.array_equal(model.score_many(probes), first)
    singles = [model.score_one(dict(zip(XYZ, p, strict=True))) for p in probes[:8].tolist()]
    assert singles == first[:8].tolist()


def test_models_share_read_only_trees() -> None:  # what lets thousands of sensors fit
    a = HalfSpaceTrees(**AIR, features=[PM])
    b = HalfSpaceTrees(**AIR, features=[PM])
    a.learn_one({PM: 1.0})
    b.learn_one({PM: 2.0})
    assert a._forest is b._forest and a._forest is not None
    assert not a._forest.threshold.flags.writeable


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_trees": 0}, "n_trees must be at least 1"),
        ({"height": 0}, "height must be at least 1"),
        ({"window_size": 0}, "window_size must be at least 1"),
        ({"limits": {"a": (1.0, 1.0)}}, r"limits\['a'\] must have low < high"),
        ({"limits": {"a": (2.0, 1.0)}}, "low < high"),
        ({"features": []}, "features must be non-empty and unique"),
        ({"features": ["a", "a"]}, "features must be non-empty and unique"),
        ({"n_trees": 0, "window_size": -1}, "n_trees must .*; window_size must"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HalfSpaceTrees(**kwargs)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="features known"):
        HalfSpaceTrees().score_learn_many(np.zeros((3, 1)))
    model = HalfSpaceTrees(features=XYZ)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        model.learn_many(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty mapping"):
        HalfSpaceTrees().learn_one({})


def with_gaps(X: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A copy of X with a share of its rows missing (never the first: River's features)."""
    X = X.copy()
    X[1:][np.random.default_rng(seed).random(len(X) - 1) < share] = np.nan
    return X


def test_streaming_small_batches_with_gaps_match_river() -> None:
    X = with_gaps(air_stream(50_000, seed=23), 0.02, seed=24)  # what a sensor's stream is
    expected = river_loop(AIR, dicts(X, [PM]))
    model = HalfSpaceTrees(**AIR, features=[PM])
    assert_identical(in_random_batches(model, X, seed=25, most=20), expected)


def test_snapshots_between_small_batches_match_river() -> None:
    X = with_gaps(air_stream(8000, seed=26), 0.02, seed=27)
    expected = river_loop(AIR, dicts(X, [PM]))
    rng = np.random.default_rng(28)
    model = HalfSpaceTrees(**AIR, features=[PM])
    scores, start = [], 0
    while start < len(X):
        stop = start + int(rng.integers(1, 21))
        scores.append(model.score_learn_many(X[start:stop]))
        snapshot = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        if rng.random() < 0.5:  # resume from the snapshot, or go on with the pickled model
            model = pickle.loads(snapshot)
        start = stop
    assert_identical(np.concatenate(scores), expected)


def test_values_on_and_next_to_thresholds_match_river() -> None:
    probe = HalfSpaceTrees(**AIR, features=[PM])
    probe.learn_one({PM: 1.0})
    assert probe._forest is not None
    cuts = np.unique(probe._forest.threshold[np.isfinite(probe._forest.threshold)])
    near = cuts[np.searchsorted(cuts, 20.0) :][:6]  # a few, so that deep nodes get heavy
    values = np.concatenate([near, np.nextafter(near, -np.inf), [-np.inf, np.inf, 0.0]])
    X = np.random.default_rng(29).choice(values, (3000, 1))
    X[0] = 1.0
    expected = river_loop(AIR, dicts(X, [PM]))
    model = HalfSpaceTrees(**AIR, features=[PM])
    assert_identical(in_random_batches(model, X, seed=30, most=40), expected)
    assert len(np.unique(expected[72:])) > 10


def test_one_feature_score_many_reads_without_changing_state() -> None:
    X = with_gaps(air_stream(500, seed=31), 0.05, seed=32)
    rows = dicts(X, [PM])
    river = anomaly.HalfSpaceTrees(**AIR)
    for x in rows[:300]:
        river.learn_one(x)
    model = HalfSpaceTrees(**AIR, features=[PM])
    model.learn_many(X[:300])
    before = pickle.dumps(model)
    probes = X[300:]
    assert np.isnan(probes).any()
    assert_identical(model.score_many(probes), [river.score_one(x) for x in rows[300:]])
    assert pickle.dumps(model) == before


@pytest.mark.parametrize("names", [(PM,), XYZ])
def test_empty_batches_change_nothing(names: tuple[str, ...]) -> None:
    model = HalfSpaceTrees(n_trees=3, height=4, window_size=5, seed=1, features=names)
    model.learn_many(np.full((7, len(names)), 0.5))
    before = pickle.dumps(model)
    assert model.score_learn_many(np.zeros((0, len(names)))).shape == (0,)
    assert model.score_many(np.zeros((0, len(names)))).shape == (0,)
    assert pickle.dumps(model) == before
