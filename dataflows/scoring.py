"""``edgewatch score``: score a file offline, one CSV row per input row, in input order.

It runs the same parse, impute and model code as the streaming flow, without the
streaming runtime, so the output keeps the input's order exactly. Each key (sensor, or
the whole file in fleet mode) is imputed and scored as one batch, score before learn.

Half-Space Trees need each feature's range. Configured limits are used where given (the
air-quality default knows ``pm1.0_cf_1``); any other feature's range is estimated from
the first ``LIMIT_ROWS`` readings, widened by half its span on each side.

``--detector autoencoder|lstm`` scores with the shipped TFLite models instead (fields
from the model's metadata unless ``--features``); their scores put the model's own
threshold at 0.5, the default ``--threshold`` for them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataflows.air_quality import hst_factory
from dataflows.inputs import build_source, iter_messages
from dataflows.settings import ConfigError, Settings
from models.ensemble import DETECTORS, EnsembleConfig, PumpEnsemble
from models.runtime import normalise
from operators.impute import RunningMeanImputer
from operators.parse import ParseLimits, parse_message
from operators.records import Invalid, Reading
from operators.score import features_matrix
from operators.tflite_score import MODEL_THRESHOLD, tflite_detector_factory

__all__ = [
    "LIMIT_ROWS",
    "estimate_limits",
    "score_command",
    "score_ensemble",
    "score_readings",
    "score_tflite",
]

LIMIT_ROWS = 1000
_log = logging.getLogger(__name__)


def estimate_limits(
    x: np.ndarray, features: Sequence[str], pad: float = 0.5
) -> dict[str, tuple[float, float]]:
    """Per-feature ``(low, high)`` from data, widened by ``pad`` × span on each side.

    >>> estimate_limits(np.array([[0.0, 5.0], [10.0, 5.0]]), ["a", "b"])
    {'a': (-5.0, 15.0), 'b': (2.5, 7.5)}
    """
    out = {}
    for j, name in enumerate(features):
        col = x[:, j][~np.isnan(x[:, j])]
        lo, hi = (float(col.min()), float(col.max())) if col.size else (0.0, 1.0)
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        out[name] = (lo - pad * span, hi + pad * span)
    return out


def score_readings(readings: list[Reading], settings: Settings, per_sensor: bool) -> list[float]:
    """Impute and score readings (score before learn per key); scores in input order."""
    features = settings.hst_features
    missing = [f for f in features if f not in settings.hst_limits]
    if missing:
        head = features_matrix(readings[:LIMIT_ROWS], features)
        est = estimate_limits(head, features)
        limits = {**{f: est[f] for f in missing}, **settings.hst_limits}
        settings = dataclasses.replace(settings, hst_limits=limits)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(readings):
        groups[r.sensor_id if per_sensor else "fleet"].append(i)
    new_model = hst_factory(settings)
    scores = [0.0] * len(readings)
    for idx in groups.values():
        imputer = RunningMeanImputer(settings.impute_fields)
        batch = imputer.transform_many([readings[i] for i in idx])
        got = new_model().score_learn_many(features_matrix(batch, features))
        for i, s in zip(idx, got.tolist(), strict=True):
            scores[i] = s
    return scores


def score_tflite(
    readings: list[Reading],
    detector: str,
    features: Sequence[str],
    per_sensor: bool,
    calibrate: int = 0,
) -> list[float]:
    """Score readings with a shipped TFLite detector, one detector per key; input order."""
    model, cls, kwargs = tflite_detector_factory(detector, calibrate=calibrate)
    scores = [0.0] * len(readings)
    for idx in _groups(readings, per_sensor):
        x = features_matrix([readings[i] for i in idx], features)
        for i, s in zip(idx, cls(model, **kwargs).score_learn_many(x).tolist(), strict=True):
            scores[i] = s
    return scores


def _groups(readings: list[Reading], per_sensor: bool) -> list[list[int]]:
    """Indices of the readings of each key (sensor, or one ``fleet`` key), in order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(readings):
        groups[r.sensor_id if per_sensor else "fleet"].append(i)
    return list(groups.values())


