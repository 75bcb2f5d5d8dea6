"""The smart-meter LSTM: one sensor's sliding windows scored by a TFLite classifier.

The model (Conv1D → MaxPool1D → 3 LSTM → dense, after the paper in ``shared/seeds``)
reads ``window`` consecutive readings of one feature, min-max scaled with the scaler in
its metadata, and outputs the probability that the window is anomalous. Every reading
that completes a window is scored by the window ending at it; earlier ones score 0.
Missing values (``NaN``) are read as the scaler's minimum.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from models.runtime import SharedModelDetector, TFLiteModel, normalise

__all__ = ["LSTMDetector", "scale_minmax"]


def scale_minmax(x: npt.ArrayLike, lo: float, hi: float) -> npt.NDArray[np.float32]:
    """Scale to ``[0, 1]`` by the training range (values outside it stay outside).

    >>> scale_minmax([0.0, 1.0, 4.0, float("nan")], 0.0, 2.0).tolist()
    [0.0, 0.5, 2.0, 0.0]
    """
    z = (np.asarray(x, dtype=np.float64) - lo) / (hi - lo)
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


class LSTMDetector(SharedModelDetector):
    """One meter's detector over a shared LSTM window classifier.

    Args:
        model: The classifier, whose metadata holds the window and the ``min``/``max`` scaler.
    """

    def __init__(self, model: TFLiteModel) -> None:
        super().__init__(model, model.metadata.window - 1, 1)

    def probabilities(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """P(anomalous window) for each new reading's window (``NaN`` before a full one)."""
        buf, old = self._extend(x)
        window = self.model.metadata.window
        out = np.full(len(buf) - old, np.nan)
        first = max(old, window - 1)  # index in buf of the first reading with a full window
        if first < len(buf):
            scaler = self.model.metadata.scaler
            z = scale_minmax(buf[first - window + 1 :, 0], scaler["min"][0], scaler["max"][0])
            windows = sliding_window_view(z, window)[..., None]
            out[first - old :] = self.model.predict(windows)[:, 0]
        return out

    def score_learn_many(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Score each reading in ``[0, 1]`` (0.5 at the model's threshold), then keep it."""
        meta = self.model.metadata
        p = self.probabilities(x)
        return np.nan_to_num(normalise(p, meta.threshold, meta.kind), nan=0.0)
