"""``edgewatch evaluate --dataset skab DIR``: the pump ensemble under SKAB's protocol.

Every ``*.csv`` of ``DIR`` is one sensor: its first ``--train-rows`` rows (400) are the
training prefix, the rest are streamed one row at a time through a fresh
:class:`~models.ensemble.PumpEnsemble`, and the verdicts of all files' scored rows are
pooled against the ``anomaly`` column: F1, false-alarm rate (FAR, % of normal rows
flagged) and missed-alarm rate (MAR, % of anomalous rows missed), with the counts they
come from. The channels are chosen without labels by
:func:`~models.pump_detectors.screen_channels` over all files' prefixes.

Progress goes to stderr; stdout gets a table and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import pickle
import sys
import time
from collections.abc import Hashable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from models.ensemble import DETECTORS, EnsembleConfig, EnsembleScores, PumpEnsemble, check_member
from models.ensemble_thresholds import SEED_FACTORS, parse_factors
from models.pump_detectors import prefix_drift, screen_channels, trailing_mean
from models.thresholds import context_key

__all__ = ["SKAB_CHANNELS", "evaluate_command", "read_skab_file", "rates"]

SKAB_CHANNELS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
                 "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS")  # fmt: skip
"""SKAB's sensor columns, in file order."""

_log = logging.getLogger(__name__)
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


