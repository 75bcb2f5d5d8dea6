"""Decide which scores are anomalous: a fixed threshold on the score."""

from __future__ import annotations

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.records import Scored

__all__ = ["apply_threshold", "threshold"]


def apply_threshold(s: Scored, value: float) -> Scored:
    """Return ``s`` with thresholds set and ``flags = scores > value`` (vectorised).

    >>> from datetime import datetime, timezone
    >>> from operators.records import Reading
    >>> r = Reading("s", datetime(2024, 1, 1, tzinfo=timezone.utc), {}, "x")
    >>> apply_threshold(Scored((r, r), "hst", np.array([0.7, 0.71])), 0.7).flags.tolist()
    [False, True]
    """
    return Scored(s.readings, s.detector, s.scores, np.full(len(s), value), s.scores > value)


@operator
def threshold(step_id: str, up: KeyedStream[Scored], value: float = 0.7) -> KeyedStream[Scored]:
    """Mark scores above ``value`` as anomalies (the seed's ``score > 0.7`` by default).

    Args:
        step_id: Unique ID.
        up: Scored readings.
        value: Scores strictly above this are anomalies.

    Returns:
        The scored readings with ``threshold`` and ``is_anomaly`` set.
    """
    if not 0.0 <= value <= 1.0:
        msg = f"threshold must lie in [0, 1], got {value}"
        raise ValueError(msg)
    return op.map_value("apply", up, lambda s: apply_threshold(s, value))
