"""Federated averaging of the pump autoencoder: ``edgewatch train pump-autoencoder --federated``.

Simulated nodes each hold some SKAB files (``valve1`` by default, the files dealt round
robin); a file's first ``train_rows`` rows are its normal training data (SKAB's
protocol), as the pump features of :mod:`models.autoencoder`. Raw rows never leave a
node; what crosses is what a fleet would exchange:

1. **Scaler**: each node's feature count, mean and co-moment, merged exactly
   (:meth:`models.mahalanobis.OnlineMahalanobis.merged`): the fleet's mean and standard
   deviation, the same as of the pooled rows.
2. **Rounds** (``rounds``): every node starts from the global weights, trains
   ``local_epochs`` on its rows (85 % of each file's, in time order) with a fresh Adam
   optimizer, and sends its weights with its row count; the global weights become their
   count-weighted average
   (:func:`models.summaries.fedavg`, float64). The average is a weighted sum, so the
   order in which nodes report does not change it (to rounding), and each node's
   training is seeded by its own name and the round, not by when it runs.
3. **Threshold**: each node's reconstruction errors on its held-out rows (the last 15 %
   of each file's training rows) as a KLL sketch (:mod:`models.sketch`); the merged
   sketch's 95th percentile, within the sketch's rank error.

The model has the architecture of ``edgewatch train pump-autoencoder`` and is exported
the same way (float32, builtin ops, converted in a child process) as
``pump_autoencoder_federated.tflite`` + ``.json`` + ``_reference.npz``. Needs the
``train`` extra (TensorFlow), imported only when training runs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from models import sketch
from models.autoencoder import PUMP_FEATURES, pump_features
from models.mahalanobis import OnlineMahalanobis
from models.runtime import ARTIFACTS
from models.summaries import fedavg

__all__ = ["NAME", "NodeData", "average", "federated_command", "node_data", "train_federated"]

NAME = "pump_autoencoder_federated"
"""Artifact name of the federated model."""
HELD_OUT = 0.15
"""Share of each file's training rows a node keeps to set the threshold."""
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NodeData:
    """One simulated node's local data: pump features of its files' training rows."""

    name: str
    files: tuple[str, ...]
    train: Floats
    held_out: Floats


def node_data(files: Sequence[Path], nodes: int, *, train_rows: int = 400, window: int = 10,
              slope_window: int = 5) -> list[NodeData]:  # fmt: skip
    """Deal ``files`` round robin to ``nodes`` nodes; each keeps its files' feature rows."""
    from models.train import read_skab  # noqa: PLC0415 - the train module's SKAB reader

    parts: list[tuple[list[str], list[Floats], list[Floats]]] = [([], [], []) for _ in range(nodes)]
    for i, path in enumerate(files):
        raw, _ = read_skab(path)
        feats = pump_features(raw[:train_rows], window, slope_window)
        feats = feats[~np.isnan(feats).any(axis=1)]
        cut = int(round(len(feats) * (1 - HELD_OUT)))
        names, train, held = parts[i % nodes]
        names.append(path.name)
        train.append(feats[:cut])
        held.append(feats[cut:])
    return [NodeData(f"node-{k + 1}", tuple(n), np.concatenate(t), np.concatenate(h))
            for k, (n, t, h) in enumerate(parts) if n]  # fmt: skip


def scaler(nodes: Sequence[NodeData]) -> tuple[Floats, Floats]:
    """The fleet's feature mean and standard deviation, from the nodes' merged moments."""
    moments = []
    for node in nodes:
        part = OnlineMahalanobis(len(PUMP_FEATURES), shrinkage=0.0)
        part.learn_many(node.train)
        moments.append(part)
    pooled = OnlineMahalanobis.merged(*moments)
    d = len(PUMP_FEATURES)
    upper = np.triu_indices(d)
    diagonal = upper[0] == upper[1]
    variance = pooled.state()["m2"][diagonal] / pooled.count
    return pooled.mean, np.sqrt(np.where(variance > 0, variance, 1.0))


def average(
    updates: Sequence[tuple[Sequence[npt.ArrayLike], int]],
) -> list[npt.NDArray[np.float32]]:
    """The count-weighted average of ``(weights, count)`` updates, as float32 layers."""
    weights, counts = zip(*updates, strict=True)
    return [w.astype(np.float32) for w in fedavg(list(weights), list(counts))]


def _seed(seed: int, node: str, round_: int) -> int:
    """A node's training seed in a round: its name's, not its turn's."""
    return (seed * 1_000_003 + zlib.crc32(node.encode()) + 7919 * round_) % 2**31


