"""``edgewatch train``: train, convert and describe the shipped TFLite models.

Needs the ``train`` extra (``pip install -e '.[train]'``: TensorFlow CPU and tf-keras,
whose LSTM layer the converter turns into the fused ``UNIDIRECTIONAL_SEQUENCE_LSTM``
op); nothing else in edgewatch imports TensorFlow.

- ``pump_autoencoder``: the pump features of :mod:`models.autoencoder` computed from SKAB's
  anomaly-free run (``Accelerometer1RMS`` as vibration, ``Temperature``, ``Pressure``),
  standard scaling, a dense 4-8-2-8-4 autoencoder. The run is split in time: 70 % to
  train, 15 % to set the threshold (95th percentile of reconstruction error) and 15 %
  to measure the false-alarm rate; SKAB ``valve1`` files, when given, measure detection.
- ``smart_meter_lstm``: Conv1D → MaxPool1D → 3 LSTM → dense sigmoid over 200-reading
  windows of power scaled to 0..1, trained on :mod:`sources.smart_meter_sim` households
  (balanced normal/anomalous windows, like the paper) and tested on held-out households.

Conversion runs in a child process (a converter crash cannot take the caller down) and
keeps to builtin ops. Each model is written as ``NAME.tflite``, ``NAME.json`` (metadata,
see :class:`models.runtime.ModelMetadata`) and ``NAME_reference.npz`` (a few inputs and
the Keras model's outputs, which the TFLite model must reproduce).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from models.autoencoder import PUMP_FEATURES, pump_features
from models.lstm import scale_minmax
from models.runtime import ARTIFACTS, TFLiteModel, sha256_file

__all__ = ["SKAB", "PUMP_INPUTS", "train_command", "train_pump", "train_smart_meter"]

SKAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "skab"
"""The SKAB data set beside the project (``../shared/data/skab``)."""
PUMP_INPUTS = ("Accelerometer1RMS", "Temperature", "Pressure")
"""SKAB columns read as vibration, temperature and pressure."""

_log = logging.getLogger(__name__)
Floats = npt.NDArray[np.float64]


def read_skab(path: Path) -> tuple[Floats, npt.NDArray[np.int8]]:
    """The :data:`PUMP_INPUTS` columns of a SKAB file and its ``anomaly`` labels (0 if none)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    head, body = rows[0], [r for r in rows[1:] if r]
    cols = [head.index(c) for c in PUMP_INPUTS]
    raw = np.array([[float(r[c]) for c in cols] for r in body])
    lab = head.index("anomaly") if "anomaly" in head else None
    labels = np.array([int(float(r[lab])) if lab is not None else 0 for r in body], np.int8)
    return raw, labels


def _keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf  # noqa: PLC0415
        import tf_keras  # noqa: PLC0415
    except ImportError as exc:
        msg = "edgewatch train needs the train extra: pip install -e '.[train]'"
        raise SystemExit(msg) from exc
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    return tf_keras


