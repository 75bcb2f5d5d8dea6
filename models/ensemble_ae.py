"""The pump ensemble's TFLite autoencoder member and the rows it is pretrained on.

The ensemble (:mod:`models.ensemble`) standardises each sensor's features (trailing means
of its channels) by the mean and standard deviation of its own training prefix. A model
pretrained for every pump therefore learns in that standardised space, from *virtual
sensors*: :func:`virtual_sensors` cuts a long normal recording (SKAB's anomaly-free run)
into overlapping stretches as long as a scored run, and standardises each by its own
first ``prefix`` rows, exactly as a pump is standardised by its prefix. Rows a stretch
has after its prefix show what a normal pump looks like once it has drifted from the
level its prefix set.

:class:`TFLiteAutoencoder` is one pump's member: the shipped model (pretrained that way
by ``edgewatch train pump-ensemble-ae``, :mod:`models.trainable_ae`) *fine-tuned on the
pump's own prefix by the TFLite interpreter* (its ``train`` signature: full-batch Adam
steps), then scoring rows by its ``infer`` signature: the squared reconstruction error of
each row, summed over its features, as :class:`~models.pump_detectors.DenseAutoencoder`
does. One interpreter per model file and process (SHA-256 checked on load) serves every
pump: a pump's fine-tuned weights (98 floats for six features) are restored into it
before it scores; they are all a member pickles, with the model's path.

>>> x = np.arange(20.0).reshape(-1, 1)
>>> parts = virtual_sensors(x, prefix=4, length=6, step=7)  # starts 0, 7, 14
>>> len(parts), parts[1].round(2).ravel().tolist()
(3, [-1.34, -0.45, 0.45, 1.34, 2.24, 3.13])
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.runtime import ARTIFACTS, ModelMetadata, TFLiteModel
from models.trainable_ae import SIGNATURES

__all__ = ["ENSEMBLE_AE", "TFLiteAutoencoder", "standardise", "virtual_sensors"]

ENSEMBLE_AE = "pump_ensemble_ae"
"""The shipped member's artifact name (``models/artifacts/pump_ensemble_ae.tflite``)."""

Floats = npt.NDArray[np.float64]
Params = dict[str, npt.NDArray[np.float32]]


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


class _Trainer:
    """One interpreter of a trainable model: its signatures, shipped weights and a lock."""

    def __init__(self, path: Path) -> None:
        it = TFLiteModel.load(path).interpreter
        missing = sorted(set(SIGNATURES) - set(it.get_signature_list()))
        if missing:
            msg = (f"{path} has no {', '.join(missing)} signature: it cannot be fine-tuned; "
                   "retrain it with edgewatch train pump-ensemble-ae")  # fmt: skip
            raise ValueError(msg)
        self.run = {name: it.get_signature_runner(name) for name in SIGNATURES}
        self.lock = threading.Lock()
        self.shipped: Params = {k: np.array(v) for k, v in self.run["save"]().items()}
        self.loaded: object = None  # whose weights the variables hold

    def load(self, owner: object, params: Params) -> None:
        """Put ``params`` into the variables unless ``owner``'s already are (hold the lock)."""
        if self.loaded is not owner:
            self.run["restore"](**params)
            self.loaded = owner


_TRAINERS: dict[str, _Trainer] = {}
_TRAINERS_LOCK = threading.Lock()


def _trainer(path: Path) -> _Trainer:
    key = str(path.resolve())
    with _TRAINERS_LOCK:
        if key not in _TRAINERS:
            _TRAINERS[key] = _Trainer(path)
        return _TRAINERS[key]


class TFLiteAutoencoder:
    """One pump's TFLite autoencoder: the shipped model fine-tuned on the pump's rows.

    Args:
        model: A shipped artifact's name or a ``.tflite`` path with the
            :data:`~models.trainable_ae.SIGNATURES` (``edgewatch train pump-ensemble-ae``).
        steps: Full-batch Adam steps of :meth:`fit`; 0 keeps the shipped weights.
        lr: Adam learning rate.
        l2: Weight decay on the weights.
    """

    def __init__(
        self, model: str | Path = ENSEMBLE_AE, steps: int = 600, lr: float = 3e-3,
        l2: float = 1e-4,
    ) -> None:  # fmt: skip
        self.path = _resolve(model)
        self.steps, self.lr, self.l2 = steps, lr, l2
        self.params: Params | None = None  # None: the shipped weights
        self._runner: _Trainer | None = None  # looked up once, never pickled

    @property
    def _trainer(self) -> _Trainer:
        if self._runner is None:
            self._runner = _trainer(self.path)
        return self._runner

    @staticmethod
    def metadata(model: str | Path = ENSEMBLE_AE) -> ModelMetadata:
        """The model's metadata JSON, read without loading the model."""
        return ModelMetadata.read(_resolve(model).with_suffix(".json"))

    def fit(self, z: Floats) -> TFLiteAutoencoder:
        """Fine-tune the shipped weights on the rows ``z`` in the interpreter; returns self."""
        if not self.steps:
            self.params = None
            return self
        t = self._trainer
        x = np.ascontiguousarray(z, dtype=np.float32)
        lr, l2 = np.float32(self.lr), np.float32(self.l2)
        with t.lock:
            t.run["restore"](**t.shipped)
            for _ in range(self.steps):
                t.run["train"](x=x, lr=lr, l2=l2)
            self.params = {k: np.array(v) for k, v in t.run["save"]().items()}
            t.loaded = self
        return self

    def score_many(self, z: Floats) -> Floats:
        """Squared reconstruction error of each row, summed over the features."""
        x = np.ascontiguousarray(z, dtype=np.float32)
        if not len(x):
            return np.zeros(0)
        t = self._trainer
        with t.lock:
            t.load(self, t.shipped if self.params is None else self.params)
            rec = t.run["infer"](x=x)["rec"]
        out: Floats = ((rec.astype(np.float64) - x.astype(np.float64)) ** 2).sum(axis=1)
        return out

    def state(self) -> dict[str, Any]:
        """The model's path, the training settings and the fine-tuned weights."""
        return {"path": str(self.path), "steps": self.steps, "lr": self.lr, "l2": self.l2,
                "params": self.params}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TFLiteAutoencoder:
        """The member :meth:`state` describes."""
        ae = cls(state["path"], state["steps"], state["lr"], state["l2"])
        ae.params = state["params"]
        return ae
