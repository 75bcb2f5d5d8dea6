"""Score readings with the shipped TFLite models: the pump autoencoder and the meter LSTM.

Both are the :func:`operators.score.score` operator with a per-key detector from
``models/``: each sensor keeps only the raw history its windows need (a few hundred
bytes snapshotted), while the interpreter is loaded once per process and shared. Within a
Bytewax batch, a sensor's rows are scored by one call to the model (one invoke for the
autoencoder, one per window for the LSTM, whose fused op is exported at batch 1). Scores
lie in ``[0, 1]`` with the model's own threshold at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from models.autoencoder import AutoencoderDetector
from models.lstm import LSTMDetector
from models.runtime import TFLiteModel, cached_model
from operators.records import Reading, Scored
from operators.score import score

__all__ = ["MODEL_THRESHOLD", "autoencoder", "lstm", "tflite_detector_factory"]

MODEL_THRESHOLD = 0.5
"""The normalised score at which a TFLite model's own threshold lies."""

_ARTIFACTS = {"autoencoder": "pump_autoencoder", "lstm": "smart_meter_lstm"}


def tflite_detector_factory(
    detector: str, model: str | Path | None = None, num_threads: int = 1, calibrate: int = 0
) -> tuple[TFLiteModel, type[AutoencoderDetector] | type[LSTMDetector], dict[str, int]]:
    """The shared model, detector class and its keyword arguments for ``detector``.

    Args:
        detector: ``"autoencoder"`` or ``"lstm"``.
        model: A ``.tflite`` path; the shipped artifact when ``None``.
        num_threads: Interpreter threads.
        calibrate: Autoencoder only: rows each sensor standardises by first.
    """
    shared = cached_model(model or _ARTIFACTS[detector], num_threads)
    if detector == "autoencoder":
        return shared, AutoencoderDetector, {"calibrate": calibrate}
    return shared, LSTMDetector, {}


def _scored(
    up: KeyedStream[Reading],
    detector: str,
    features: Sequence[str] | None,
    model: str | Path | None,
    idle_timeout: timedelta | None,
    calibrate: int = 0,
) -> KeyedStream[Scored]:
    shared, cls, kwargs = tflite_detector_factory(detector, model, calibrate=calibrate)
    names = tuple(features or shared.metadata.inputs)
    return score("score", up, detector, names, lambda: cls(shared, **kwargs), idle_timeout)


@operator
def autoencoder(
    step_id: str,
    up: KeyedStream[Reading],
    features: Sequence[str] | None = None,
    model: str | Path | None = None,
    calibrate: int = 0,
    idle_timeout: timedelta | None = timedelta(hours=24),
) -> KeyedStream[Scored]:
    """Score each pump's readings by the autoencoder's reconstruction error.

    Args:
        step_id: Unique ID.
        up: Readings keyed by sensor id.
        features: Vibration, temperature and pressure fields (default: the SKAB columns
            the model was trained on, from its metadata).
        model: A ``.tflite`` file with its metadata JSON beside it (default: shipped).
        calibrate: Standardise each sensor by its own first N feature rows (0: off).
        idle_timeout: Drop a sensor's state after this much wall time without readings.

    Returns:
        One :class:`Scored` batch (detector ``"autoencoder"``) per key and batch.
    """
    return _scored(up, "autoencoder", features, model, idle_timeout, calibrate)


@operator
def lstm(
    step_id: str,
    up: KeyedStream[Reading],
    features: Sequence[str] | None = None,
    model: str | Path | None = None,
    idle_timeout: timedelta | None = timedelta(hours=24),
) -> KeyedStream[Scored]:
    """Score each meter's readings by the LSTM window classifier.

    Args:
        step_id: Unique ID.
        up: Readings keyed by sensor id.
        features: The one power field (default ``power_kw``, from the model's metadata).
        model: A ``.tflite`` file with its metadata JSON beside it (default: shipped).
        idle_timeout: Drop a sensor's state after this much wall time without readings.

    Returns:
        One :class:`Scored` batch (detector ``"lstm"``) per key and batch.
    """
    return _scored(up, "lstm", features, model, idle_timeout)
