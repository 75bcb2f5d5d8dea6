"""The pump ensemble's parameters, and the check that a TFLite member fits them.

:class:`EnsembleConfig` is what every pump of a flow shares (:mod:`models.ensemble`);
:func:`check_member` refuses, before any pump is built, a ``"tflite"`` autoencoder
trained for other channels, another feature window or another prefix length.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

from models.ensemble_ae import ENSEMBLE_AE, TFLiteAutoencoder
from models.ensemble_thresholds import THRESHOLD_MODES

__all__ = ["DETECTORS", "EnsembleConfig", "check_member"]

DETECTORS = ("hst", "mahalanobis", "autoencoder")
"""The members, in the column order of every score array."""


@dataclass(frozen=True)
class EnsembleConfig:
    """Parameters of a :class:`PumpEnsemble` (how each was chosen: README, Pump section).

    Attributes:
        channels: Input fields, in column order.
        k: Votes needed (of ``len(DETECTORS)``).
        train_rows: First rows of each sensor: the training prefix, without verdicts.
        window: Causal trailing-mean feature window.
        smooth: Trailing mean of each detector's raw score.
        q: Threshold quantile of out-of-sample prefix scores (and of adaptive windows).
        seed: Autoencoder seed; Half-Space Trees use ``seed + 42``.
        max_drift: Channels whose prefix drift is above this are dropped (``inf``: none).
        folds: Contiguous prefix folds for the out-of-sample threshold scores.
        hst_trees: Half-Space Trees' tree count.
        hst_height: Half-Space Trees' height.
        hst_margin: Limits are the prefix range widened by this many ranges each side.
        epochs: Autoencoder training steps on the prefix (full-batch Adam): from the
            seeded initial weights (numpy) or fine-tuning the shipped ones (TFLite; 0
            scores with them as shipped).
        autoencoder: ``"numpy"`` (trained on the prefix from seeded random weights by
            :class:`~models.pump_detectors.DenseAutoencoder`; any channels) or
            ``"tflite"`` (the shipped label-free TFLite model, fine-tuned on the prefix
            by the interpreter, :mod:`models.ensemble_ae`; only for the channels it was
            trained for, see :func:`check_member`; the pump flow's default).
        tflite_model: Artifact name or ``.tflite`` path of the ``"tflite"`` member.
        threshold: ``"prefix"``, ``"adaptive"`` or ``"fixed"``
            (:mod:`models.ensemble_thresholds`); the last two need row contexts.
        threshold_window: Adaptive: scores kept per context.
        threshold_min_count: Adaptive: scores a context needs before its own quantile.
        threshold_factors: Fixed: ``(context part, factor)`` pairs.
    """

    channels: tuple[str, ...]
    k: int = 2
    train_rows: int = 400
    window: int = 10
    smooth: int = 10
    q: float = 0.99
    seed: int = 0
    max_drift: float = math.inf
    folds: int = 4
    hst_trees: int = 25
    hst_height: int = 8
    hst_margin: float = 1.0
    epochs: int = 600
    autoencoder: Literal["numpy", "tflite"] = "numpy"
    tflite_model: str = ENSEMBLE_AE
    threshold: Literal["prefix", "adaptive", "fixed"] = "prefix"
    threshold_window: int = 512
    threshold_min_count: int = 64
    threshold_factors: tuple[tuple[Hashable, float], ...] = ()

    def __post_init__(self) -> None:
        checks = (
            (len(self.channels) >= 1, "channels must name at least one field"),
            (1 <= self.k <= len(DETECTORS), f"k must be in 1..{len(DETECTORS)}"),
            (self.train_rows >= max(20, 2 * self.smooth, 2 * self.folds), "train_rows too small"),
            (self.window >= 1 and self.smooth >= 1, "window and smooth must be at least 1"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (0.0 < self.q <= 1.0, "q must be in (0, 1]"),
            (self.autoencoder in {"numpy", "tflite"}, "autoencoder must be numpy or tflite"),
            (self.autoencoder == "numpy" or math.isinf(self.max_drift),
             "the tflite autoencoder needs every channel: max_drift must stay inf"),
            (self.threshold in THRESHOLD_MODES,
             f"threshold must be one of {', '.join(THRESHOLD_MODES)}"),
            (1 <= self.threshold_min_count <= self.threshold_window,
             "need 1 <= threshold_min_count <= threshold_window"),
            (all(f > 0 for _, f in self.threshold_factors), "threshold factors must be > 0"),
        )  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def check_member(config: EnsembleConfig) -> None:
    """Refuse a ``"tflite"`` member that was not trained for ``config``.

    Its metadata must list ``config.channels`` as its features, in order, and its feature
    window and prefix length must be ``config.window`` and ``config.train_rows``.

    Raises:
        ValueError: Saying what differs (and how to get a matching model).
    """
    if config.autoencoder != "tflite":
        return
    meta = TFLiteAutoencoder.metadata(config.tflite_model)
    want = (tuple(config.channels), config.window, config.train_rows)
    got = (meta.features, meta.window, meta.raw.get("prefix_rows"))
    if got != want:
        msg = (f"the TFLite autoencoder {config.tflite_model} was trained for channels "
               f"{list(got[0])}, window {got[1]}, prefix {got[2]}; this ensemble has "
               f"{list(want[0])}, {want[1]}, {want[2]}: retrain it (edgewatch train "
               "pump-ensemble-ae) or use the numpy autoencoder")  # fmt: skip
        raise ValueError(msg)
