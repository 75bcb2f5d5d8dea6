"""Online Mahalanobis distance with a running mean and a shrunk covariance.

:class:`OnlineMahalanobis` keeps the count ``n``, the mean vector and the co-moment matrix
``M2 = sum((x - mean)(x - mean)^T)`` of the rows it learned. A batch is summarised by its
own count, mean and co-moment with a few numpy calls and merged with Chan et al.'s exact
parallel formula::

    n = na + nb,  mean = (na * mean_a + nb * mean_b) / n,
    M2 = M2_a + M2_b + (mean_b - mean_a)(mean_b - mean_a)^T * na * nb / n

so learning a batch, learning its rows one by one and merging models that learned parts of
it agree to rounding (about 1e-15 relative), in any order: the form is symmetric in ``a``
and ``b``. :meth:`OnlineMahalanobis.merge` uses it to pool a fleet's models.

The covariance used for scoring is the sample covariance ``S = M2 / (n - 1)`` (as
``np.cov``) shrunk toward a scaled identity, plus a ridge::

    C = (1 - shrinkage) * S + (shrinkage * trace(S) / d + ridge) * I

and the score of a row ``x`` is the distance ``sqrt((x - mean)^T C^-1 (x - mean))``, not
its square: for Gaussian data its square is about chi-squared with ``d`` degrees of
freedom, so typical scores are near ``sqrt(d)``. The whitening matrix ``W`` with
``W W^T = C^-1`` is computed once after each learn, lazily, from an eigendecomposition
(eigenvalues floored at ``ridge``), and a batch is scored as ``norm((X - mean) @ W)``.

The state is the count, the mean and the upper triangle of ``M2`` (float64): with 8
features, ``d + d(d+1)/2 = 44`` floats; pickled, 615 bytes (375 with 4).

>>> rng = np.random.default_rng(0)
>>> model = OnlineMahalanobis(shrinkage=0.0)
>>> model.learn_many(rng.normal(size=(1000, 2)))
>>> scores = model.score_many(np.array([[0.0, 0.0], [4.0, 0.0]]))
>>> [round(float(s), 1) for s in scores]
[0.0, 4.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from models._state import SnapshotState

__all__ = ["OnlineMahalanobis"]

Floats = npt.NDArray[np.float64]


class OnlineMahalanobis(SnapshotState):
    """Mahalanobis distance to the rows learned so far, with a shrunk covariance.

    Scores are 0.0 until ``min_samples`` rows are learned (see :attr:`ready`); rows with a
    non-finite value are never learned and score NaN.

    Args:
        n_features: Number of features (columns); taken from the first learned batch when
            ``None``.
        shrinkage: Weight in ``[0, 1]`` of the scaled identity ``trace(S) / d * I`` in the
            covariance: 0 is the sample covariance, 1 ignores correlations and treats every
            feature as having the mean variance.
        ridge: Positive constant added to the covariance's diagonal (and floor of its
            eigenvalues), so that it is invertible even when a feature is constant. It is
            in the features' squared units: scale features so that it is negligible.
        min_samples: Rows to learn before scoring; ``None`` means ``max(2 * d + 1, 10)``,
            enough for a full-rank sample covariance and a variance that is not just noise.

    Raises:
        ValueError: On an argument out of range.
    """

    def __init__(
        self,
        n_features: int | None = None,
        shrinkage: float = 0.1,
        ridge: float = 1e-9,
        min_samples: int | None = None,
    ) -> None:
        if n_features is not None and n_features < 1:
            msg = f"n_features must be at least 1, got {n_features}"
            raise ValueError(msg)
        if not 0.0 <= shrinkage <= 1.0:
            msg = f"shrinkage must be in [0, 1], got {shrinkage}"
            raise ValueError(msg)
        if not 0.0 < ridge < np.inf:
            msg = f"ridge must be positive and finite, got {ridge}"
            raise ValueError(msg)
        if min_samples is not None and min_samples < 2:
            msg = f"min_samples must be at least 2, got {min_samples}"
            raise ValueError(msg)
        self.n_features = n_features
        self.shrinkage = shrinkage
        self.ridge = ridge
        self.min_samples = min_samples
        self._d = n_features or 0
        self._count = 0
        self._mean: Floats = np.zeros(self._d)
        self._m2: Floats = np.zeros((self._d, self._d))
        self._whiten: Floats | None = None  # cache, dropped by every learn

    @property
    def count(self) -> int:
        """Number of rows learned."""
        return self._count

    @property
    def mean(self) -> Floats:
        """Mean of the rows learned (a copy)."""
        return self._mean.copy()

    @property
    def ready(self) -> bool:
        """Whether enough rows are learned for scores to mean anything (else they are 0)."""
        return self._d > 0 and self._count >= self._min_samples()

    def covariance(self) -> Floats:
        """The shrunk, ridged covariance that scores use (needs at least 2 rows learned)."""
        if self._count < 2:
            msg = f"a covariance needs at least 2 rows, {self._count} learned"
            raise ValueError(msg)
        sample = self._m2 / (self._count - 1)
        scale = self.shrinkage * float(np.trace(sample)) / self._d + self.ridge
        shrunk: Floats = (1.0 - self.shrinkage) * sample + scale * np.eye(self._d)
        return shrunk

    def learn_many(self, X: npt.ArrayLike, mask: npt.ArrayLike | None = None) -> None:
        """Learn the rows of ``X`` (``(n, d)``) where ``mask`` is true and all are finite."""
        rows = self._matrix(X)
        keep = np.isfinite(rows).all(axis=1)
        if mask is not None:
            keep &= np.asarray(mask, dtype=bool).reshape(len(rows))
        if not keep.all():
            rows = rows[keep]
        if len(rows):
            mean = rows.mean(axis=0)
            centred = rows - mean
            self._absorb(len(rows), mean, centred.T @ centred)

    def learn_one(self, x: npt.ArrayLike) -> None:
        """Learn one row of ``d`` values."""
        self.learn_many(np.asarray(x, dtype=np.float64).reshape(1, -1))

    def score_many(self, X: npt.ArrayLike) -> Floats:
        """Distances of the rows of ``X`` (``(n, d)``), without learning them.

        A row holding a NaN or an infinity scores NaN (quietly: no ``RuntimeWarning``).
        """
        if not self.ready:
            return np.zeros(len(np.asarray(X)))
        centred = self._matrix(X) - self._mean
        with np.errstate(invalid="ignore"):
            result: Floats = np.linalg.norm(centred @ self._whitening(), axis=1)
        return result

    def score_one(self, x: npt.ArrayLike) -> float:
        """Distance of one row of ``d`` values, without learning it."""
        return float(self.score_many(np.asarray(x, dtype=np.float64).reshape(1, -1))[0])

    def merge(self, other: OnlineMahalanobis) -> OnlineMahalanobis:
        """Add what ``other`` learned to this model, exactly; returns this model."""
        if other._count:
            if self._d and other._d != self._d:
                msg = f"cannot merge a model of {other._d} features into one of {self._d}"
                raise ValueError(msg)
            self._matrix(np.empty((0, other._d)))  # takes d when this model has none
            self._absorb(other._count, other._mean, other._m2)
        return self

    @classmethod
    def merged(cls, *models: OnlineMahalanobis) -> OnlineMahalanobis:
        """A new model that learned what all ``models`` learned (parameters of the first)."""
        if not models:
            msg = "merged needs at least one model"
            raise ValueError(msg)
        first = models[0]
        result = cls(first.n_features, first.shrinkage, first.ridge, first.min_samples)
        for model in models:
            result.merge(model)
        return result

    def state(self) -> dict[str, Any]:
        """Compact state: parameters, count, mean and the upper triangle of ``M2``."""
        upper = np.triu_indices(self._d)
        return {"params": (self.n_features, self.shrinkage, self.ridge, self.min_samples),
                "d": self._d, "count": self._count,
                "mean": self._mean.copy(), "m2": self._m2[upper]}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        d = self._d = int(state["d"])
        self._count = int(state["count"])
        self._mean = np.array(state["mean"], dtype=np.float64)
        self._m2 = np.zeros((d, d))
        self._m2[np.triu_indices(d)] = state["m2"]
        self._m2 = np.triu(self._m2) + np.triu(self._m2, 1).T  # M2 is kept exactly symmetric

    def _min_samples(self) -> int:
        return self.min_samples if self.min_samples is not None else max(2 * self._d + 1, 10)

    def _matrix(self, X: npt.ArrayLike) -> Floats:
        matrix = np.asarray(X, dtype=np.float64)
        if not self._d and matrix.ndim == 2 and matrix.shape[1]:
            self._d = matrix.shape[1]
            self._mean, self._m2 = np.zeros(self._d), np.zeros((self._d, self._d))
        if matrix.ndim != 2 or matrix.shape[1] != self._d:
            msg = f"X must have shape (n, {self._d or 'd'}), got {matrix.shape}"
            raise ValueError(msg)
        return matrix

    def _absorb(self, count: int, mean: Floats, m2: Floats) -> None:
        """Chan et al.'s merge of a summary ``(count, mean, m2)`` into this model's."""
        n_a, total = self._count, self._count + count
        if n_a == 0:
            self._mean, self._m2 = mean.astype(np.float64), m2.astype(np.float64)
        else:
            delta = mean - self._mean
            self._mean = (n_a * self._mean + count * mean) / total
            self._m2 = self._m2 + m2 + np.outer(delta, delta) * (n_a * count / total)
        self._m2 = (self._m2 + self._m2.T) / 2  # exactly symmetric: a + b == b + a
        self._count = total
        self._whiten = None

    def _whitening(self) -> Floats:
        """``W`` with ``W W^T = C^-1``, from the eigendecomposition of the covariance."""
        if self._whiten is None:
            values, vectors = np.linalg.eigh(self.covariance())
            self._whiten = vectors / np.sqrt(np.maximum(values, self.ridge))
        return self._whiten
