"""The pump ensemble's shared TFLite autoencoder member and the rows it is trained on.

The ensemble (:mod:`models.ensemble`) standardises each sensor's features (trailing means
of its channels) by the mean and standard deviation of its own training prefix. A model
shared by every pump therefore learns in that standardised space, from *virtual
sensors*: :func:`virtual_sensors` cuts a long normal recording (SKAB's anomaly-free run)
into overlapping stretches as long as a scored run, and standardises each by its own
first ``prefix`` rows, exactly as a pump is standardised by its prefix. Rows a stretch
has after its prefix show what a normal pump looks like once it has drifted from the
level its prefix set.

:class:`TFLiteAutoencoder` scores rows with such a model through :mod:`models.runtime`
(batched invokes, the SHA-256 checked on load): the squared reconstruction error of each
row, summed over its features, as :class:`~models.pump_detectors.DenseAutoencoder` does.
It pickles to the model's path only; the interpreter is shared per process.

>>> x = np.arange(20.0).reshape(-1, 1)
>>> parts = virtual_sensors(x, prefix=4, length=6, step=7)  # starts 0, 7, 14
>>> len(parts), parts[1].round(2).ravel().tolist()
(3, [-1.34, -0.45, 0.45, 1.34, 2.24, 3.13])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.runtime import ARTIFACTS, ModelMetadata, cached_model

__all__ = ["ENSEMBLE_AE", "TFLiteAutoencoder", "standardise", "virtual_sensors"]

ENSEMBLE_AE = "pump_ensemble_ae"
"""The shipped member's artifact name (``models/artifacts/pump_ensemble_ae.tflite``)."""

Floats = npt.NDArray[np.float64]


def standardise(rows: Floats, prefix: Floats) -> Floats:
    """``rows`` standardised by the mean and standard deviation of ``prefix`` (0 → 1)."""
    mu, sd = prefix.mean(axis=0), prefix.std(axis=0)
    out: Floats = (rows - mu) / np.where(sd > 0, sd, 1.0)
    return out


def virtual_sensors(features: Floats, prefix: int, length: int, step: int) -> list[Floats]:
    """Stretches of ``features``, each standardised by its own first ``prefix`` rows.

    Stretch ``i`` is rows ``[i * step, i * step + length)``.

    Args:
        features: ``(n, d)`` feature rows of one normal recording, in time order.
        prefix: Rows that standardise a stretch (the ensemble's ``train_rows``).
        length: Rows of a stretch (about a scored run's length).
        step: Rows between the starts of two stretches.
    """
    starts = range(0, len(features) - length + 1, step)
    return [standardise(features[s : s + length], features[s : s + prefix]) for s in starts]


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    return path if path.suffix == ".tflite" else ARTIFACTS / f"{name_or_path}.tflite"


class TFLiteAutoencoder:
    """A shared TFLite autoencoder over the ensemble's standardised features.

    Args:
        model: A shipped artifact's name or a ``.tflite`` path.
    """

    def __init__(self, model: str | Path = ENSEMBLE_AE) -> None:
        self.path = _resolve(model)

    @staticmethod
    def metadata(model: str | Path = ENSEMBLE_AE) -> ModelMetadata:
        """The model's metadata JSON, read without loading the model."""
        return ModelMetadata.read(_resolve(model).with_suffix(".json"))

    @property
    def sha256(self) -> str:
        """SHA-256 of the model file (checked when it is loaded)."""
        return cached_model(self.path).metadata.sha256

    def errors_many(self, z: Floats) -> Floats:
        """``(n, d)`` squared reconstruction error of each feature of each row."""
        if not len(z):
            return np.zeros((0, z.shape[1]))
        rec = cached_model(self.path).predict(z).astype(np.float64)
        out: Floats = (rec - z.astype(np.float32).astype(np.float64)) ** 2
        return out

    def score_many(self, z: Floats, scale: Floats | None = None) -> Floats:
        """Squared reconstruction error of each row, summed over the features.

        With ``scale``, each feature's error is divided by it first
        (``EnsembleConfig.ae_error="relative"``).
        """
        err = self.errors_many(z)
        out: Floats = (err if scale is None else err / scale).sum(axis=1)
        return out

    def state(self) -> dict[str, Any]:
        """The model's path (the interpreter is looked up, not pickled)."""
        return {"path": str(self.path)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TFLiteAutoencoder:
        """The member :meth:`state` describes."""
        return cls(state["path"])
