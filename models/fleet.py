"""Fleet learning from summaries: summarise a model, merge a group's, compare, apply.

Three kinds of :class:`~models.summaries.Summary`, each merged exactly or within a stated
error, associatively and in any order:

- ``"hst"``: the reference masses of a :class:`~models.halfspace.HalfSpaceTrees` (its last
  window's, zero below light nodes) as ``uint32``, summed per level bucket of the windows
  (:mod:`models.fleet_hst`), ``meta["windows"]`` windows in all. Models with the same
  parameters and seed build the same trees, so node ``i`` is the same half-space in every
  one; the parameters are in ``meta`` and their fingerprint must match. A merge is the
  exact sum of the masses and windows, bucket by bucket. :func:`hst_prior` gives a new
  sensor the *average window* of the fleet's windows near its level (masses
  ``rint(sum / windows)``, on the scale of one window of ``window_size`` rows, so its
  scores mean what its own would). It scores from its first row and keeps learning.
- ``"mahalanobis"``: count, mean and upper triangle of the co-moment of an
  :class:`~models.mahalanobis.OnlineMahalanobis`, merged with its exact Chan formula
  (to rounding). :func:`mahalanobis_prior` restores the merged model.
- ``"sketch"``: a KLL sketch (:mod:`models.sketch`) of a detector's normal scores (an
  :class:`~models.thresholds.AdaptiveThreshold`'s sensor-wide window), merged by
  DataSketches; :func:`threshold_prior` starts a threshold at the fleet's quantile.

:func:`drift` measures how far a node's summary is from the fleet's: 0 when equal,
growing with the shift (see its docstring for the distance of each kind).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt

from models import sketch
from models.fleet_hst import (
    LevelPrior,
    bucket_of,
    hst_arrays,
    hst_distribution,
    hst_merge,
    level_edges,
)
from models.halfspace import HalfSpaceTrees
from models.mahalanobis import OnlineMahalanobis
from models.pump_fleet import pump_merge
from models.summaries import (
    MALFORMED,
    MISMATCH,
    WRONG_GROUP,
    WRONG_KIND,
    WRONG_VERSION,
    Summary,
    SummaryError,
    fingerprint,
)
from models.thresholds import AdaptiveThreshold

__all__ = ["drift", "hst_prior", "mahalanobis_prior", "merge", "summarise", "threshold_prior"]

Model = HalfSpaceTrees | OnlineMahalanobis | AdaptiveThreshold
_COUNTS = ("windows", "size", "buckets", "pumps", "pairs")  # meta that is data, not parameters


def summarise(
    model: Model | npt.ArrayLike,
    *,
    flow: str,
    node: str,
    group: str,
    model_version: str = "",
    created_at: datetime | None = None,
    k: int = sketch.DEFAULT_K,
    level: float = math.nan,
) -> Summary:
    """The summary of an HST, a Mahalanobis model, or a sketch of scores.

    An HST's last window goes to the bucket of ``level`` (the window's median of its first
    feature; NaN, unknown: bucket 0). Scores are a threshold's sensor-wide window, or an
    array; ``k`` sizes their sketch.

    Raises:
        ValueError: An HST without a seed, its features or a finished window.
    """
    if isinstance(model, HalfSpaceTrees):
        kind, count, params, arrays = _hst_part(model, level)
    elif isinstance(model, OnlineMahalanobis):
        state = model.state()
        _, shrinkage, ridge, min_samples = state["params"]
        kind, count = "mahalanobis", state["count"]
        params = {"d": state["d"], "shrinkage": shrinkage, "ridge": ridge,
                  "min_samples": min_samples}  # fmt: skip
        arrays = {"mean": state["mean"], "m2": state["m2"]}
    else:
        scores = _scores(model) if isinstance(model, AdaptiveThreshold) else model
        part = sketch.sketch_of(scores, k)
        kind, count, params = "sketch", int(part.n), {"k": k}
        arrays = {"sketch": np.frombuffer(part.serialize(), dtype=np.uint8)}
    return _summary(kind, count, params, arrays, flow, node, group, model_version, created_at)


def merge(parts: Sequence[Summary]) -> Summary:
    """The fleet summary of ``parts``: one kind, flow, group, version and fingerprint.

    Node ``"*"``, ``count`` their sum, ``created_at`` their latest.

    Raises:
        SummaryError: ``wrong_kind``, ``wrong_group``, ``wrong_version`` or ``mismatch``
            (flow, or parameters), naming the first field that differs.
    """
    if not parts:
        msg = "merge needs at least one summary"
        raise ValueError(msg)
    first = parts[0]
    for field, reason in (("kind", WRONG_KIND), ("group", WRONG_GROUP),
                          ("model_version", WRONG_VERSION), ("flow", MISMATCH),
                          ("fingerprint", MISMATCH)):  # fmt: skip
        values = {getattr(part, field) for part in parts}
        if len(values) > 1:
            msg = f"cannot merge summaries of different {field}: {sorted(values)}"
            raise SummaryError(reason, msg)
    params = _params(first)
    if any(fingerprint(part.kind, _params(part)) != first.fingerprint for part in parts):
        msg = "a summary's parameters differ from its fingerprint"
        raise SummaryError(MISMATCH, msg)
    if first.kind == "hst":
        arrays = hst_merge(parts)
        params["windows"] = sum(int(part.meta["windows"]) for part in parts)
        params["buckets"] = len(arrays["buckets"])
    elif first.kind == "mahalanobis":
        state = OnlineMahalanobis.merged(*(_mahalanobis(part) for part in parts)).state()
        arrays = {"mean": state["mean"], "m2": state["m2"]}
    elif first.kind == "pump":
        arrays, counts = pump_merge(parts)
        params.update(counts)
    else:
        pooled = sketch.merged((_sketch(part) for part in parts), params["k"])
        arrays = {"sketch": np.frombuffer(pooled.serialize(), dtype=np.uint8)}
    count = sum(part.count for part in parts)
    return _summary(first.kind, count, params, arrays, first.flow, "*", first.group,
                    first.model_version, max(part.created_at for part in parts))  # fmt: skip


def drift(node: Summary, fleet: Summary) -> float:
    """How far ``node``'s summary is from ``fleet``'s; 0 when equal, symmetric.

    - ``hst``: Jensen-Shannon divergence (base 2, in ``[0, 1]``) of the mass distributions
      (masses over all level buckets and nodes, normalised to sum 1), which ignores how
      many windows each summarises.
    - ``mahalanobis``: Bhattacharyya distance of the Gaussians with the models' means and
      (shrunk) covariances: ``(m1-m2)' C^-1 (m1-m2) / 8 + ln(det C / sqrt(det C1 det C2))
      / 2`` with ``C = (C1 + C2) / 2``; needs 2 rows in each.
    - ``sketch``: Kolmogorov-Smirnov distance of the CDFs (:func:`models.sketch.ks_distance`),
      in ``[0, 1]``.

    Raises:
        SummaryError: ``wrong_kind`` or ``mismatch`` if the two cannot be compared.
    """
    if node.kind != fleet.kind or node.fingerprint != fleet.fingerprint:
        reason = WRONG_KIND if node.kind != fleet.kind else MISMATCH
        msg = f"cannot compare {node.kind} {node.fingerprint} with {fleet.kind} {fleet.fingerprint}"
        raise SummaryError(reason, msg)
    if node.kind == "hst":
        buckets = np.union1d(node.arrays["buckets"], fleet.arrays["buckets"])
        p, q = (hst_distribution(s, buckets) for s in (node, fleet))
        m = (p + q) / 2
        return float(sum(np.sum(a[a > 0] * np.log2(a[a > 0] / m[a > 0])) for a in (p, q)) / 2)
    if node.kind in {"mahalanobis", "pump"}:
        a, b = _mahalanobis(node), _mahalanobis(fleet)
        ca, cb = a.covariance(), b.covariance()
        c = (ca + cb) / 2
        delta = a.mean - b.mean
        logdets = [np.linalg.slogdet(x)[1] for x in (c, ca, cb)]
        return float(delta @ np.linalg.solve(c, delta) / 8
                     + (logdets[0] - (logdets[1] + logdets[2]) / 2) / 2)  # fmt: skip
    return sketch.ks_distance(_sketch(node), _sketch(fleet))


def hst_prior(fleet: Summary, level: float | None = None, gain: float = 1.0) -> HalfSpaceTrees:
    """A new sensor's HST, scoring from its first row with the fleet's average window.

    Reference masses are ``rint(gain * sum / windows)`` over the level buckets next to
    ``level``'s (all of them: ``None``; see :class:`models.fleet_hst.LevelPrior`): one
    window's worth, so scores are on the scale of the sensor's own. Its first
    ``window_size`` rows then replace them.
    """
    return LevelPrior(_kind(fleet, "hst"), gain).model(level)


def mahalanobis_prior(fleet: Summary, max_count: int | None = None) -> OnlineMahalanobis:
    """The model that learned the fleet's rows, so ready at once and learning on.

    With ``max_count``, it weighs as ``max_count`` rows at most (same mean and covariance),
    so that a sensor's own rows soon outweigh the fleet's.
    """
    model = _mahalanobis(_kind(fleet, "mahalanobis"))
    if max_count is not None and model.count > max_count:
        state = model.state()
        scale = (max_count - 1) / (model.count - 1)  # keeps M2 / (n - 1)
        model = OnlineMahalanobis.from_state({**state, "count": max_count,
                                              "m2": state["m2"] * scale})  # fmt: skip
    return model


def threshold_prior(fleet: Summary, q: float = 0.99, **kwargs: Any) -> AdaptiveThreshold:
    """An :class:`AdaptiveThreshold` of quantile ``q`` whose ``initial`` is the fleet's.

    It alerts from the first score and learns its own quantile after ``min_count``.
    Other keyword arguments go to :class:`AdaptiveThreshold`.
    """
    quantile = float(_sketch(_kind(fleet, "sketch")).get_quantile(q))
    initial = quantile if math.isfinite(quantile) and quantile > 0 else math.inf
    return AdaptiveThreshold(q=q, initial=initial, **kwargs)


_Part = tuple[str, int, dict[str, Any], dict[str, Any]]


def _hst_part(model: HalfSpaceTrees, level: float) -> _Part:
    masses = model.reference_masses()
    if model.seed is None or model.features is None or masses is None:
        msg = "an HST summary needs a seed, the features and a finished window"
        raise ValueError(msg)
    given = dict(model.limits or {})
    limits = {name: list(given.get(name, (0.0, 1.0))) for name in model.features}
    edges = list(level_edges(limits[model.features[0]]))
    params: dict[str, Any] = {"n_trees": model.n_trees, "height": model.height, "seed": model.seed,
              "window_size": model.window_size, "features": list(model.features),
              "limits": limits, "level_edges": edges, "windows": 1, "buckets": 1}  # fmt: skip
    arrays = hst_arrays(masses, bucket_of(level, edges))
    return "hst", model.window_size, params, arrays


def _scores(threshold: AdaptiveThreshold) -> npt.NDArray[np.float32]:
    """The sensor-wide window of normal scores a threshold keeps."""
    state = threshold.state()
    return np.frombuffer(state["scores"], dtype=np.float32)[: state["sizes"][0]]


def _summary(kind: str, count: int, meta: dict[str, Any], arrays: dict[str, Any],
             flow: str, node: str, group: str, version: str,
             created_at: datetime | None) -> Summary:  # fmt: skip
    if kind == "sketch":
        meta = {**meta, "size": len(arrays["sketch"])}
    params = {k: v for k, v in meta.items() if k not in _COUNTS}
    stamp = created_at or datetime.now(timezone.utc).replace(microsecond=0)
    return Summary(kind, flow, node, group, version, fingerprint(kind, params), int(count),
                   stamp, meta, arrays)  # fmt: skip


def _params(summary: Summary) -> dict[str, Any]:
    return {k: v for k, v in summary.meta.items() if k not in _COUNTS}


def _kind(summary: Summary, kind: str) -> Summary:
    if summary.kind != kind:
        msg = f"expected a {kind} summary, got {summary.kind}"
        raise SummaryError(WRONG_KIND, msg)
    return summary


def _mahalanobis(summary: Summary) -> OnlineMahalanobis:
    meta = summary.meta
    return OnlineMahalanobis.from_state({
        "params": (meta["d"], meta["shrinkage"], meta["ridge"], meta["min_samples"]),
        "d": meta["d"], "count": summary.count,
        "mean": summary.arrays["mean"], "m2": summary.arrays["m2"]})  # fmt: skip


def _sketch(summary: Summary) -> sketch.Sketch:
    try:
        return sketch.from_bytes(summary.arrays["sketch"].tobytes())
    except ValueError as error:
        msg = str(error)
        raise SummaryError(MALFORMED, msg) from error
