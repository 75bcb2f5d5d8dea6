"""One pump's streaming k-of-n ensemble: Half-Space Trees, Mahalanobis, autoencoder.

Per sensor, in time order (SKAB's protocol, and the recipe of the valve1 study in the
README's "Pump: SKAB valve1" section):

1. Features: the causal trailing mean over ``window`` rows of each channel.
2. The first ``train_rows`` rows are a training prefix and get no verdicts. When it is
   complete, channels whose prefix drift (:func:`models.pump_detectors.prefix_drift`)
   exceeds ``max_drift`` are dropped (at least one is kept), the rest are standardised by
   the prefix's mean and standard deviation, and the three detectors are fitted:
   Half-Space Trees (limits: prefix range widened by ``hst_margin`` ranges each side,
   window ``train_rows // 2``), :class:`~models.pump_detectors.EWMahalanobis` and
   :class:`~models.pump_detectors.DenseAutoencoder`.
3. Each detector's raw score is smoothed by a trailing mean over ``smooth`` rows, and
   its threshold is the ``q`` quantile of its smoothed out-of-sample prefix scores
   (``folds`` contiguous folds; HST: the prefix's second window scored against the first).
4. A row is flagged by a detector whose smoothed score exceeds its threshold, and
   alerted when ``k`` detectors flag it. HST and Mahalanobis then learn the rows they
   did not flag (score before learn); the autoencoder stays as fitted.

Results do not depend on how rows are split into batches: features and smoothing sum the
same values in the same order, the autoencoder multiplies column by column, Mahalanobis
goes row by row and Half-Space Trees score a batch at once up to their next window pivot
(their scores only change there). Rows must be finite: impute before.

>>> rng = np.random.default_rng(1)
>>> ens = PumpEnsemble(EnsembleConfig(channels=("a", "b"), train_rows=100, epochs=50))
>>> x = rng.normal(size=(150, 2))
>>> x[130:] += 8.0
>>> out = ens.process(x)
>>> bool(out.training[:100].all()), int(out.votes[:100].sum()), bool(out.alerts[140:].all())
(True, 0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models._state import SnapshotState
from models.halfspace import HalfSpaceTrees
from models.pump_detectors import DenseAutoencoder, EWMahalanobis, prefix_drift, trailing_mean

__all__ = ["DETECTORS", "EnsembleConfig", "EnsembleScores", "PumpEnsemble"]

DETECTORS = ("hst", "mahalanobis", "autoencoder")
Floats = npt.NDArray[np.float64]
FEEDBACK_STEPS = {"false_positive": 1.1, "true_positive": 1 / 1.05}
FEEDBACK_BOUNDS = (0.5, 4.0)


@dataclass(frozen=True)
class EnsembleConfig:
    """Parameters of a :class:`PumpEnsemble` (how each was chosen: README, Pump section).

    Attributes:
        channels: Input fields, in column order.
        k: Votes needed (of ``len(DETECTORS)``).
        train_rows: First rows of each sensor: the training prefix, without verdicts.
        window: Causal trailing-mean feature window.
        smooth: Trailing mean of each detector's raw score.
        q: Threshold quantile of out-of-sample prefix scores.
        seed: Autoencoder seed; Half-Space Trees use ``seed + 42``.
        max_drift: Channels whose prefix drift is above this are dropped (``inf``: none).
        folds: Contiguous prefix folds for the out-of-sample threshold scores.
        hst_trees: Half-Space Trees' tree count.
        hst_height: Half-Space Trees' height.
        hst_margin: Limits are the prefix range widened by this many ranges each side.
        epochs: Autoencoder training steps (full-batch Adam).
        autoencoder: ``"numpy"`` (per sensor, trained on the prefix); ``"tflite"`` (a
            shared label-free TFLite model) is reserved and refused until one is trained.
        tflite_model: Artifact name the ``"tflite"`` member would load.
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
    tflite_model: str = "pump_autoencoder_skab"

    def __post_init__(self) -> None:
        checks = (
            (len(self.channels) >= 1, "channels must name at least one field"),
            (1 <= self.k <= len(DETECTORS), f"k must be in 1..{len(DETECTORS)}"),
            (self.train_rows >= max(20, 2 * self.smooth, 2 * self.folds), "train_rows too small"),
            (self.window >= 1 and self.smooth >= 1, "window and smooth must be at least 1"),
            (0.0 < self.q <= 1.0, "q must be in (0, 1]"),
            (self.autoencoder == "numpy", "autoencoder: only 'numpy' is built (README, Pump)"),
        )  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass(frozen=True)
class EnsembleScores:
    """Per-row results of :meth:`PumpEnsemble.process` (columns in :data:`DETECTORS` order)."""

    scores: Floats
    thresholds: Floats
    flags: npt.NDArray[np.bool_]
    votes: npt.NDArray[np.int64]
    alerts: npt.NDArray[np.bool_]
    training: npt.NDArray[np.bool_]