def convert(model: Any, batch: int | None, calib: Floats | None = None) -> bytes:
    """Convert a tf-keras model to TFLite bytes in a child process (builtin ops only).

    Args:
        model: The tf-keras model.
        batch: Fixed batch size of the exported input, or ``None`` for a dynamic one.
        calib: Representative inputs for int8 quantisation; ``None`` exports float32.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "model.keras", Path(tmp) / "model.tflite"
        model.save(src)
        cmd = [sys.executable, "-m", "models.train", "--convert", str(src), str(out)]
        cmd += ["--batch", str(batch or 0)]
        if calib is not None:
            np.save(Path(tmp) / "calib.npy", calib.astype(np.float32))
            cmd += ["--calib", str(Path(tmp) / "calib.npy")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            msg = f"TFLite conversion failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            raise RuntimeError(msg)
        return out.read_bytes()


def _convert_child(src: str, out: str, batch: int, calib: str | None) -> None:
    tf, keras = _keras_tf()
    model = keras.models.load_model(src)
    shape = [batch or None, *model.input_shape[1:]]
    spec = tf.TensorSpec(shape, tf.float32)
    fn = tf.function(lambda x: model(x)).get_concrete_function(spec)  # noqa: PLW0108
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if calib:
        data = np.load(calib)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([data[i : i + 1]] for i in range(len(data)))
    Path(out).write_bytes(conv.convert())


def _keras_tf() -> tuple[Any, Any]:
    keras = _keras()
    import tensorflow as tf  # noqa: PLC0415

    return tf, keras


def _write(
    out_dir: Path, name: str, tflite: bytes, meta: dict[str, Any], ref: tuple[Any, Any]
) -> Path:
    """Write ``NAME.tflite``, ``NAME.json`` and ``NAME_reference.npz``; return the model path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.tflite"
    path.write_bytes(tflite)
    meta = {"name": name, **meta, "sha256": hashlib.sha256(tflite).hexdigest()}
    meta["versions"] = {
        "tensorflow": version("tensorflow-cpu" if _has("tensorflow-cpu") else "tensorflow"),
        "tf_keras": version("tf-keras"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    path.with_suffix(".json").write_bytes(
        orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    np.savez_compressed(out_dir / f"{name}_reference.npz", x=ref[0], y=ref[1])
    return path


def _has(dist: str) -> bool:
    try:
        version(dist)
    except Exception:  # noqa: BLE001 - PackageNotFoundError
        return False
    return True


def _rates(flag: npt.NDArray[np.bool_], label: npt.NDArray[np.bool_]) -> dict[str, float]:
    """Accuracy, TPR (= 1 - MAR), FPR (= FAR) and F1 of flags against labels."""
    tp, fp = int((flag & label).sum()), int((flag & ~label).sum())
    fn, tn = int((~flag & label).sum()), int((~flag & ~label).sum())
    return {
        "accuracy": round((tp + tn) / max(1, flag.size), 4),
        "tpr": round(tp / max(1, tp + fn), 4),
        "fpr": round(fp / max(1, fp + tn), 4),
        "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4),
    }


def _fit(model: Any, x: Any, y: Any, epochs: int, batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    model.fit(x[order], y[order], epochs=epochs, batch_size=batch, verbose=0, shuffle=True)


def train_pump(
    out_dir: Path = ARTIFACTS,
    *,
    window: int = 10,
    slope_window: int = 5,
    epochs: int = 40,
    seed: int = 0,
    data: Path = SKAB / "anomaly-free" / "anomaly-free.csv",
    valve_dir: Path | None = SKAB / "valve1",
    int8: bool = False,
) -> dict[str, Any]:
    """Train, convert and write the pump autoencoder; return its metadata."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    raw, _ = read_skab(data)
    feats = pump_features(raw, window, slope_window)
    feats = feats[~np.isnan(feats).any(axis=1)]
    feats = _block_shuffle(feats, 300, seed)  # 5-minute blocks: time order kept within
    a, b = int(0.7 * len(feats)), int(0.85 * len(feats))
    mean, scale = feats[:a].mean(axis=0), feats[:a].std(axis=0)
    z = ((feats - mean) / scale).astype(np.float32)
    model = dense_autoencoder(keras, len(PUMP_FEATURES), 2)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    _fit(model, z[:a], z[:a], epochs, 64, seed)
    err = np.mean((model.predict(z, verbose=0, batch_size=4096) - z) ** 2, axis=1)
    threshold = float(np.percentile(err[a:b], 95))
    metrics: dict[str, Any] = {
        "train_rows": a,
        "threshold_rows": b - a,
        "heldout_rows": len(z) - b,
        "train_mse": round(float(err[:a].mean()), 5),
        "heldout_false_alarm_rate": round(float((err[b:] > threshold).mean()), 4),
    }
    meta = {
        "kind": "autoencoder",
        "features": list(PUMP_FEATURES),
        "inputs": list(PUMP_INPUTS),
        "window": window,
        "slope_window": slope_window,
        "input_shape": [None, len(PUMP_FEATURES)],
        "scaler": {"mean": mean.tolist(), "scale": scale.tolist()},
        "threshold": threshold,
        "training_data": {"file": data.name, "sha256": sha256_file(data)},
        "seed": seed,
    }
    tflite = convert(model, None)
    ref = (z[b : b + 16], model.predict(z[b : b + 16], verbose=0))
    path = _write(out_dir, "pump_autoencoder", tflite, {**meta, "metrics": metrics}, ref)
    if valve_dir is not None and valve_dir.is_dir():
        metrics["valve1"] = _pump_valve(path, valve_dir)
        _write(out_dir, "pump_autoencoder", tflite, {**meta, "metrics": metrics}, ref)
    if int8:
        metrics["int8"] = _compare_int8(model, z[:a], z[b:], path, np.zeros(len(z) - b, bool))
    return {**meta, "metrics": metrics}


def dense_autoencoder(keras: Any, features: int, bottleneck: int) -> Any:
    """The seed's dense autoencoder: ``features``-8-``bottleneck``-8-``features``, ReLU."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((features,)),
        layers.Dense(8, activation="relu"),
        layers.Dense(bottleneck, activation="relu"),
        layers.Dense(8, activation="relu"),
        layers.Dense(features),
    ])  # fmt: skip


def _block_shuffle(x: Floats, block: int, seed: int) -> Floats:
    """Rows in blocks of ``block``, the blocks in a seeded random order."""
    starts = np.random.default_rng(seed).permutation(np.arange(0, len(x), block))
    return np.concatenate([x[s : s + block] for s in starts])


def _pump_valve(path: Path, valve_dir: Path) -> dict[str, float]:
    """Pooled detection over SKAB valve files: each file's first 400 rows calibrate."""
    from models.autoencoder import AutoencoderDetector  # noqa: PLC0415

    model = TFLiteModel.load(path)
    flags, labels = [], []
    for f in sorted(valve_dir.glob("*.csv"), key=lambda p: int(p.stem)):
        raw, lab = read_skab(f)
        score = AutoencoderDetector(model, calibrate=400).score_learn_many(raw)
        flags.append(score[400:] > 0.5)
        labels.append(lab[400:] == 1)
    return _rates(np.concatenate(flags), np.concatenate(labels))


def _compare_int8(
    model: Any, calib: Any, x: Any, float_path: Path, truth: npt.NDArray[np.bool_]
) -> dict[str, Any]:
    """Export an int8 model beside the float32 one; compare size, speed and rates vs truth."""
    q_bytes = convert(model, 1 if len(model.input_shape) == 3 else None, calib[:200])
    q_path = float_path.with_name(float_path.stem + "_int8.tflite")
    q_path.write_bytes(q_bytes)
    meta = orjson.loads(float_path.with_suffix(".json").read_bytes())
    meta["sha256"] = hashlib.sha256(q_bytes).hexdigest()
    q_path.with_suffix(".json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    out: dict[str, Any] = {}
    for label, p in (("float32", float_path), ("int8", q_path)):
        m = TFLiteModel.load(p)
        t0 = time.perf_counter()
        y = m.predict(x)
        spent = time.perf_counter() - t0
        raw = np.mean((y - x) ** 2, axis=1) if y.shape == x.shape else y[:, 0]
        flags = raw > m.metadata.threshold
        out[label] = {
            "bytes": p.stat().st_size,
            "us_per_row": round(spent / len(x) * 1e6, 3),
            **_rates(flags, truth),
        }
    return out


def meter_windows(
    power: Floats, labels: npt.NDArray[np.int8], window: int, stride: int
) -> tuple[Floats, npt.NDArray[np.int8]]:
    """Windows of one household and their labels: 1 anomalous, 0 normal, -1 ambiguous.

    A window is anomalous when a fifth of it is labelled or it holds a labelled spike,
    normal when nothing in it is labelled.
    """
    from sources.smart_meter_sim import ANOMALY_KINDS  # noqa: PLC0415

    starts = np.arange(0, len(power) - window + 1, stride)
    idx = starts[:, None] + np.arange(window)
    lab = labels[idx]
    frac = (lab > 0).mean(axis=1)
    spike = (lab == ANOMALY_KINDS.index("spike") + 1).any(axis=1)
    y = np.where((frac >= 0.2) | spike, 1, np.where(frac == 0, 0, -1)).astype(np.int8)
    return power[idx], y


def train_smart_meter(
    out_dir: Path = ARTIFACTS,
    *,
    households: int = 12,
    days: int = 3,
    epochs: int = 12,
    seed: int = 0,
    window: int = 200,
    int8: bool = False,
) -> dict[str, Any]:
    """Train, convert and write the smart-meter LSTM; return its metadata."""
    from sources.smart_meter_sim import SmartMeterConfig, SmartMeterSimulator  # noqa: PLC0415

    keras = _keras()
    keras.utils.set_random_seed(seed)
    cfg = SmartMeterConfig(households=households, duration_s=days * 86_400, seed=seed + 5)
    sim, digest = SmartMeterSimulator(cfg), hashlib.sha256()
    n_test = max(1, households // 4)
    parts: dict[str, list[Any]] = {"train": [], "test": []}
    for h in range(households):
        power, labels = sim.household(h)
        digest.update(power.tobytes() + labels.tobytes())
        parts["test" if h >= households - n_test else "train"].append(
            meter_windows(power, labels, window, 20 if h < households - n_test else 50)
        )
    x_tr = np.concatenate([w for w, _ in parts["train"]])
    y_tr = np.concatenate([y for _, y in parts["train"]])
    x_te = np.concatenate([w for w, _ in parts["test"]])
    y_te = np.concatenate([y for _, y in parts["test"]])
    normal = x_tr[y_tr == 0]
    lo, hi = 0.0, float(normal.max())
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y_tr == 1)
    neg = rng.choice(np.flatnonzero(y_tr == 0), size=min(len(pos), int((y_tr == 0).sum())))
    keep = np.concatenate([pos, neg])
    xs, ys = scale_minmax(x_tr[keep], lo, hi)[..., None], y_tr[keep].astype(np.float32)
    model = _lstm_model(keras, window)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    _fit(model, xs, ys, epochs, 32, seed)
    clear = y_te >= 0
    xt = scale_minmax(x_te[clear], lo, hi)[..., None]
    p = model.predict(xt, verbose=0, batch_size=256)[:, 0]
    metrics: dict[str, Any] = {
        "train_windows": len(keep),
        "test_windows": int(clear.sum()),
        "test_anomalous": int((y_te[clear] == 1).sum()),
        "train": _rates(model.predict(xs, verbose=0, batch_size=256)[:, 0] > 0.5, ys > 0.5),
        "test": _rates(p > 0.5, y_te[clear] == 1),
    }
    meta = {
        "kind": "classifier",
        "features": ["power"],
        "inputs": ["power_kw"],
        "window": window,
        "input_shape": [1, window, 1],
        "scaler": {"min": [lo], "max": [hi]},
        "threshold": 0.5,
        "training_data": {
            "simulator": "sources.smart_meter_sim",
            "config": {
                "households": households,
                "days": days,
                "seed": cfg.seed,
                "interval_s": cfg.interval_s,
                "anomaly_rate": cfg.anomaly_rate,
            },
            "sha256": digest.hexdigest(),
        },  # fmt: skip
        "seed": seed,
    }
    tflite = convert(model, 1)
    ref = (xt[:8], model.predict(xt[:8], verbose=0))
    path = _write(out_dir, "smart_meter_lstm", tflite, {**meta, "metrics": metrics}, ref)
    if int8:
        metrics["int8"] = _compare_int8(model, xs, xt, path, y_te[clear] == 1)
    return {**meta, "metrics": metrics}


def _lstm_model(keras: Any, window: int) -> Any:
    layers = keras.layers
    return keras.Sequential([
        keras.Input((window, 1)),
        layers.Conv1D(8, 8, strides=2, padding="same", activation="relu"),
        layers.MaxPooling1D(4),
        layers.LSTM(16, return_sequences=True),
        layers.LSTM(16, return_sequences=True),
        layers.LSTM(16),
        layers.Dense(1, activation="sigmoid"),
    ])  # fmt: skip


def train_command(args: argparse.Namespace) -> int:
    """Run ``edgewatch train MODEL``; prints the metadata (metrics included) as JSON."""
    if args.model == "pump-ensemble-ae":
        from models.train_ensemble import train_ensemble_command  # noqa: PLC0415

        return train_ensemble_command(args)
    if getattr(args, "feedback", None) or getattr(args, "prefixes", None):
        msg = "--feedback and --prefixes apply to pump-ensemble-ae only"
        raise SystemExit(msg)
    out = Path(args.out) if args.out else ARTIFACTS
    if args.model == "pump-autoencoder":
        meta = train_pump(out, window=args.window or 10, epochs=args.epochs or 40,
                          seed=args.seed, int8=args.int8)  # fmt: skip
    else:
        meta = train_smart_meter(out, window=args.window or 200, epochs=args.epochs or 12,
                                 seed=args.seed, int8=args.int8)  # fmt: skip
    sys.stdout.write(orjson.dumps(meta["metrics"], option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="models.train")
    p.add_argument("--convert", nargs=2, required=True, metavar=("KERAS", "TFLITE"))
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--calib")
    a = p.parse_args(argv)
    _convert_child(a.convert[0], a.convert[1], a.batch, a.calib)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
