"""The pump autoencoder: rolling features of raw pump readings, scored by a TFLite model.

:func:`pump_features` turns raw ``(vibration, temperature, pressure)`` rows into the four
features the model was trained on: the rolling mean and standard deviation of vibration
over ``window`` readings, the absolute rate of change of temperature per reading, and the
least-squares slope of pressure over ``slope_window`` readings. Rows without enough past
readings get ``NaN``.

:class:`AutoencoderDetector` is one sensor's detector: it keeps the last few raw rows so
that features continue across batches, scales features with the model's standard
scaler, and scores every row by its reconstruction error normalised against the model's
threshold (:func:`models.runtime.normalise`); rows before the first full window score 0.
With ``calibrate=N`` a sensor first standardises by the mean and standard deviation of
its own first ``N`` feature rows (scored 0), as SKAB's protocol trains on each run's first
400 rows: a pump whose vibration level differs from the training pump's then still fits.

>>> raw = np.column_stack([np.arange(6.0), [20, 21, 23, 23, 24, 24.0], np.arange(6.0) * 2])
>>> pump_features(raw, window=3, slope_window=3).round(3)[2:].tolist()
[[1.0, 1.0, 2.0, 2.0], [2.0, 1.0, 0.0, 2.0], [3.0, 1.0, 1.0, 2.0], [4.0, 1.0, 0.0, 2.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from models.runtime import SharedModelDetector, TFLiteModel, normalise

__all__ = ["PUMP_FEATURES", "AutoencoderDetector", "pump_features"]

PUMP_FEATURES = ("vibration_mean", "vibration_std", "temperature_rate", "pressure_slope")
"""The autoencoder's features, in column order."""

Floats = npt.NDArray[np.float64]


def pump_features(raw: npt.ArrayLike, window: int = 10, slope_window: int = 5) -> Floats:
    """Rolling pump features of raw ``(vibration, temperature, pressure)`` rows.

    Args:
        raw: ``(n, 3)`` raw readings in time order.
        window: Readings in the vibration mean and standard deviation (sample std).
        slope_window: Readings in the pressure slope.

    Returns:
        ``(n, 4)`` features in :data:`PUMP_FEATURES` order; ``NaN`` where too early.
    """
    x = np.asarray(raw, dtype=np.float64).reshape(-1, 3)
    n = len(x)
    out = np.full((n, 4), np.nan)
    if n >= window:
        vib = sliding_window_view(x[:, 0], window)
        out[window - 1 :, 0] = vib.mean(axis=1)
        out[window - 1 :, 1] = vib.std(axis=1, ddof=1)
    if n >= 2:
        out[1:, 2] = np.abs(np.diff(x[:, 1]))
    if n >= slope_window:
        t = np.arange(slope_window) - (slope_window - 1) / 2
        out[slope_window - 1 :, 3] = sliding_window_view(x[:, 2], slope_window) @ t / (t @ t)
    return out


class AutoencoderDetector(SharedModelDetector):
    """One pump's detector over a shared autoencoder model.

    Args:
        model: The autoencoder, whose metadata holds the scaler (``mean``, ``scale``), the
            feature windows (``window``, ``raw["slope_window"]``) and the threshold.
        calibrate: Feature rows of this sensor to standardise by before scoring (0: use
            the model's scaler).
    """

    def __init__(self, model: TFLiteModel, calibrate: int = 0) -> None:
        meta = model.metadata
        self.window = meta.window
        self.slope_window = int(meta.raw["slope_window"])
        self.calibrate = calibrate
        self._mean = np.asarray(meta.scaler["mean"])
        self._scale = np.asarray(meta.scaler["scale"])
        self._seen = np.zeros((0, len(PUMP_FEATURES)))
        super().__init__(model, max(self.window, self.slope_window, 2) - 1, 3)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "own": (self.calibrate, self._mean, self._scale,
                                                  self._seen)}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.window = self.model.metadata.window
        self.slope_window = int(self.model.metadata.raw["slope_window"])
        self.calibrate, self._mean, self._scale, self._seen = state["own"]

    def _calibrating(self, feats: Floats) -> npt.NDArray[np.bool_]:
        """Collect this sensor's first rows; True for rows used to calibrate."""
        used = np.zeros(len(feats), dtype=bool)
        need = self.calibrate - len(self._seen)
        if need <= 0:
            return used
        take = np.flatnonzero(~np.isnan(feats).any(axis=1))[:need]
        used[take] = True
        self._seen = np.concatenate([self._seen, feats[take]])
        if len(self._seen) == self.calibrate:
            self._mean = self._seen.mean(axis=0)
            self._scale = np.maximum(self._seen.std(axis=0), 1e-12)
        return used

    def errors(self, raw: npt.ArrayLike) -> Floats:
        """Mean squared reconstruction error of each row (``NaN`` before a full window)."""
        buf, old = self._extend(raw)
        feats = pump_features(buf, self.window, self.slope_window)[old:]
        err = np.full(len(feats), np.nan)
        ok = ~np.isnan(feats).any(axis=1) & ~self._calibrating(feats)
        if ok.any():
            z = (feats[ok] - self._mean) / self._scale
            rec = self.model.predict(z)
            err[ok] = np.mean((rec - z) ** 2, axis=1)
        return err

    def score_learn_many(self, x: npt.ArrayLike) -> Floats:
        """Score each raw row in ``[0, 1]`` (0.5 at the model's threshold), then keep it."""
        err = self.errors(x)
        meta = self.model.metadata
        return np.nan_to_num(normalise(err, meta.threshold, meta.kind), nan=0.0)