class PumpEnsemble(SnapshotState):
    """One sensor's ensemble; see the module docstring.

    Args:
        config: The parameters.
    """

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config
        d = len(config.channels)
        self._seen = 0
        self._hist: Floats = np.full((config.window - 1, d), np.nan)
        self._prefix: Floats = np.zeros((0, d))
        self._fit: dict[str, Any] | None = None  # the trained state, once the prefix is in

    @property
    def model_version(self) -> str:
        """``pump-ensemble-1+ae:numpy`` (a TFLite member would put its SHA-256 here)."""
        return f"pump-ensemble-1+ae:{self.config.autoencoder}"

    @property
    def trained(self) -> bool:
        """Whether the training prefix is complete."""
        return self._fit is not None

    def process(self, X: npt.ArrayLike) -> EnsembleScores:
        """Score rows in time order (training rows get no verdict), then learn them."""
        cfg = self.config
        x = np.asarray(X, dtype=np.float64).reshape(-1, len(cfg.channels))
        if not np.isfinite(x).all():
            msg = "rows must be finite: impute missing values before the ensemble"
            raise ValueError(msg)
        n = len(x)
        feats = trailing_mean(self._hist, x, cfg.window) if n else x
        self._hist = np.concatenate([self._hist, x])[len(x) :]
        out_s, out_t = np.full((n, 3), np.nan), np.full((n, 3), np.nan)
        flags = np.zeros((n, 3), dtype=bool)
        training = np.zeros(n, dtype=bool)
        start = 0
        if self._fit is None:
            start = min(n, cfg.train_rows - self._seen)
            training[:start] = True
            self._prefix = np.concatenate([self._prefix, feats[:start]])
            if len(self._prefix) == cfg.train_rows:
                self._train(self._prefix)
                self._prefix = self._prefix[:0]
        self._seen += n
        if start < n and self._fit is not None:
            fit = self._fit
            z = (feats[start:][:, fit["keep"]] - fit["mu"]) / fit["sd"]
            thr = fit["base"] * fit["adjust"]
            out_t[start:] = thr
            cols = (self._run_hst(z, thr[0]), self._run_mahalanobis(z, thr[1]),
                    self._run_ae(z, thr[2]))  # fmt: skip
            for j, (sm, fl) in enumerate(cols):
                out_s[start:, j], flags[start:, j] = sm, fl
        votes = flags.sum(axis=1).astype(np.int64)
        return EnsembleScores(out_s, out_t, flags, votes, votes >= cfg.k, training)

    def feedback(self, label: str) -> None:
        """An operator's label of this sensor's last alert moves all its thresholds.

        ``"false_positive"`` multiplies them by 1.1, ``"true_positive"`` divides them by
        1.05; the factor stays within ``FEEDBACK_BOUNDS`` (0.5 to 4) of the fitted ones.

        Raises:
            ValueError: On another label.
        """
        if label not in FEEDBACK_STEPS:
            msg = f"label must be 'false_positive' or 'true_positive', got {label!r}"
            raise ValueError(msg)
        if self._fit is not None:
            adjust = self._fit["adjust"] * FEEDBACK_STEPS[label]
            self._fit["adjust"] = np.clip(adjust, *FEEDBACK_BOUNDS)

    def state(self) -> dict[str, Any]:
        """Compact state: config, counters, feature history, prefix or fitted detectors."""
        fit = None
        if self._fit is not None:
            fit = {**self._fit, "mahalanobis": self._fit["mahalanobis"].state(),
                   "ae": self._fit["ae"].state()}  # fmt: skip
        return {"params": (self.config,), "seen": self._seen, "hist": self._hist,
                "prefix": self._prefix, "fit": fit}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        self._seen, self._hist, self._prefix = state["seen"], state["hist"], state["prefix"]
        fit = state["fit"]
        if fit is not None:
            maha = EWMahalanobis.from_state(fit["mahalanobis"])
            self._fit = {**fit, "mahalanobis": maha, "ae": DenseAutoencoder.from_state(fit["ae"])}

    # -- training ------------------------------------------------------------------

    def _train(self, prefix: Floats) -> None:
        cfg = self.config
        drift = prefix_drift(prefix)
        keep = drift <= cfg.max_drift
        if not keep.any():
            keep = drift == drift.min()
        mu, sd = prefix[:, keep].mean(axis=0), prefix[:, keep].std(axis=0)
        sd[sd == 0] = 1.0
        z = (prefix[:, keep] - mu) / sd
        hst = self._new_hst(z)
        hst_prefix = hst.score_learn_many(z)
        maha = EWMahalanobis().fit(z)
        ae = DenseAutoencoder(cfg.seed, cfg.epochs).fit(z)
        self._fit = {"keep": keep, "mu": mu, "sd": sd, "drift": drift, "hst": hst,
                     "hst_learned": len(z), "mahalanobis": maha, "ae": ae}  # fmt: skip
        oos = [
            hst_prefix[hst.window_size :],
            self._folds(z, lambda part: EWMahalanobis().fit(part)),
            self._folds(z, lambda part: DenseAutoencoder(cfg.seed, cfg.epochs).fit(part)),
        ]
        base = [np.quantile(self._smoothed(np.full(cfg.smooth - 1, np.nan), s), cfg.q)
                for s in oos]  # fmt: skip
        tails = [hst_prefix, maha.score_many(z), ae.score_many(z)]
        self._fit.update(base=np.array(base), adjust=np.ones(3),
                         buf=np.array([t[len(t) - cfg.smooth + 1 :] for t in tails]))  # fmt: skip

    def _new_hst(self, z: Floats) -> HalfSpaceTrees:
        cfg = self.config
        lo, hi = z.min(axis=0), z.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0) * cfg.hst_margin
        names = [f"f{j}" for j in range(z.shape[1])]
        limits = {
            n: (float(a - s), float(b + s)) for n, a, b, s in zip(names, lo, hi, span, strict=True)
        }
        return HalfSpaceTrees(n_trees=cfg.hst_trees, height=cfg.hst_height,
                              window_size=cfg.train_rows // 2, limits=limits,
                              seed=cfg.seed + 42, features=names)  # fmt: skip

    def _folds(self, z: Floats, fit: Any) -> Floats:
        """Scores of each contiguous fold by a model fitted on the other folds."""
        edges = np.linspace(0, len(z), self.config.folds + 1).astype(int)
        parts = [fit(np.delete(z, np.s_[a:b], axis=0)).score_many(z[a:b])
                 for a, b in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip
        return np.concatenate(parts)

    def _smoothed(self, buf: Floats, raw: Floats) -> Floats:
        out: Floats = trailing_mean(buf[:, None], raw[:, None], self.config.smooth)[:, 0]
        return out

    # -- scoring -------------------------------------------------------------------

    def _ae_raw(self, z: Floats) -> Floats:
        fit = self._fit
        assert fit is not None
        out: Floats = fit["ae"].score_many(z)
        return out

    def _stream(self, j: int, raw: Floats, thr: float) -> tuple[Floats, npt.NDArray[np.bool_]]:
        """Smoothed scores and flags of detector ``j``'s raw scores; its buffer moves on."""
        fit = self._fit
        assert fit is not None
        sm = self._smoothed(fit["buf"][j], raw)
        tail = np.concatenate([fit["buf"][j], raw])[len(raw) :]
        fit["buf"] = np.vstack([fit["buf"][:j], tail[None], fit["buf"][j + 1 :]])
        return sm, sm > thr

    def _run_ae(self, z: Floats, thr: float) -> tuple[Floats, Any]:
        return self._stream(2, self._ae_raw(z), thr)

    def _run_mahalanobis(self, z: Floats, thr: float) -> tuple[Floats, Any]:
        fit = self._fit
        assert fit is not None
        maha: EWMahalanobis = fit["mahalanobis"]
        sm, flags = np.empty(len(z)), np.zeros(len(z), dtype=bool)
        for i, row in enumerate(z):
            s, f = self._stream(1, np.array([maha.score_one(row)]), thr)
            sm[i], flags[i] = s[0], f[0]
            if not f[0]:
                maha.learn(row)
        return sm, flags

    def _run_hst(self, z: Floats, thr: float) -> tuple[Floats, Any]:
        """Score up to the next window pivot at once, learn the unflagged rows, repeat."""
        fit = self._fit
        assert fit is not None
        hst: HalfSpaceTrees = fit["hst"]
        sm, flags = np.empty(len(z)), np.zeros(len(z), dtype=bool)
        pos = 0
        while pos < len(z):
            raw = hst.score_many(z[pos:])
            buf = fit["buf"][0].copy()
            s, f = self._stream(0, raw, thr)
            learn = np.flatnonzero(~f)
            to_pivot = hst.window_size - fit["hst_learned"] % hst.window_size
            end = len(raw) if len(learn) < to_pivot else int(learn[to_pivot - 1]) + 1
            learn = learn[learn < end]
            if end < len(raw):  # rows after the pivot are scored again
                fit["buf"][0] = np.concatenate([buf, raw[:end]])[end:]
            if len(learn):
                hst.learn_many(z[pos + learn])
                fit["hst_learned"] += len(learn)
            sm[pos : pos + end], flags[pos : pos + end] = s[:end], f[:end]
            pos += end
        return sm, flags
