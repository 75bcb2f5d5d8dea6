"""``edgewatch train pump-ensemble-ae``: pretrain the pump ensemble's TFLite autoencoder.

Needs the ``train`` extra (TensorFlow, tf-keras). Label-free by construction: it reads
no ``anomaly`` or ``changepoint`` column.

Training rows are the ensemble's own features (:mod:`models.ensemble`: the trailing
mean over ``window`` rows of each of its channels, standardised by a sensor's first
``prefix`` rows):

- SKAB's anomaly-free run cut into virtual sensors
  (:func:`models.ensemble_ae.virtual_sensors`: stretches of ``length`` rows every
  ``step`` rows, each standardised by its own prefix). The run is split in time: the
  stretches inside its first 85 % train, those inside the last 15 % are held out and
  measure the model (reconstruction error, false-alarm rate at the 0.99 quantile).
- Optionally (``--prefixes``) the first ``prefix`` rows of each file to be scored,
  standardised by themselves, and nothing after them.
- Optionally (``--feedback``, :mod:`models.feedback_data`) the values of alerts an
  operator confirmed ``false_positive``, as features of the alert's sensor (trailing
  mean over the sensor's consecutive confirmed alerts, standardised by the sensor's
  prefix, which must be among ``--prefixes``), repeated ``feedback_weight`` times;
  training rows at the time of an alert confirmed ``true_positive`` are dropped. The
  metadata's ``feedback`` section says how many records were used and ignored, and why.

The model is the numpy member's dense autoencoder
(:class:`~models.pump_detectors.DenseAutoencoder`: ``d-h-b-h-d`` tanh, linear output,
its seeded initial weights) pretrained by ``epochs`` full-batch Adam steps of its own
``train`` signature (:mod:`models.trainable_ae`), so each pump fine-tunes it on the
device exactly as it was pretrained. It is written as ``pump_ensemble_ae.tflite``
(builtin ops only, signatures ``infer``/``train``/``save``/``restore``), ``.json``
metadata and ``_reference.npz`` (``infer`` outputs), like the other artifacts.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from models.ensemble_ae import ENSEMBLE_AE, standardise, virtual_sensors
from models.feedback_data import FeedbackSet, LabelledAlert, read_feedback
from models.pump_detectors import SKAB_PUMP_CHANNELS, DenseAutoencoder, trailing_mean
from models.runtime import ARTIFACTS, sha256_file
from models.train import SKAB, _keras, _write
from models.trainable_ae import SIGNATURES, build, pretrain, to_tflite

__all__ = ["Prefix", "read_prefixes", "train_ensemble_ae", "train_ensemble_command"]

Floats = npt.NDArray[np.float64]
NORMAL = SKAB / "anomaly-free" / "anomaly-free.csv"


def read_columns(path: Path, columns: Sequence[str], rows: int | None = None) -> tuple[
    Floats, list[datetime]]:  # fmt: skip
    """``columns`` and the ``datetime`` column (UTC) of a SKAB file's first ``rows`` rows."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh, delimiter=";")
        head = next(reader)
        cols = [head.index(c) for c in columns]
        body = [r for r, _ in zip(filter(None, reader), range(rows or sys.maxsize), strict=False)]
    stamp = head.index("datetime")
    ts = [datetime.fromisoformat(r[stamp]).replace(tzinfo=timezone.utc) for r in body]
    return np.array([[float(r[c]) for c in cols] for r in body]).reshape(-1, len(cols)), ts


def features(x: Floats, window: int) -> Floats:
    """The ensemble's features: causal trailing means over ``window`` rows."""
    return trailing_mean(np.full((window - 1, x.shape[1]), np.nan), x, window)


class Prefix:
    """One sensor's training prefix: its features, their event times and its scaler."""

    def __init__(self, feats: Floats, ts: list[datetime]) -> None:
        self.feats, self.ts = feats, ts

    def z(self, rows: Floats) -> Floats:
        """``rows`` standardised by this prefix."""
        return standardise(rows, self.feats)


def _csv_files(paths: Sequence[Path]) -> list[Path]:
    """The files, a folder standing for its ``*.csv``."""
    return [f for p in paths for f in (sorted(p.glob("*.csv")) if p.is_dir() else [p])]


