"""Score readings with an online detector, per key, score before learn.

The operator is keyed: key the stream by sensor id for one model per sensor (what a fleet
needs), or by one constant for a single *fleet* model across sensors (for cross-sectional
snapshots). Each key's model lives in a :class:`~bytewax.operators.StatefulBatchLogic`
that scores a whole batch at once with the model's vectorised ``score_learn_many`` and
snapshots compact bytes — never ``op.stateful_map``, which deep-copies every epoch.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol

import bytewax.operators as op
import numpy as np
import numpy.typing as npt
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.keyed import IdleEvictingLogic
from operators.records import Reading, Scored

__all__ = ["BatchDetector", "features_matrix", "score"]


class BatchDetector(Protocol):
    """What the scoring operator needs of a model (a plain numpy object)."""

    def score_learn_many(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Score each row, then learn it, in order; return the scores."""
        ...


def features_matrix(readings: Sequence[Reading], features: Sequence[str]) -> np.ndarray:
    """Stack the named fields of readings into a float64 matrix (``NaN`` where missing).

    >>> from datetime import datetime, timezone
    >>> ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> features_matrix([Reading("s", ts, {"a": 1.0, "b": None}, "x")], ["a", "b", "c"])
    array([[ 1., nan, nan]])
    """
    if len(features) == 1:
        name = features[0]
        col = np.array([r.values.get(name) for r in readings], dtype=np.float64)
        return col.reshape(-1, 1)
    return np.array(
        [[r.values.get(name) for name in features] for r in readings], dtype=np.float64
    ).reshape(len(readings), len(features))


class _ScoreLogic(IdleEvictingLogic[Reading, Scored, bytes]):
    def __init__(
        self,
        detector: str,
        features: tuple[str, ...],
        model: BatchDetector,
        idle_timeout: timedelta | None,
        observe_seconds: Callable[[float], None] | None,
    ) -> None:
        super().__init__(idle_timeout)
        self._detector = detector
        self._features = features
        self._model = model
        self._observe = observe_seconds

    def process(self, values: list[Reading]) -> list[Scored]:
        x = features_matrix(values, self._features)
        t0 = time.perf_counter()
        scores = self._model.score_learn_many(x)
        if self._observe is not None:
            self._observe(time.perf_counter() - t0)
        return [Scored(tuple(values), self._detector, scores)]

    def snapshot(self) -> bytes:
        return pickle.dumps(self._model, protocol=pickle.HIGHEST_PROTOCOL)


@operator
def score(
    step_id: str,
    up: KeyedStream[Reading],
    detector: str,
    features: Sequence[str],
    new_model: Callable[[], BatchDetector],
    idle_timeout: timedelta | None = timedelta(hours=24),
    observe_seconds: Callable[[float], None] | None = None,
    restore_model: Callable[[bytes], BatchDetector] | None = None,
) -> KeyedStream[Scored]:
    """Score each key's readings with its own model, score before learn.

    Args:
        step_id: Unique ID.
        up: Readings keyed by sensor id (per-sensor models) or one constant (fleet model).
        detector: Name recorded on every :class:`Scored`, e.g. ``"hst"``.
        features: The reading fields fed to the model, in column order.
        new_model: Builds a fresh model for a key seen for the first time.
        idle_timeout: Drop a key's model after this much wall time without readings.
        observe_seconds: Called with the wall time of every model call (one key's batch),
            e.g. an inference-time histogram's ``observe``.
        restore_model: Rebuilds a key's model from its snapshot bytes (default: unpickle).

    Returns:
        One :class:`Scored` batch per key and Bytewax batch, keyed like ``up``.
    """
    names = tuple(features)

    def build(resume: bytes | None) -> _ScoreLogic:
        if resume is None:
            model = new_model()
        elif restore_model is not None:
            model = restore_model(resume)
        else:
            model = pickle.loads(resume)  # noqa: S301
        return _ScoreLogic(detector, names, model, idle_timeout, observe_seconds)

    return op.stateful_batch("score", up, build)
