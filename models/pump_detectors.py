"""The pump ensemble's numpy pieces: causal features, a drift screen and two detectors.

- :func:`trailing_mean`: causal mean of the last ``w`` rows of a history + batch, row by
  row over the same values in the same order, so it does not depend on batch splits.
- :func:`prefix_drift`: a label-free trend statistic of each channel over a training
  prefix, ``|mean(last quarter) - mean(first quarter)| / std``; the ensemble drops
  channels above ``EnsembleConfig.max_drift`` (slow thermal levels, which a model fitted
  on a short prefix reads as a fault for the rest of the run).
- :class:`EWMahalanobis`: squared Mahalanobis distance to an exponentially weighted mean
  and covariance, shrunk with the Ledoit-Wolf weight estimated on the prefix.
- :class:`DenseAutoencoder`: a seeded ``d-h-b-h-d`` tanh autoencoder trained by full-batch
  Adam on the prefix; its score is the squared reconstruction error. Inference multiplies
  column by column so that a row's score is the same float in any batch.

>>> x = np.arange(5.0).reshape(-1, 1)
>>> trailing_mean(np.full((2, 1), np.nan), x, 3).ravel().tolist()
[0.0, 0.5, 1.0, 2.0, 3.0]
>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=(400, 3))
>>> m = EWMahalanobis().fit(z)
>>> round(float(np.mean([m.score_one(r) for r in z])), 1)  # about d for Gaussian rows
3.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "SKAB_PUMP_CHANNELS",
    "DenseAutoencoder",
    "EWMahalanobis",
    "ledoit_wolf",
    "prefix_drift",
    "screen_channels",
    "trailing_mean",
]

Floats = npt.NDArray[np.float64]

SKAB_PUMP_CHANNELS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
                      "Voltage", "Volume Flow RateRMS")  # fmt: skip
"""SKAB channels kept by :func:`screen_channels` over valve1's 400-row prefixes (median
drift: Temperature 1.82 and Thermocouple 1.13 dropped; the rest 0.13-0.88)."""


def trailing_mean(history: Floats, x: Floats, w: int) -> Floats:
    """Mean of each row of ``x`` and the ``w - 1`` rows before it, ignoring NaN padding.

    Args:
        history: The ``w - 1`` rows before ``x`` (NaN where the stream had none yet).
        x: ``(n, d)`` new rows.
        w: Window length.
    """
    buf = np.concatenate([history, x])
    win = sliding_window_view(buf, w, axis=0)  # (n, d, w)
    present = ~np.isnan(win)
    total = np.where(present, win, 0.0)
    acc = total[..., 0].copy()
    for j in range(1, w):  # fixed order: bit-identical whatever the batch
        acc += total[..., j]
    out: Floats = acc / np.maximum(present.sum(axis=2), 1)
    return out


def prefix_drift(features: Floats) -> Floats:
    """``|mean(last quarter) - mean(first quarter)| / std`` of each column of a prefix.

    >>> f = np.column_stack([np.linspace(0, 1, 400), np.tile([0.0, 1.0], 200)])
    >>> prefix_drift(f).round(2).tolist()
    [2.6, 0.0]
    """
    q = max(1, len(features) // 4)
    sd = features.std(axis=0)
    shift = np.abs(features[-q:].mean(axis=0) - features[:q].mean(axis=0))
    out: Floats = np.where(sd > 0, shift / np.where(sd > 0, sd, 1.0), 0.0)
    return out


def screen_channels(prefixes: list[Floats], max_drift: float = 1.0) -> npt.NDArray[np.bool_]:
    """Channels whose median :func:`prefix_drift` over a fleet's prefixes is <= ``max_drift``.

    The least drifting channel is always kept. Uses no labels.

    >>> flat, ramp = np.tile([0.0, 1.0], 50), np.linspace(0, 1, 100)
    >>> screen_channels([np.column_stack([flat, ramp])] * 3).tolist()
    [True, False]
    """
    med = np.median([prefix_drift(p) for p in prefixes], axis=0)
    keep: npt.NDArray[np.bool_] = med <= max_drift
    return keep if keep.any() else med == med.min()


def ledoit_wolf(z: Floats) -> float:
    """Ledoit-Wolf shrinkage weight toward ``trace(S)/d * I`` of the rows ``z``."""
    n, p = z.shape
    xc = z - z.mean(axis=0)
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    d2 = float(((s - mu * np.eye(p)) ** 2).sum()) / p
    outer = np.einsum("ni,nj->nij", xc, xc)
    b2 = min(float(((outer - s) ** 2).sum()) / p / n**2, d2)
    return b2 / d2 if d2 > 0 else 1.0


class EWMahalanobis:
    """Squared Mahalanobis distance with an exponentially weighted mean and covariance.

    :meth:`fit` takes the prefix: mean, covariance, Ledoit-Wolf weight ``delta`` and
    ``alpha = 1 / len(prefix)``. :meth:`learn` moves mean and covariance toward a row
    with weight ``alpha``; the shrunk covariance
    ``(1 - delta) C + delta trace(C)/d I`` is inverted after each update.
    """

    def __init__(self) -> None:
        self.alpha = 0.0
        self.delta = 1.0
        self.mean: Floats = np.zeros(0)
        self.cov: Floats = np.zeros((0, 0))
        self.precision: Floats = np.zeros((0, 0))

    def fit(self, z: Floats) -> EWMahalanobis:
        """Fit on the prefix rows ``z``; returns self."""
        self.alpha, self.mean, self.delta = 1.0 / len(z), z.mean(axis=0), ledoit_wolf(z)
        self.cov = np.atleast_2d(np.cov(z.T, bias=True))
        self._invert()
        return self

    def _invert(self) -> None:
        p = len(self.mean)
        mu = np.trace(self.cov) / p
        shrunk = (1 - self.delta) * self.cov + self.delta * mu * np.eye(p)
        self.precision = np.linalg.inv(shrunk + 1e-12 * np.eye(p))

    def score_many(self, z: Floats) -> Floats:
        """Squared distances of the rows of ``z`` (no learning)."""
        d = z - self.mean
        out: Floats = np.einsum("ij,jk,ik->i", d, self.precision, d)
        return out

    def score_one(self, z: Floats) -> float:
        """Squared distance of one row."""
        d = z - self.mean
        return float(d @ self.precision @ d)

    def learn(self, z: Floats) -> None:
        """Move the mean and covariance toward one row."""
        d = z - self.mean
        self.mean = self.mean + self.alpha * d
        self.cov = (1 - self.alpha) * (self.cov + self.alpha * np.outer(d, d))
        self._invert()

    def state(self) -> tuple[Any, ...]:
        """``(alpha, delta, mean, upper triangle of cov)``."""
        return self.alpha, self.delta, self.mean, self.cov[np.triu_indices(len(self.mean))]

    @classmethod
    def from_state(cls, state: tuple[Any, ...]) -> EWMahalanobis:
        """The model :meth:`state` describes."""
        m = cls()
        m.alpha, m.delta, m.mean, upper = state
        p = len(m.mean)
        cov = np.zeros((p, p))
        cov[np.triu_indices(p)] = upper
        m.cov = np.triu(cov) + np.triu(cov, 1).T
        m._invert()
        return m


class DenseAutoencoder:
    """``d -> max(4, d//2+2) -> max(2, d//4+1) -> ... -> d`` tanh autoencoder, linear output.

    Args:
        seed: Seed of the initial weights.
        epochs: Full-batch Adam steps.
        lr: Adam learning rate.
        l2: Weight decay on the weights (not the biases).
    """

    def __init__(self, seed: int = 0, epochs: int = 600, lr: float = 3e-3, l2: float = 1e-4):
        self.seed, self.epochs, self.lr, self.l2 = seed, epochs, lr, l2
        self.weights: list[Floats] = []
        self.biases: list[Floats] = []

    def fit(self, z: Floats) -> DenseAutoencoder:
        """Train on the rows ``z``; returns self."""
        self.weights, self.biases = self.initial(self.seed, z.shape[1])
        params = self.weights + self.biases
        m1 = [np.zeros_like(p) for p in params]
        m2 = [np.zeros_like(p) for p in params]
        for it in range(1, self.epochs + 1):
            acts = self._forward(z, exact=False)
            g = 2 * (acts[-1] - z) / z.size
            gw: list[Floats] = [g] * 4
            gb: list[Floats] = [g] * 4
            for layer in range(3, -1, -1):
                gw[layer] = acts[layer].T @ g + self.l2 * self.weights[layer]
                gb[layer] = g.sum(axis=0)
                if layer:
                    g = (g @ self.weights[layer].T) * (1 - acts[layer] ** 2)
            for i, gi in enumerate(gw + gb):
                m1[i] = 0.9 * m1[i] + 0.1 * gi
                m2[i] = 0.999 * m2[i] + 0.001 * gi * gi
                step = (m1[i] / (1 - 0.9**it)) / (np.sqrt(m2[i] / (1 - 0.999**it)) + 1e-8)
                params[i] -= self.lr * step
        return self

    @staticmethod
    def initial(seed: int, d: int) -> tuple[list[Floats], list[Floats]]:
        """The seeded initial weights and (zero) biases for ``d`` features."""
        rng = np.random.default_rng(seed)
        h, b = max(4, d // 2 + 2), max(2, d // 4 + 1)
        sizes = [d, h, b, h, d]
        weights = [
            rng.normal(0, np.sqrt(1 / i), (i, o)) for i, o in zip(sizes, sizes[1:], strict=False)
        ]
        return weights, [np.zeros(o) for o in sizes[1:]]

    def _forward(self, z: Floats, *, exact: bool) -> list[Floats]:
        acts = [z]
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            a = acts[-1]
            if exact:  # column by column: the same float for a row in any batch
                out = b + a[:, :1] * w[0]
                for j in range(1, w.shape[0]):
                    out = out + a[:, j : j + 1] * w[j]
            else:
                out = a @ w + b
            acts.append(np.tanh(out) if layer < 3 else out)
        return acts

    def score_many(self, z: Floats) -> Floats:
        """Squared reconstruction error of each row."""
        rec = self._forward(z, exact=True)[-1]
        out: Floats = ((rec - z) ** 2).sum(axis=1)
        return out

    def state(self) -> tuple[list[Floats], list[Floats]]:
        """The weights and biases."""
        return self.weights, self.biases

    @classmethod
    def from_state(cls, state: tuple[list[Floats], list[Floats]]) -> DenseAutoencoder:
        """The model :meth:`state` describes (for scoring)."""
        m = cls()
        m.weights, m.biases = [np.asarray(w) for w in state[0]], [np.asarray(b) for b in state[1]]
        return m
