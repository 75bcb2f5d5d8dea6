"""The within-pump autoregression: predictions and level covariances against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from models.pump_var import VarModel


def model() -> tuple[VarModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    b = rng.normal(size=(3, 3))
    c0 = b @ b.T + 3 * np.eye(3)
    a = np.diag([0.9, 0.5, 0.1])
    return VarModel.of(c0, a @ c0, window=5), c0, a


def test_steps_and_prediction_covariances_follow_the_autoregression() -> None:
    m, c0, a = model()
    np.testing.assert_allclose(m.step(1), a, atol=1e-12)
    np.testing.assert_allclose(m.step(3), a @ a @ a, atol=1e-12)
    e = np.array([1.0, -2.0, 0.5])
    for k in (1, 4):
        ak = np.linalg.matrix_power(a, k)
        cov = c0 - ak @ c0 @ ak.T
        assert m.innovation(e + ak @ e, e, k) == pytest.approx(e @ np.linalg.solve(cov, e))
    assert VarModel.of(c0, a @ c0, window=5) is m  # equal inputs share the tables


@pytest.mark.parametrize("base", [10, 37, 200])
def test_level_covariance_is_that_of_the_window_mean_less_the_base_mean(base: int) -> None:
    m, c0, a = model()
    w = m.window
    weights = np.r_[-np.ones(base) / base, np.ones(w) / w]
    autocov = [np.linalg.matrix_power(a, k) @ c0 for k in range(base + w)]
    cov = sum(weights[i] * weights[j] * (autocov[i - j] if i >= j else autocov[j - i].T)
              for i in range(base + w) for j in range(base + w))  # fmt: skip
    shift = np.array([0.3, -0.1, 0.7])
    assert m.level(shift, base) == pytest.approx(shift @ np.linalg.solve(cov, shift), rel=1e-6)


def test_simulated_level_differences_are_chi_square() -> None:
    m, c0, a = model()
    rng = np.random.default_rng(2)
    root = np.linalg.cholesky(c0 - a @ c0 @ a.T)
    scores = []
    for _ in range(400):
        x = np.empty((25, 3))
        x[0] = np.linalg.cholesky(c0) @ rng.normal(size=3)
        for t in range(1, 25):
            x[t] = a @ x[t - 1] + root @ rng.normal(size=3)
        scores.append(m.level(x[20:].mean(axis=0) - x[:20].mean(axis=0), 20))
    assert np.mean(scores) == pytest.approx(3.0, rel=0.15)  # chi-square, 3 degrees