def read_skab_file(path: Path) -> tuple[Floats, Bools]:
    """The :data:`SKAB_CHANNELS` of a SKAB file and its ``anomaly`` labels."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter=";") if r]
    head = rows[0]
    cols = [head.index(c) for c in SKAB_CHANNELS]
    x = np.array([[float(r[c]) for c in cols] for r in rows[1:]])
    lab = head.index("anomaly")
    return x, np.array([float(r[lab]) == 1.0 for r in rows[1:]])


def rates(flags: Bools, labels: Bools) -> dict[str, float]:
    """Counts, F1, FAR % and MAR % of pooled flags against labels.

    >>> rates(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))["f1"]
    0.5
    """
    tp, fp = int((flags & labels).sum()), int((flags & ~labels).sum())
    fn, tn = int((~flags & labels).sum()), int((~flags & ~labels).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4),
            "far": round(100 * fp / max(1, fp + tn), 2),
            "mar": round(100 * fn / max(1, fn + tp), 2)}  # fmt: skip


def _files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        msg = f"no SKAB *.csv files in {folder}"
        raise FileNotFoundError(msg)
    return files


def read_skab_times(path: Path) -> list[datetime]:
    """The ``datetime`` column of a SKAB file (UTC, as the flow's SKAB source reads it)."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter=";") if r]
    col = rows[0].index("datetime")
    return [datetime.fromisoformat(r[col]).replace(tzinfo=timezone.utc) for r in rows[1:]]


def _stream(
    ens: PumpEnsemble, x: Floats, ctx: list[Hashable], train_rows: int
) -> tuple[EnsembleScores, float]:
    """Prefix in one batch, then one row at a time; results and seconds spent streaming."""
    parts = [ens.process(x[:train_rows], ctx[:train_rows])]
    t0 = time.perf_counter()
    parts += [ens.process(x[i : i + 1], ctx[i : i + 1]) for i in range(train_rows, len(x))]
    spent = time.perf_counter() - t0
    fields = [
        np.concatenate([getattr(p, f) for p in parts]) for f in EnsembleScores.__annotations__
    ]
    return EnsembleScores(*fields), spent


def evaluate(
    folder: Path,
    k: int = 2,
    train_rows: int = 400,
    plot: Path | None = None,
    context: Sequence[str] = ("hour",),
    **ensemble: Any,
) -> dict[str, Any]:
    """Run the protocol over ``folder``; every figure, as the JSON line prints them.

    ``context`` names the parts of a row's threshold context (``context_key``: hour,
    daypart, season; SKAB has no operating-mode field), read by adaptive and fixed
    thresholds. ``ensemble`` holds further :class:`~models.ensemble.EnsembleConfig`
    fields (e.g. ``autoencoder="numpy"``, ``threshold="adaptive"``). Without
    ``autoencoder``, the TFLite member when the shipped model was trained for the
    channels the screen keeps, else the numpy one (said on stderr).
    """
    data = [(f, *read_skab_file(f)) for f in _files(folder)]
    pad = np.full((9, len(SKAB_CHANNELS)), np.nan)
    prefixes = [trailing_mean(pad, x[:train_rows], 10) for _, x, _ in data]
    keep = screen_channels(prefixes)
    drift = np.median([prefix_drift(p) for p in prefixes], axis=0)
    channels = tuple(c for c, m in zip(SKAB_CHANNELS, keep, strict=True) if m)
    config = _config(channels, k, train_rows, ensemble)
    flags, votes, labels, fit_s, stream_s, sizes = [], [], [], 0.0, 0.0, []
    for i, (path, x, y) in enumerate(data, 1):
        ens = PumpEnsemble(config)
        t0 = time.perf_counter()
        ens.process(x[:train_rows][:0])
        ctx: list[Hashable] = [context_key(t, by=context) for t in read_skab_times(path)]
        out, spent = _stream(ens, x[:, keep], ctx, train_rows)
        fit_s += time.perf_counter() - t0 - spent
        stream_s += spent
        sizes.append(len(pickle.dumps(ens, protocol=pickle.HIGHEST_PROTOCOL)))
        flags.append(out.flags[train_rows:])
        votes.append(out.votes[train_rows:])
        labels.append(y[train_rows:])
        sys.stderr.write(f"\r[{i}/{len(data)}] {path.name}: {int(out.alerts.sum())} alerts   ")
        if plot is not None:
            from dataflows.skab_plot import plot_file  # noqa: PLC0415 - needs matplotlib

            plot_file(plot / f"{path.stem}.png", path.name, out, y, config)
    sys.stderr.write("\n")
    fl, vt, lb = np.concatenate(flags), np.concatenate(votes), np.concatenate(labels)
    results = {name: rates(fl[:, j], lb) for j, name in enumerate(DETECTORS)}
    results |= {f"{n}-of-3": rates(vt >= n, lb) for n in (1, 2, 3)}
    return {"dataset": "skab", "dir": str(folder), "files": len(data),
            "train_rows": train_rows, "scored_rows": int(len(lb)), "k": k,
            "channels": list(config.channels),
            "median_prefix_drift": dict(zip(SKAB_CHANNELS, drift.round(3).tolist(), strict=True)),
            "model_version": PumpEnsemble(config).model_version, "results": results,
            "threshold": config.threshold, "context": list(context),
            "fit_s_per_file": round(fit_s / len(data), 3),
            "us_per_row": round(1e6 * stream_s / max(1, len(lb)), 1),
            "state_bytes_per_sensor": int(np.median(sizes))}  # fmt: skip


def _config(
    channels: tuple[str, ...], k: int, train_rows: int, ensemble: dict[str, Any]
) -> EnsembleConfig:
    chosen = "autoencoder" in ensemble
    config = EnsembleConfig(channels=channels, k=k, train_rows=train_rows,
                            **{"autoencoder": "tflite", **ensemble})  # fmt: skip
    try:
        check_member(config)
    except ValueError as exc:
        if chosen:
            raise
        sys.stderr.write(f"using the numpy autoencoder: {exc}\n")
        return dataclasses.replace(config, autoencoder="numpy")
    return config


def _table(report: dict[str, Any], detector: str) -> str:
    names = list(DETECTORS) if detector == "all" else [detector] if detector in DETECTORS else []
    if detector in {"all", "ensemble"}:
        names += [f"{n}-of-3" for n in (1, 2, 3)]
    lines = [f"{'detector':<14}{'F1':>7}{'FAR %':>8}{'MAR %':>8}{'TP':>7}{'FP':>7}{'FN':>7}"]
    for name in names:
        r = report["results"][name]
        mark = " *" if name == f"{report['k']}-of-3" else ""
        lines.append(f"{name + mark:<14}{r['f1']:>7.3f}{r['far']:>8.1f}{r['mar']:>8.1f}"
                     f"{r['tp']:>7}{r['fp']:>7}{r['fn']:>7}")  # fmt: skip
    lines.append(f"channels: {', '.join(report['channels'])}; model {report['model_version']}")
    lines.append(f"{report['files']} files, {report['scored_rows']} scored rows, "
                 f"fit {report['fit_s_per_file']} s/file, {report['us_per_row']} µs/row "
                 f"streamed, state {report['state_bytes_per_sensor']} B/sensor "
                 f"(* = the alert rule, k={report['k']})")  # fmt: skip
    return "\n".join(lines)


def evaluate_command(args: argparse.Namespace) -> int:
    """``edgewatch evaluate``: print the table, then the JSON line."""
    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        from dataflows.skab_plot import require_matplotlib  # noqa: PLC0415

        require_matplotlib()
        plot.mkdir(parents=True, exist_ok=True)
    names = ("autoencoder", "tflite_model", "threshold")
    extra = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "ae_steps", None) is not None:
        extra["epochs"] = args.ae_steps
    if getattr(args, "context", None):
        extra["context"] = tuple(p.strip() for p in args.context.split(",") if p.strip())
    if extra.get("threshold") == "fixed":
        items = (
            (args.threshold_factors or "").split(",") if args.threshold_factors else SEED_FACTORS
        )
        extra["threshold_factors"] = parse_factors([i for i in items if i.strip()])
        extra.setdefault("context", ("season", "hour"))
    try:
        report = evaluate(Path(args.dir), k=args.k, train_rows=args.train_rows, plot=plot,
                          **extra)  # fmt: skip
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"edgewatch evaluate: {exc}\n")
        return 2
    sys.stdout.write(_table(report, args.detector) + "\n")
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0
