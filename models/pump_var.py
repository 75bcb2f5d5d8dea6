"""The within-pump law of a fleet's raw rows as a first-order vector autoregression.

Pumps of one group share the shape of their normal noise, not their levels: each
channel wanders around the pump's own operating level with the same covariance ``C0``
and the same lag-1 cross-covariance ``C1 = cov(x_t, x_{t-1})`` (SKAB's vibration and flow
channels keep most of a reading's deviation into the next: lag-1 autocorrelations near
0.93). :class:`VarModel` takes both, pooled over the fleet, and fits ``x_t - m =
A (x_{t-1} - m) + e_t`` with ``A = C1 C0^-1``, so that a pump knowing only its own level
``m`` (the mean of its few normal rows so far) judges a row two ways, each a squared
Mahalanobis distance that is chi-square with ``d`` degrees of freedom when the row is
normal:

- :meth:`VarModel.innovation`: the row against its prediction from the last normal row
  ``k`` rows back, under the ``k``-step prediction covariance ``C0 - A^k C0 A^k^T`` (a
  spike, or cavitation's extra noise, is large against the small one-step innovation);
- :meth:`VarModel.level`: the mean of the last ``window`` rows against the mean of the
  ``n`` normal rows before them, under the covariance of that difference implied by the
  autoregression (a drift moves the level; how well ``n`` rows pin a strongly
  autocorrelated channel's level down is part of the covariance, so the score is
  calibrated from the pump's tenth row on).

>>> rng = np.random.default_rng(0)
>>> cov = np.array([[1.0, 0.5], [0.5, 1.0]])
>>> model = VarModel.of(cov, 0.9 * cov, window=5)
>>> np.allclose(model.step(1), 0.9 * np.eye(2))
True
>>> round(model.innovation(np.array([0.9, 0.9]), np.array([1.0, 1.0]), 1), 6)
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = ["LAGS", "MAX_BASE", "LagMoments", "VarModel", "trim_limit"]

Floats = npt.NDArray[np.float64]
LAGS = 256
"""Prediction horizons and autocovariance lags kept (``A^k`` is negligible beyond)."""
MAX_BASE = 512
"""Base lengths the level covariance is tabulated for (longer bases use this one's)."""
_MAX_RADIUS = 0.999  # spectral radius A is held under, so the process stays stationary


def _inverse_psd(m: Floats) -> Floats:
    """The inverse of a symmetric positive semi-definite matrix, its eigenvalues floored."""
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    floor = max(float(values.max()) * 1e-9, 1e-300)
    out: Floats = (vectors / np.maximum(values, floor)) @ vectors.T
    return out


def trim_limit(d: int, tail: float) -> float:
    """The local score whose chi-square (``d`` degrees) tail is ``tail`` (Wilson-Hilferty).

    >>> round(trim_limit(6, 1e-4) ** 2, 1)  # scipy.stats.chi2.ppf(1 - 1e-4, 6): 27.86
    28.4
    """
    z, c = NormalDist().inv_cdf(1.0 - tail), 2.0 / (9.0 * d)
    return math.sqrt(d * (1.0 - c + z * math.sqrt(c)) ** 3)


class LagMoments:
    """Running lag-1 co-moment ``sum (x_t - mean_t)(x_{t-1} - mean_{t-1})^T`` of row pairs.

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    >>> acc = LagMoments(2)
    >>> for x, y in zip(a, b):
    ...     acc.add(x, y)
    >>> bool(np.allclose(acc.co, (a - a.mean(0)).T @ (b - b.mean(0))))
    True
    """

    def __init__(self, d: int) -> None:
        self.n = 0
        self.now, self.before, self.co = np.zeros(d), np.zeros(d), np.zeros((d, d))

    def add(self, now: Floats, before: Floats) -> None:
        """Add the pair (``now``, the row ``before`` it)."""
        self.n += 1
        delta = now - self.now
        self.now = self.now + delta / self.n
        self.before = self.before + (before - self.before) / self.n
        self.co = self.co + np.outer(delta, before - self.before)


@dataclass(frozen=True, eq=False)
class VarModel:
    """A fleet's within-pump autoregression; build it with :meth:`of` (cached).

    Attributes:
        cov: ``C0``, the pooled within-pump covariance of raw rows.
        lag: ``C1``, the pooled within-pump ``cov(x_t, x_{t-1})``.
        window: Rows whose mean :meth:`level` compares with the base's.
    """

    cov: Floats
    lag: Floats
    window: int
    _steps: Floats = field(repr=False)  # (LAGS + 1, d, d): A^k
    _pred: Floats = field(repr=False)  # (LAGS + 1, d, d): inverse k-step covariances
    _level: Floats = field(repr=False)  # (MAX_BASE + 1, d, d): inverse level covariances
    _mean: Floats = field(repr=False)  # (MAX_BASE + 1, d, d): covariances of base means
    _ahead: Floats = field(repr=False)  # (LAGS + 1, d, d): k-step prediction covariances
    _keep: Floats = field(repr=False)  # (LAGS + 1, d, d): I - A^k

    @property
    def lower_quartile(self) -> float:
        """The lower quartile of a normal row's :meth:`innovation` (chi-square, ``d``)."""
        d = len(self.cov)
        z = -0.6744897501960817
        return float(d * (1 - 2 / (9 * d) + z * (2 / (9 * d)) ** 0.5) ** 3)

    @classmethod
    def of(cls, cov: Floats, lag: Floats, window: int) -> VarModel:
        """The model of ``C0``, ``C1`` and ``window``; equal inputs share one model."""
        c0, c1 = np.ascontiguousarray(cov, np.float64), np.ascontiguousarray(lag, np.float64)
        return _build(c0.tobytes(), c1.tobytes(), len(c0), window)

    def step(self, k: int) -> Floats:
        """``A^k``."""
        out: Floats = self._steps[min(k, LAGS)]
        return out

    def innovation(self, row: Floats, last: Floats, k: int, base: int | None = None) -> float:
        """Squared distance of ``row`` from its prediction by ``last``, ``k`` rows before.

        Both are deviations from the pump's level, estimated by the mean of ``base`` rows
        (``None``: known); under ``MAX_BASE`` rows the estimate's error is part of the
        covariance (it passes into the prediction through ``I - A^k``).
        """
        k = min(k, LAGS)
        step = self._steps[k]
        e = row - step @ last
        if base is None or base >= MAX_BASE:
            return float(e @ self._pred[k] @ e)
        keep = self._keep[k]
        cov = self._ahead[k] + keep @ self._mean[max(base, 1)] @ keep.T
        return float(e @ np.linalg.solve(cov, e))

    def level(self, shift: Floats, base: int) -> float:
        """Squared distance of the last ``window`` rows' mean from the ``base`` rows' before."""
        return float(shift @ self._level[min(base, MAX_BASE)] @ shift)


@lru_cache(maxsize=16)
def _build(c0_bytes: bytes, c1_bytes: bytes, d: int, window: int) -> VarModel:
    c0 = np.frombuffer(c0_bytes, np.float64).reshape(d, d).copy()
    c1 = np.frombuffer(c1_bytes, np.float64).reshape(d, d).copy()
    a = c1 @ _inverse_psd(c0)
    radius = float(np.abs(np.linalg.eigvals(a)).max())
    if radius > _MAX_RADIUS:
        a *= _MAX_RADIUS / radius
    steps = np.empty((LAGS + 1, d, d))
    steps[0] = np.eye(d)
    for k in range(1, LAGS + 1):
        steps[k] = a @ steps[k - 1]
    ahead = c0 - steps @ c0 @ steps.transpose(0, 2, 1)  # k-step prediction covariances
    pred = np.stack([np.zeros((d, d)), *(_inverse_psd(m) for m in ahead[1:])])
    autocov = steps @ c0  # cov(x_{t+k}, x_t)
    sym = autocov + autocov.transpose(0, 2, 1)
    sym[0] = c0
    level, means = _level_inverses(sym, window)
    return VarModel(c0, c1, window, steps, pred, level, means, ahead, np.eye(d) - steps)


def _level_inverses(sym: Floats, w: int) -> tuple[Floats, Floats]:
    """Inverse covariances of ``mean(window) - mean(base)`` for every base length.

    The difference is ``sum_i a_i x_i`` with ``a = -1/n`` on the base's ``n`` rows and
    ``1/w`` on the window's ``w`` rows after them; its covariance is ``sum_k c_k S_k``,
    ``c_k = sum_i a_i a_{i+k}`` and ``S_k = C_k + C_k^T`` (``S_0 = C0``). Also returned:
    the covariances of the base's mean alone.
    """
    n = np.arange(MAX_BASE + 1, dtype=np.float64)[:, None].clip(1)
    k = np.arange(len(sym), dtype=np.float64)[None, :]
    cross = (np.minimum(n - 1, n + w - 1 - k) - np.maximum(0, n - k) + 1).clip(0)
    base = (n - k).clip(0) / n**2
    c = base + (w - k).clip(0) / w**2 - cross / (n * w)
    cov = np.einsum("nk,kij->nij", c, sym)
    return np.stack([_inverse_psd(m) for m in cov]), np.einsum("nk,kij->nij", base, sym)