def score_ensemble(
    readings: list[Reading], features: Sequence[str], per_sensor: bool, detector: str,
    train_rows: int = 400,
) -> list[float]:  # fmt: skip
    """Score readings with a :class:`PumpEnsemble` per key; input order.

    ``ensemble`` scores ``votes / 3`` (above 0.5 exactly when 2 of 3 detectors flag);
    ``mahalanobis`` its member's smoothed score normalised so its threshold is 0.5.
    Training rows score 0. Missing values take their running mean (0 before any).
    """
    config = EnsembleConfig(channels=tuple(features), train_rows=train_rows)
    scores = [0.0] * len(readings)
    for idx in _groups(readings, per_sensor):
        batch = RunningMeanImputer(features).transform_many([readings[i] for i in idx])
        out = PumpEnsemble(config).process(np.nan_to_num(features_matrix(batch, features)))
        col = DETECTORS.index("mahalanobis")
        ratio = out.scores[:, col] / out.thresholds[:, col]
        got = out.votes / len(DETECTORS) if detector == "ensemble" else normalise(ratio, 1.0, "x")
        for i, v in zip(idx, np.nan_to_num(got).tolist(), strict=True):
            scores[i] = v
    return scores


def _model_features(args: argparse.Namespace) -> tuple[str, ...]:
    if args.features:
        return tuple(f.strip() for f in args.features.split(",") if f.strip())
    if args.detector == "lstm" and args.format == "nab":
        return ("value",)
    return tflite_detector_factory(args.detector)[0].metadata.inputs


def _features_for(
    fmt: str, first: Reading | None, settings: Settings, arg: str | None
) -> tuple[str, ...]:
    if arg:
        return tuple(f.strip() for f in arg.split(",") if f.strip())
    if first is None or all(f in first.values for f in settings.hst_features):
        return settings.hst_features
    if fmt == "nab":
        return ("value",)
    return tuple(sorted(first.values))


def score_command(args: argparse.Namespace) -> int:
    """Score ``args.input`` and write ``args.output``; returns the exit status."""
    threshold = args.threshold
    if threshold is None and args.detector != "hst":
        threshold = MODEL_THRESHOLD
    settings = Settings.load(
        args.config, source=args.format, source_path=(args.input,), threshold=threshold
    )
    limits = ParseLimits(settings.max_payload_bytes, max_future_s=float("inf"))
    results: list[Reading | Invalid] = []
    for origin, payload, received in iter_messages(build_source(settings)):
        results.extend(parse_message(origin, payload, received, limits))
    readings = [r for r in results if isinstance(r, Reading)]
    if not readings:
        msg = f"no valid readings in {args.input} as --format {args.format}"
        raise ConfigError(msg)
    if args.detector in {"hst", "mahalanobis", "ensemble"}:
        features = _features_for(args.format, readings[0], settings, args.features)
    else:
        features = _model_features(args)
    unknown = [f for f in features if all(f not in r.values for r in readings[:LIMIT_ROWS])]
    if unknown:
        have = ", ".join(sorted(readings[0].values))
        msg = f"feature(s) {', '.join(unknown)} not in the input; it has: {have}"
        raise ConfigError(msg)
    per_sensor = args.mode == "per-sensor"
    if args.detector == "hst":
        settings = dataclasses.replace(settings, hst_features=features)
        scores = iter(score_readings(readings, settings, per_sensor))
    elif args.detector in {"mahalanobis", "ensemble"}:
        train_rows = getattr(args, "train_rows", 400)
        scores = iter(score_ensemble(readings, features, per_sensor, args.detector, train_rows))
    else:
        calibrate = getattr(args, "calibrate", 0)
        scores = iter(score_tflite(readings, args.detector, features, per_sensor, calibrate))
    flagged = 0
    with Path(args.output).open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "anomaly_score", "is_anomaly"])
        for item in results:
            if isinstance(item, Invalid):
                out.writerow(["", "", ""])
                continue
            s = next(scores)
            flagged += s > settings.threshold
            out.writerow([item.ts.isoformat(), f"{s:.6f}", int(s > settings.threshold)])
    invalid = len(results) - len(readings)
    sys.stderr.write(
        f"edgewatch score: {len(results):,} rows, {len(readings):,} scored on "
        f"{', '.join(features)} ({args.mode}), {flagged:,} above {settings.threshold}, "
        f"{invalid:,} invalid → {args.output}\n"
    )
    return 0
