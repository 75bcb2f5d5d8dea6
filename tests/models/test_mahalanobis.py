"""OnlineMahalanobis against a numpy reference, and its exact batch and merge updates."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

from models.mahalanobis import OnlineMahalanobis


def correlated(n: int, d: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mixing + rng.normal(scale=10.0, size=d)


def reference(train: np.ndarray, X: np.ndarray, shrinkage: float, ridge: float) -> np.ndarray:
    """Distances from np.cov and np.linalg.inv, as the module docstring defines them."""
    d = train.shape[1]
    sample = np.cov(train, rowvar=False)
    cov = (1 - shrinkage) * sample + (shrinkage * np.trace(sample) / d + ridge) * np.eye(d)
    centred = X - train.mean(axis=0)
    squared: np.ndarray = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(cov), centred)
    distances: np.ndarray = np.sqrt(squared)
    return distances


def assert_same_model(a: OnlineMahalanobis, b: OnlineMahalanobis, tol: float = 1e-9) -> None:
    assert a.count == b.count
    np.testing.assert_allclose(a.mean, b.mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.covariance(), b.covariance(), rtol=tol, atol=tol)


@pytest.mark.parametrize("shrinkage", [0.0, 0.1, 0.5, 1.0])
def test_scores_match_numpy_reference(shrinkage: float) -> None:
    train, probe = correlated(500), correlated(50, seed=1) * 1.5
    model = OnlineMahalanobis(shrinkage=shrinkage)
    model.learn_many(train)
    np.testing.assert_allclose(model.covariance(), np.cov(train, rowvar=False) * (
        1 - shrinkage) + shrinkage * np.trace(np.cov(train, rowvar=False)) / 4 * np.eye(4)
        + 1e-9 * np.eye(4), rtol=1e-10)  # fmt: skip
    expected = reference(train, probe, shrinkage, 1e-9)
    np.testing.assert_allclose(model.score_many(probe), expected, rtol=1e-9)
    assert model.score_one(probe[3]) == pytest.approx(expected[3], rel=1e-9)


def test_gaussian_scores_are_distances_near_sqrt_d() -> None:
    rng = np.random.default_rng(5)
    model = OnlineMahalanobis(shrinkage=0.0)
    model.learn_many(rng.normal(size=(20_000, 9)) * 3.0 + 1.0)
    scores = model.score_many(rng.normal(size=(5_000, 9)) * 3.0 + 1.0)
    assert np.mean(scores**2) == pytest.approx(9.0, rel=0.05)  # chi-squared, 9 dof
    assert model.score_one(np.full(9, 1.0)) == pytest.approx(0.0, abs=0.05)  # the mean


def test_batch_learn_equals_row_by_row_and_any_batching() -> None:
    X = correlated(300)
    whole, rows, chunks = OnlineMahalanobis(), OnlineMahalanobis(), OnlineMahalanobis()
    whole.learn_many(X)
    for x in X:
        rows.learn_one(x)
    for start, stop in itertools.pairwise([0, 1, 7, 50, 51, 200, 300]):
        chunks.learn_many(X[start:stop])
    assert_same_model(whole, rows)
    assert_same_model(whole, chunks)
    np.testing.assert_allclose(whole.score_many(X), rows.score_many(X), rtol=1e-9)


def test_merge_equals_union_in_any_order() -> None:
    X = correlated(900, d=5)
    parts = []
    for start, stop in [(0, 100), (100, 450), (450, 451), (451, 900)]:
        part = OnlineMahalanobis()
        part.learn_many(X[start:stop])
        parts.append(part)
    union = OnlineMahalanobis()
    union.learn_many(X)
    for order in itertools.permutations(parts):
        assert_same_model(OnlineMahalanobis.merged(*order), union)
    left = OnlineMahalanobis.merged(OnlineMahalanobis.merged(parts[0], parts[1]), parts[2])
    right = OnlineMahalanobis.merged(parts[0], OnlineMahalanobis.merged(parts[1], parts[2]))
    assert_same_model(left, right, tol=1e-12)
    a_b, b_a = OnlineMahalanobis.merged(*parts[:2]), OnlineMahalanobis.merged(*parts[1::-1])
    assert pickle.dumps(a_b) == pickle.dumps(b_a)  # the merge formula is symmetric


def test_merge_with_empty_models_and_mismatch() -> None:
    X = correlated(40)
    model, empty = OnlineMahalanobis(), OnlineMahalanobis()
    model.learn_many(X)
    before = pickle.dumps(model)
    assert pickle.dumps(model.merge(empty)) == before
    assert_same_model(empty.merge(model), model, tol=0.0)
    other = OnlineMahalanobis()
    other.learn_many(correlated(40, d=3))
    with pytest.raises(ValueError, match="3 features"):
        model.merge(other)


def test_shrinkage_pulls_correlations_toward_identity() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=2_000)
    X = np.column_stack([z, z + 0.05 * rng.normal(size=2_000)])  # almost collinear
    off_axis = X.mean(axis=0, keepdims=True) + [1.0, -1.0]  # across the correlation
    scores = {}
    for shrinkage in (0.0, 0.1, 0.5, 1.0):
        model = OnlineMahalanobis(shrinkage=shrinkage)
        model.learn_many(X)
        scores[shrinkage] = float(model.score_many(off_axis)[0])
    assert scores[0.0] > 25 > scores[0.1] > scores[0.5] > scores[1.0]
    assert scores[1.0] == pytest.approx(np.sqrt(2 / np.var(X, axis=0, ddof=1).mean()), rel=1e-6)


def test_constant_feature_stays_invertible() -> None:
    X = np.column_stack([np.arange(50.0), np.full(50, 3.0)])
    model = OnlineMahalanobis(shrinkage=0.0, ridge=1e-6)
    model.learn_many(X)
    scores = model.score_many(np.array([[25.0, 3.0], [25.0, 3.001]]))
    assert np.isfinite(scores).all()
    assert scores[1] == pytest.approx(np.hypot(0.5 / X[:, 0].std(ddof=1), 1.0), rel=1e-3)


def test_min_samples_default_and_explicit() -> None:
    X = correlated(30)  # d = 4: default min_samples is max(2 * 4 + 1, 10) = 10
    model = OnlineMahalanobis()
    assert not model.ready
    assert model.score_many(X[:3]).tolist() == [0.0, 0.0, 0.0]
    model.learn_many(X[:9])
    assert not model.ready
    assert model.score_one(X[20] * 100) == 0.0
    model.learn_one(X[9])
    assert model.ready
    assert model.score_one(X[20] * 100) > 10
    explicit = OnlineMahalanobis(min_samples=25)
    explicit.learn_many(X[:24])
    assert explicit.score_one(X[29]) == 0.0
    explicit.learn_one(X[24])
    assert explicit.score_one(X[29]) > 0.0


def test_mask_and_non_finite_rows_are_not_learned() -> None:
    X = correlated(60)
    X[5, 2] = np.nan
    X[7, 0] = np.inf
    mask = np.ones(60, dtype=bool)
    mask[10:20] = False
    model, clean = OnlineMahalanobis(), OnlineMahalanobis()
    model.learn_many(X, mask=mask)
    keep = mask & np.isfinite(X).all(axis=1)
    clean.learn_many(X[keep])
    assert model.count == 48
    assert_same_model(model, clean, tol=0.0)
    scores = model.score_many(X[4:8])
    assert np.isnan(scores[1]) and np.isfinite(scores[[0, 2]]).all()


def test_pickle_and_state_round_trip_exactly() -> None:
    X = correlated(200, d=8)
    model = OnlineMahalanobis(shrinkage=0.2, min_samples=30)
    model.learn_many(X[:150])
    probe = X[150:]
    expected = model.score_many(probe)
    for restored in (
        pickle.loads(pickle.dumps(model)),
        OnlineMahalanobis.from_state(pickle.loads(pickle.dumps(model.state()))),
    ):
        assert restored.shrinkage == 0.2 and restored.min_samples == 30
        np.testing.assert_array_equal(restored.score_many(probe), expected)
        restored.learn_many(X[150:])
        model_copy = pickle.loads(pickle.dumps(model))
        model_copy.learn_many(X[150:])
        assert pickle.dumps(restored) == pickle.dumps(model_copy)
    assert 500 < model.state_bytes() < 800  # 8 features: 8 + 36 float64
    assert model.state()["m2"].shape == (36,)
    fresh = pickle.loads(pickle.dumps(OnlineMahalanobis()))
    fresh.learn_many(X)
    assert fresh.count == 200


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shrinkage": 1.5}, "shrinkage"),
        ({"shrinkage": -0.1}, "shrinkage"),
        ({"ridge": 0.0}, "ridge"),
        ({"min_samples": 1}, "min_samples"),
        ({"n_features": 0}, "n_features"),
    ],
)
def test_constructor_validates(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OnlineMahalanobis(**kwargs)  # type: ignore[arg-type]


def test_wrong_shapes_are_rejected() -> None:
    model = OnlineMahalanobis(n_features=3)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        model.learn_many(np.zeros((4, 2)))
    model.learn_many(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        model.score_many(np.zeros((4, 2)))