def read_prefixes(paths: Sequence[Path], channels: Sequence[str], rows: int, window: int) -> dict[
    str, Prefix]:  # fmt: skip
    """The first ``rows`` rows of each SKAB file (a folder: its ``*.csv``), by sensor id.

    A sensor's id is its file's stem, as the flow's SKAB source names sensors.
    """
    out = {}
    for f in _csv_files(paths):
        x, ts = read_columns(f, channels, rows)
        out[f.stem] = Prefix(features(x, window), ts)
    return out


def _feedback_rows(
    fb: FeedbackSet, prefixes: dict[str, Prefix], channels: Sequence[str], window: int
) -> tuple[Floats, int]:
    """Standardised features of the confirmed false positives, and how many were used."""
    by_sensor: dict[str, list[LabelledAlert]] = defaultdict(list)
    for a in fb.false_positives:
        if not all(isinstance(a.values.get(c), int | float) for c in channels):
            fb.ignore("missing_channel")
        elif a.sensor_id not in prefixes:
            fb.ignore("unknown_sensor")
        else:
            by_sensor[a.sensor_id].append(a)
    parts = [np.zeros((0, len(channels)))]
    for sensor, alerts in by_sensor.items():
        alerts.sort(key=lambda a: a.ts)
        x = np.array([[float(a.values[c]) for c in channels] for a in alerts])
        t = np.array([a.ts.timestamp() for a in alerts])
        gaps = np.diff(t)
        step = gaps[gaps > 0].min() if (gaps > 0).any() else 1.0
        runs = np.split(np.arange(len(x)), np.flatnonzero(gaps > 1.5 * step) + 1)
        feats = np.concatenate([features(x[r], window) for r in runs])
        parts.append(prefixes[sensor].z(feats))
    rows = np.concatenate(parts)
    return rows, len(rows)


def _drop_true_positives(fb: FeedbackSet, prefixes: dict[str, Prefix]) -> tuple[
    dict[str, Floats], int]:  # fmt: skip
    """Each prefix's standardised rows without those at a confirmed true positive's time."""
    drop: dict[str, set[datetime]] = defaultdict(set)
    for a in fb.true_positives:
        hit = a.sensor_id in prefixes and a.ts in set(prefixes[a.sensor_id].ts)
        if hit:
            drop[a.sensor_id].add(a.ts)
        else:
            fb.ignore("not_in_training_data")
    out = {}
    for sensor, p in prefixes.items():
        keep = np.array([t not in drop[sensor] for t in p.ts], dtype=bool)
        out[sensor] = p.z(p.feats)[keep]
    return out, sum(len(v) for v in drop.values())


