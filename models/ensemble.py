"""One pump's streaming k-of-n ensemble: Half-Space Trees, Mahalanobis, autoencoder.

Per sensor, in time order (SKAB's protocol, and the recipe of the valve1 study in the
README's "Pump: SKAB valve1" section):

1. Features: the causal trailing mean over ``window`` rows of each channel.
2. The first ``train_rows`` rows are a training prefix and get no verdicts. When it is
   complete, channels whose prefix drift (:func:`models.pump_detectors.prefix_drift`)
   exceeds ``max_drift`` are dropped (at least one is kept), the rest are standardised by
   the prefix's mean and standard deviation, and the three detectors are fitted:
   Half-Space Trees (limits: prefix range widened by ``hst_margin`` ranges each side,
   window ``train_rows // 2``), :class:`~models.pump_detectors.EWMahalanobis` and an
   autoencoder: :class:`~models.pump_detectors.DenseAutoencoder` trained on the prefix
   (``autoencoder="numpy"``) or the shipped label-free TFLite model of
   :mod:`models.ensemble_ae` fine-tuned on the prefix by the interpreter (``"tflite"``).
3. Each detector's raw score is smoothed by a trailing mean over ``smooth`` rows; its
   base threshold is the ``q`` quantile of its smoothed out-of-sample prefix scores
   (``folds`` contiguous folds; HST: the prefix's second window scored against the
   first). ``threshold`` keeps the base
   (``"prefix"``), adapts it per context (``"adaptive"``) or scales it by fixed context
   factors (``"fixed"``): :mod:`models.ensemble_thresholds`.
4. A row is flagged by a detector whose smoothed score exceeds its threshold, and
   alerted when ``k`` detectors flag it. HST and Mahalanobis then learn the rows they
   did not flag (score before learn); the autoencoder stays as fitted.

Results do not depend on how rows are split into batches: features and smoothing sum the
same values in the same order, the numpy autoencoder multiplies column by column (the
TFLite one's rows do not depend on the batch either),
Mahalanobis and adaptive thresholds go row by row and Half-Space Trees score a batch at
once up to their next window pivot (their scores only change there). Rows must be
finite: impute before.

>>> rng = np.random.default_rng(1)
>>> ens = PumpEnsemble(EnsembleConfig(channels=("a", "b"), train_rows=100, epochs=50))
>>> x = rng.normal(size=(150, 2))
>>> x[130:] += 8.0
>>> out = ens.process(x)
>>> bool(out.training[:100].all()), int(out.votes[:100].sum()), bool(out.alerts[140:].all())
(True, 0, True)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models._state import SnapshotState
from models.ensemble_ae import TFLiteAutoencoder
from models.ensemble_config import DETECTORS, EnsembleConfig, check_member
from models.ensemble_thresholds import EnsembleThresholds
from models.halfspace import HalfSpaceTrees
from models.pump_detectors import DenseAutoencoder, EWMahalanobis, prefix_drift, trailing_mean

__all__ = ["DETECTORS", "EnsembleConfig", "EnsembleScores", "PumpEnsemble", "check_member"]

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class EnsembleScores:
    """Per-row results of :meth:`PumpEnsemble.process` (columns in :data:`DETECTORS` order)."""

    scores: Floats
    thresholds: Floats
    flags: Bools
    votes: npt.NDArray[np.int64]
    alerts: Bools
    training: Bools


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
        self._prefix_ctx: list[Hashable] = []
        self._fit: dict[str, Any] | None = None  # the trained state, once the prefix is in

    @property
    def model_version(self) -> str:
        """``pump-ensemble-1+ae:tflite:<SHA-256, 12 digits>:ft<steps>`` or ``…+ae:numpy``."""
        cfg = self.config
        if cfg.autoencoder == "numpy":
            return "pump-ensemble-1+ae:numpy"
        sha = TFLiteAutoencoder.metadata(cfg.tflite_model).sha256[:12]
        return f"pump-ensemble-1+ae:tflite:{sha}:ft{cfg.epochs}"

    @property
    def trained(self) -> bool:
        """Whether the training prefix is complete."""
        return self._fit is not None

    def process(
        self, X: npt.ArrayLike, contexts: Sequence[Hashable] | None = None
    ) -> EnsembleScores:
        """Score rows in time order (training rows get no verdict), then learn them.

        Args:
            X: ``(n, len(channels))`` finite rows.
            contexts: Each row's threshold context (``models.thresholds.context_key``);
                ``None``: one context for all. Only adaptive and fixed thresholds read it.
        """
        cfg = self.config
        x = np.asarray(X, dtype=np.float64).reshape(-1, len(cfg.channels))
        if not np.isfinite(x).all():
            msg = "rows must be finite: impute missing values before the ensemble"
            raise ValueError(msg)
        n = len(x)
        ctx: list[Hashable] = [()] * n if contexts is None else list(contexts)
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
            self._prefix_ctx += ctx[:start]
            if len(self._prefix) == cfg.train_rows:
                self._train(self._prefix, self._prefix_ctx)
                self._prefix, self._prefix_ctx = self._prefix[:0], []
        self._seen += n
        if start < n and self._fit is not None:
            fit = self._fit
            z = (feats[start:][:, fit["keep"]] - fit["mu"]) / fit["sd"]
            rest = ctx[start:]
            cols = (self._run_hst(z, rest), self._run_mahalanobis(z, rest),
                    self._stream(2, fit["ae"].score_many(z), rest))  # fmt: skip
            for j, (sm, thr, fl) in enumerate(cols):
                out_s[start:, j], out_t[start:, j], flags[start:, j] = sm, thr, fl
        votes = flags.sum(axis=1).astype(np.int64)
        return EnsembleScores(out_s, out_t, flags, votes, votes >= cfg.k, training)

    def feedback(self, label: str) -> None:
        """An operator's label of this sensor's last alert moves all its thresholds.

        ``"false_positive"`` multiplies them by 1.1, ``"true_positive"`` divides them by
        1.05; the factor stays within 0.5 to 4 of the fitted ones, in every context.

        Raises:
            ValueError: On another label.
        """
        if self._fit is not None:
            self._fit["thresholds"].feedback(label)
        elif label not in {"false_positive", "true_positive"}:
            msg = f"label must be 'false_positive' or 'true_positive', got {label!r}"
            raise ValueError(msg)

    def state(self) -> dict[str, Any]:
        """Compact state: config, counters, feature history, prefix or fitted detectors."""
        fit = None
        if self._fit is not None:
            fit = {**self._fit, "mahalanobis": self._fit["mahalanobis"].state(),
                   "ae": self._fit["ae"].state(),
                   "thresholds": self._fit["thresholds"].state()}  # fmt: skip
        return {"params": (self.config,), "seen": self._seen, "hist": self._hist,
                "prefix": self._prefix, "prefix_ctx": self._prefix_ctx, "fit": fit}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        self._seen, self._hist, self._prefix = state["seen"], state["hist"], state["prefix"]
        self._prefix_ctx = list(state["prefix_ctx"])
        fit = state["fit"]
        if fit is not None:
            ae_class = (
                TFLiteAutoencoder if self.config.autoencoder == "tflite" else DenseAutoencoder
            )
            maha = EWMahalanobis.from_state(fit["mahalanobis"])
            thresholds = EnsembleThresholds.from_state(fit["thresholds"])
            self._fit = {**fit, "mahalanobis": maha, "ae": ae_class.from_state(fit["ae"]),
                         "thresholds": thresholds}  # fmt: skip

    # -- training ------------------------------------------------------------------

    def _train(self, prefix: Floats, contexts: list[Hashable]) -> None:
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
        ae, ae_oos, ae_prefix = self._fit_ae(z)
        oos = [hst_prefix[hst.window_size :], self._folds(z, lambda p: EWMahalanobis().fit(p)),
               ae_oos]  # fmt: skip
        smoothed = [self._smoothed(np.full(cfg.smooth - 1, np.nan), s) for s in oos]
        thresholds = EnsembleThresholds(cfg.threshold, cfg.q, cfg.threshold_window,
                                        cfg.threshold_min_count, cfg.threshold_factors)  # fmt: skip
        thresholds.fit(np.array([np.quantile(s, cfg.q) for s in smoothed]), smoothed,
                       [contexts[hst.window_size :], contexts, contexts])  # fmt: skip
        tails = [hst_prefix, maha.score_many(z), ae_prefix]
        self._fit = {"keep": keep, "mu": mu, "sd": sd, "drift": drift, "hst": hst,
                     "hst_learned": len(z), "mahalanobis": maha, "ae": ae,
                     "thresholds": thresholds,
                     "buf": np.array([t[len(t) - cfg.smooth + 1 :] for t in tails])}  # fmt: skip

    def _fit_ae(self, z: Floats) -> tuple[Any, Floats, Floats]:
        """The autoencoder, its out-of-sample and its in-sample prefix scores.

        Out of sample: each fold scored by a model trained on the other folds; the
        shipped TFLite weights without fine-tuning never saw this prefix at all.
        """
        cfg = self.config

        def new() -> TFLiteAutoencoder | DenseAutoencoder:
            if cfg.autoencoder == "tflite":
                return TFLiteAutoencoder(cfg.tflite_model, cfg.epochs)
            return DenseAutoencoder(cfg.seed, cfg.epochs)

        ae = new().fit(z)
        inside = ae.score_many(z)
        tuned = cfg.autoencoder == "numpy" or cfg.epochs > 0
        oos = self._folds(z, lambda part: new().fit(part)) if tuned else inside
        return ae, oos, inside

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

    def _stream(
        self, j: int, raw: Floats, ctx: Sequence[Hashable], stop: int | None = None
    ) -> tuple[Floats, Floats, Bools]:
        """Smoothed scores, thresholds and flags of detector ``j``'s rows.

        Up to ``stop`` unflagged rows (see :meth:`EnsembleThresholds.judge`); the
        detector's smoothing buffer moves past the rows returned.
        """
        fit = self._fit
        assert fit is not None
        sm = self._smoothed(fit["buf"][j], raw)
        thr, flags = fit["thresholds"].judge(j, sm, ctx, stop)
        used = len(flags)
        tail = np.concatenate([fit["buf"][j], raw[:used]])[used:]
        fit["buf"] = np.vstack([fit["buf"][:j], tail[None], fit["buf"][j + 1 :]])
        return sm[:used], thr, flags

    def _run_mahalanobis(self, z: Floats, ctx: Sequence[Hashable]) -> tuple[Floats, Floats, Bools]:
        fit = self._fit
        assert fit is not None
        maha: EWMahalanobis = fit["mahalanobis"]
        sm, thr, flags = np.empty(len(z)), np.empty(len(z)), np.zeros(len(z), dtype=bool)
        for i, row in enumerate(z):
            s, t, f = self._stream(1, np.array([maha.score_one(row)]), ctx[i : i + 1])
            sm[i], thr[i], flags[i] = s[0], t[0], f[0]
            if not f[0]:
                maha.learn(row)
        return sm, thr, flags

    def _run_hst(self, z: Floats, ctx: Sequence[Hashable]) -> tuple[Floats, Floats, Bools]:
        """Score up to the next window pivot at once, learn the unflagged rows, repeat."""
        fit = self._fit
        assert fit is not None
        hst: HalfSpaceTrees = fit["hst"]
        sm, thr, flags = np.empty(len(z)), np.empty(len(z)), np.zeros(len(z), dtype=bool)
        pos = 0
        while pos < len(z):
            raw = hst.score_many(z[pos:])
            to_pivot = hst.window_size - fit["hst_learned"] % hst.window_size
            s, t, f = self._stream(0, raw, ctx[pos:], to_pivot)
            end = len(f)
            learn = np.flatnonzero(~f)
            if len(learn):
                hst.learn_many(z[pos + learn])
                fit["hst_learned"] += len(learn)
            sm[pos : pos + end], thr[pos : pos + end], flags[pos : pos + end] = s, t, f
            pos += end
        return sm, thr, flags