def train_federated(
    out_dir: Path,
    files: Sequence[Path],
    *,
    nodes: int = 3,
    rounds: int = 5,
    local_epochs: int = 2,
    seed: int = 0,
    train_rows: int = 400,
    export: bool = True,
) -> dict[str, Any]:
    """Train the pump autoencoder by federated averaging; write it unless ``export`` is off.

    Returns:
        The metadata (with ``federated`` and ``metrics``), and ``"weights"``: the final
        global weights (not written to the JSON).
    """
    from models.train import (  # noqa: PLC0415 - train extra
        _fit,
        _keras,
        _write,
        convert,
        dense_autoencoder,
    )

    data = node_data(files, nodes, train_rows=train_rows)
    mean, scale = scaler(data)
    keras = _keras()
    keras.utils.set_random_seed(seed)
    model = dense_autoencoder(keras, len(PUMP_FEATURES), 2)
    weights = model.get_weights()
    history = []
    for r in range(rounds):
        updates = []
        for node in data:  # each from the global weights, with an optimizer of its own
            model.set_weights(weights)
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
            keras.utils.set_random_seed(_seed(seed, node.name, r))
            z = ((node.train - mean) / scale).astype(np.float32)
            _fit(model, z, z, local_epochs, 64, _seed(seed, node.name, r))
            updates.append((model.get_weights(), len(z)))
        weights = average(updates)
        model.set_weights(weights)
        history.append(round(_mse(model, data, mean, scale), 6))
    errors = [_errors(model, (n.held_out - mean) / scale) for n in data]
    pooled = sketch.merged(sketch.sketch_of(e) for e in errors)
    threshold = float(pooled.get_quantile(0.95))
    far = {n.name: round(float((e > threshold).mean()), 4)
           for n, e in zip(data, errors, strict=True)}  # fmt: skip
    metrics = {"train_mse_by_round": history, "held_out_false_alarm_rate": far,
               "threshold_rank_error": round(sketch.rank_error(pooled), 5)}  # fmt: skip
    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()
    meta: dict[str, Any] = {
        "kind": "autoencoder", "features": list(PUMP_FEATURES),
        "inputs": ["Accelerometer1RMS", "Temperature", "Pressure"], "window": 10,
        "slope_window": 5, "input_shape": [None, len(PUMP_FEATURES)],
        "scaler": {"mean": mean.tolist(), "scale": scale.tolist()}, "threshold": threshold,
        "training_data": {"files": [Path(f).name for f in files], "sha256": digest,
                          "train_rows": train_rows},
        "federated": {"nodes": {n.name: {"files": list(n.files), "rows": len(n.train)}
                                for n in data},
                      "rounds": rounds, "local_epochs": local_epochs,
                      "aggregation": "fedavg, weights by sample count"},
        "seed": seed, "metrics": metrics,
    }  # fmt: skip
    if export:
        probe = ((data[0].held_out[:16] - mean) / scale).astype(np.float32)
        ref = (probe, model.predict(probe, verbose=0))
        _write(out_dir, NAME, convert(model, None), meta, ref)
    return {**meta, "weights": weights}


def _errors(model: Any, z: Floats) -> Floats:
    x = z.astype(np.float32)
    out: Floats = np.mean((model.predict(x, verbose=0, batch_size=4096) - x) ** 2, axis=1)
    return out


def _mse(model: Any, data: Sequence[NodeData], mean: Floats, scale: Floats) -> float:
    """Training MSE over every node's rows (what a fleet would learn from the nodes' sums)."""
    total = sum(float(_errors(model, (n.train - mean) / scale).sum()) for n in data)
    return total / sum(len(n.train) for n in data)


def federated_command(args: argparse.Namespace) -> int:
    """``edgewatch train pump-autoencoder --federated``: train, export, print the metadata."""
    from models.train import SKAB  # noqa: PLC0415

    if args.model != "pump-autoencoder":
        msg = "--federated trains pump-autoencoder only"
        raise SystemExit(msg)
    folder = Path(getattr(args, "skab", None) or SKAB / "valve1")
    files = sorted(folder.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
    if len(files) < 2:
        msg = f"--federated needs SKAB files in {folder}"
        raise SystemExit(msg)
    out = Path(args.out) if args.out else ARTIFACTS
    meta = train_federated(out, files, nodes=args.nodes, rounds=args.rounds,
                           local_epochs=args.epochs or 2, seed=args.seed)  # fmt: skip
    sys.stdout.write(orjson.dumps(meta["metrics"], option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