def train_ensemble_ae(
    out_dir: Path | None = ARTIFACTS,
    *,
    channels: Sequence[str] = SKAB_PUMP_CHANNELS,
    data: Path = NORMAL,
    prefixes: Sequence[Path] = (),
    feedback: Sequence[Path] = (),
    prefix: int = 400,
    window: int = 10,
    length: int = 1150,
    step: int = 100,
    epochs: int = 2000,
    seed: int = 0,
    feedback_weight: int = 10,
    name: str = ENSEMBLE_AE,
) -> dict[str, Any]:
    """Train, convert and write the ensemble's autoencoder; return its metadata.

    ``out_dir=None`` trains and measures only (no conversion, nothing written);
    ``feedback_weight=0`` measures the confirmed false positives without training on them.
    """
    _keras()  # TensorFlow, configured (threads, determinism), or a message what to install
    x, _ = read_columns(data, channels)
    f = features(x, window)
    cut = int(0.85 * len(f))
    if min(cut, len(f) - cut) <= prefix:
        msg = f"{data}: {len(f)} rows are too few for {prefix}-row prefixes"
        raise ValueError(msg)
    held = np.concatenate(virtual_sensors(f[cut:], prefix, min(length, len(f) - cut), step))
    stretches = virtual_sensors(f[:cut], prefix, min(length, cut), step)
    train = np.concatenate(stretches)
    pre = read_prefixes(list(prefixes), channels, prefix, window)
    fb = read_feedback(list(feedback)) if feedback else FeedbackSet()
    fp_rows, used_fp = _feedback_rows(fb, pre, channels, window)
    kept, used_tp = _drop_true_positives(fb, pre)
    parts = [train, *kept.values(), *([fp_rows] * feedback_weight)]
    rows = np.concatenate(parts)
    weights, biases = DenseAutoencoder.initial(seed, len(channels))
    model = build(weights, biases)
    pretrain(model, rows, epochs)
    err = _errors(model, held)
    threshold = float(np.quantile(err, 0.99))
    metrics = {
        "train_rows": len(rows),
        "virtual_sensors": len(stretches),
        "prefix_rows": sum(len(v) for v in kept.values()),
        "feedback_rows": len(fp_rows) * feedback_weight,
        "heldout_rows": len(held),
        "train_mse": round(float(_errors(model, rows).mean() / len(channels)), 5),
        "heldout_mse": round(float(err.mean() / len(channels)), 5),
        "feedback_error": _feedback_error(model, fp_rows),
    }
    meta = {
        "kind": "autoencoder",
        "features": list(channels),
        "inputs": list(channels),
        "window": window,
        "prefix_rows": prefix,
        "input_shape": [None, len(channels)],
        "scaler": {"mean": [0.0] * len(channels), "scale": [1.0] * len(channels)},
        "standardise": "per sensor, by the mean and std of its first prefix_rows features",
        "threshold": threshold,
        "score": "sum over features of the squared reconstruction error; threshold: 0.99 "
        "quantile on held-out virtual sensors (the ensemble sets its own per sensor)",
        "signatures": list(SIGNATURES),
        "fine_tune": "per pump on the device: restore the shipped weights, then full-batch "
        "Adam steps of the train signature on the pump's standardised prefix",
        "architecture": "-".join(str(n) for n in [len(channels), *(len(b) for b in biases)]),
        "training_data": _digest(data, list(pre), prefixes, feedback, length, step),
        "feedback": fb.summary(used_fp, used_tp),
        "seed": seed,
        "epochs": epochs,
        "label_free": True,
    }
    if out_dir is not None:
        ref = held[:16].astype(np.float32)
        _write(out_dir, name, to_tflite(model), {**meta, "metrics": metrics},
               (ref, model.infer(ref)["rec"].numpy()))  # fmt: skip
    return {**meta, "metrics": metrics}


def _errors(model: Any, z: npt.NDArray[np.floating[Any]]) -> Floats:
    x = z.astype(np.float32)
    rec = model.infer(x)["rec"].numpy()
    out: Floats = ((rec - x) ** 2).sum(axis=1).astype(np.float64)
    return out


def _feedback_error(model: Any, rows: Floats) -> float | None:
    return round(float(_errors(model, rows).mean()), 5) if len(rows) else None


def _digest(
    data: Path, sensors: list[str], prefixes: Sequence[Path], feedback: Sequence[Path],
    length: int, step: int,
) -> dict[str, Any]:  # fmt: skip
    digest = hashlib.sha256()
    for path in sorted({*_csv_files(prefixes), *feedback}):
        digest.update(path.read_bytes())
    return {"file": data.name, "sha256": sha256_file(data), "virtual_sensor_length": length,
            "virtual_sensor_step": step, "prefix_sensors": sorted(sensors),
            "prefixes_and_feedback_sha256": digest.hexdigest()}  # fmt: skip


def train_ensemble_command(args: argparse.Namespace) -> int:
    """``edgewatch train pump-ensemble-ae``: train, write, print a summary and the metrics."""
    out = Path(args.out) if args.out else ARTIFACTS
    meta = train_ensemble_ae(
        out, prefixes=[Path(p) for p in args.prefixes or ()],
        feedback=[Path(p) for p in args.feedback or ()], epochs=args.epochs or 2000,
        window=args.window or 10, seed=args.seed,
    )  # fmt: skip
    fb, m = meta["feedback"], meta["metrics"]
    sys.stderr.write(
        f"trained {ENSEMBLE_AE} on {m['train_rows']} rows ({m['virtual_sensors']} virtual "
        f"sensors, {m['prefix_rows']} prefix rows, {m['feedback_rows']} feedback rows); "
        f"feedback: {fb['records']} records, used {fb['used']['false_positive']} false "
        f"positive rows / {fb['used']['true_positive']} true positive drops, ignored "
        f"{sum(fb['ignored'].values())} {fb['ignored'] or ''}\n"
    )
    sys.stdout.write(orjson.dumps({"metrics": m, "feedback": fb},
                                  option=orjson.OPT_INDENT_2).decode() + "\n")  # fmt: skip
    return 0
