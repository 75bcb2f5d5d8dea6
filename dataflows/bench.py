"""``edgewatch bench``: throughput of the real air-quality dataflow, and of a River baseline.

Events are simulated PurpleAir rows serialised to JSON bytes in memory beforehand (what
an MQTT source hands over), then run through :func:`dataflows.air_quality.build_flow` on
one Bytewax worker. The per-stage breakdown times the same stage code outside the
runtime over the same events and batches; what remains of the flow's wall time is the
Bytewax runtime plus sinks. ``--baseline`` also runs the idiomatic River flow — River
``StatImputer`` and ``HalfSpaceTrees`` per sensor inside ``op.stateful_map`` — over the
same events, prints the ratio, and checks both flows raise the same alerts.

``--detector autoencoder|lstm`` measures TFLite inference on one interpreter thread
instead: the autoencoder batched (one invoke for many sensors' rows) against one invoke per
row, the LSTM per 200-reading window (its fused op is exported at batch 1) against the
paper's 935 µs on a Raspberry Pi 3B.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

from dataflows.air_quality import build_flow, hst_factory
from dataflows.settings import Settings
from operators.alert import alerts_of
from operators.impute import RunningMeanImputer
from operators.parse import parse_many
from operators.records import Alert, RawMessage, Reading, Scored
from operators.score import features_matrix
from operators.threshold import apply_threshold
from sinks.memory import CallbackSink
from sources.simulator import Simulator, SimulatorConfig

__all__ = ["bench_command", "make_events", "model_bench_command"]


class _MemoryPartition(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, events: list[RawMessage], batch_size: int, start: int) -> None:
        self._events, self._size, self._pos = events, batch_size, start

    def next_batch(self) -> list[RawMessage]:
        if self._pos >= len(self._events):
            raise StopIteration
        batch = self._events[self._pos : self._pos + self._size]
        self._pos += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._pos


class MemorySource(FixedPartitionedSource[RawMessage, int]):
    """Pre-built raw messages, one partition, ``batch_size`` per batch (benchmarks)."""

    def __init__(self, events: list[RawMessage], batch_size: int) -> None:
        self.events, self.batch_size = events, batch_size

    def list_parts(self) -> list[str]:
        """One partition."""
        return ["memory"]

    def build_part(self, step_id: str, for_part: str, resume: int | None) -> _MemoryPartition:
        """Build the partition, resuming at an index."""
        return _MemoryPartition(self.events, self.batch_size, resume or 0)


def make_events(n: int, sensors: int) -> list[RawMessage]:
    """``n`` simulated PurpleAir rows from ``sensors`` sensors, as JSON bytes."""
    per_sensor = -(-n // sensors)
    config = SimulatorConfig(sensors=sensors, interval_s=120, duration_s=per_sensor * 120)
    now = time.time()
    out: list[RawMessage] = []
    for payload in Simulator(config).payloads():
        out.append(("bench", orjson.dumps(payload), now))
        if len(out) == n:
            break
    return out


def _run_ours(events: list[RawMessage], settings: Settings, batch: int) -> tuple[float, set[Any]]:
    alerts: set[tuple[str, int]] = set()

    def collect(items: list[Alert]) -> None:
        alerts.update((a.sensor_id, int(a.ts.timestamp())) for a in items)

    flow = build_flow(settings, source=MemorySource(events, batch), on_alerts=collect)
    start = time.perf_counter()
    cast(Callable[[Dataflow], None], run_main)(flow)
    return time.perf_counter() - start, alerts


def _stages(events: list[RawMessage], settings: Settings, batch: int) -> dict[str, float]:
    """Seconds spent in each stage's own code over the same events and batches."""
    spent: dict[str, float] = defaultdict(float)
    imputers: dict[str, RunningMeanImputer] = {}
    models: dict[str, Any] = {}
    new_model = hst_factory(settings)
    now = datetime.now(timezone.utc)
    clock = time.perf_counter
    for lo in range(0, len(events), batch):
        t0 = clock()
        readings = [r for r in parse_many(events[lo : lo + batch]) if type(r) is Reading]
        t1 = clock()
        groups: dict[str, list[Reading]] = defaultdict(list)
        for r in readings:
            groups[r.sensor_id].append(r)
        t2 = clock()
        spent["parse"] += t1 - t0
        spent["key"] += t2 - t1
        for sid, group in groups.items():
            t2 = clock()
            imp = imputers.get(sid) or imputers.setdefault(
                sid, RunningMeanImputer(settings.impute_fields)
            )
            rs = imp.transform_many(group)
            t3 = clock()
            model = models.get(sid) or models.setdefault(sid, new_model())
            scores = model.score_learn_many(features_matrix(rs, settings.hst_features))
            t4 = clock()
            alerts_of(apply_threshold(Scored(tuple(rs), "hst", scores), settings.threshold),
                      "air_quality", now)  # fmt: skip
            t5 = clock()
            spent["impute"] += t3 - t2
            spent["score"] += t4 - t3
            spent["threshold+alert"] += t5 - t4
    return dict(spent)


def _river_flow(
    events: list[RawMessage], settings: Settings, batch: int, on_alert: Callable[[Any], None]
) -> Dataflow:
    """The idiomatic River version: per-sensor River models inside ``op.stateful_map``."""
    from river import anomaly, preprocessing, stats  # noqa: PLC0415

    fields, feats = settings.impute_fields, settings.hst_features

    def detect(state: Any, row: dict[str, Any]) -> tuple[Any, tuple[dict[str, Any], float]]:
        if state is None:
            state = (
                preprocessing.StatImputer(*[(f, stats.Mean()) for f in fields]),
                anomaly.HalfSpaceTrees(
                    n_trees=settings.hst_trees,
                    height=settings.hst_height,
                    window_size=settings.hst_window,
                    limits=settings.hst_limits,
                    seed=settings.hst_seed,
                ),
            )
        imputer, hst = state
        x = {f: row.get(f) for f in fields}
        imputer.learn_one(x)
        x = imputer.transform_one(x)
        features = {f: x[f] for f in feats}
        score = hst.score_one(features)
        hst.learn_one(features)
        return state, (row, score)

    flow = Dataflow("air_quality_river_baseline")
    rows = op.map("parse", op.input("input", flow, MemorySource(events, batch)),
                  lambda m: orjson.loads(cast(bytes, m[1])))  # fmt: skip
    keyed = op.key_on("key", rows, lambda row: str(row["sensor_index"]))
    scored = op.stateful_map("detect", keyed, detect)
    alerts = op.filter("alerts", scored, lambda kv: kv[1][1] > settings.threshold)
    op.output("out", alerts, CallbackSink(on_alert))
    return flow


def _run_baseline(
    events: list[RawMessage], settings: Settings, batch: int
) -> tuple[float, set[Any]]:
    alerts: set[tuple[str, int]] = set()

    def collect(items: list[Any]) -> None:
        alerts.update((k, int(v[0]["last_seen"])) for k, v in items)

    flow = _river_flow(events, settings, batch, collect)
    start = time.perf_counter()
    cast(Callable[[Dataflow], None], run_main)(flow)
    return time.perf_counter() - start, alerts


def bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures; the last line is one JSON object."""
    say: Callable[[str], Any] = (lambda _: None) if args.json else sys.stdout.write
    n, sensors, batch = args.events, args.sensors, args.batch_size
    say(f"edgewatch bench: {n:,} events from {sensors} sensors, batch {batch}, 1 worker\n")
    t0 = time.perf_counter()
    events = make_events(n, sensors)
    say(f"  generated {len(events):,} JSON events in {time.perf_counter() - t0:.1f} s\n")
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(
            Settings.load(env={}), alerts_path="", deadletter_path=str(Path(tmp) / "dl.jsonl")
        )
        wall, alerts = _run_ours(events, settings, batch)
    rate = len(events) / wall
    stages = _stages(events, settings, batch)
    result: dict[str, Any] = {
        "events": len(events),
        "sensors": sensors,
        "batch_size": batch,
        "workers": 1,
        "seconds": round(wall, 4),
        "events_per_s": round(rate, 1),
        "alerts": len(alerts),
        "stages_us_per_event": {k: round(v / len(events) * 1e6, 3) for k, v in stages.items()},
    }
    say(f"  edgewatch flow: {rate:,.0f} events/s ({wall:.2f} s), {len(alerts):,} alerts\n")
    runtime = wall - sum(stages.values())
    result["stages_us_per_event"]["bytewax+sinks"] = round(runtime / len(events) * 1e6, 3)
    for stage, us in result["stages_us_per_event"].items():
        say(f"    {stage:<16} {us:8.3f} µs/event\n")
    if args.baseline:
        say("  running the River + op.stateful_map baseline…\n")
        b_wall, b_alerts = _run_baseline(events, settings, batch)
        b_rate = len(events) / b_wall
        result |= {
            "baseline": "river.HalfSpaceTrees + StatImputer per sensor in op.stateful_map",
            "baseline_seconds": round(b_wall, 4),
            "baseline_events_per_s": round(b_rate, 1),
            "speedup": round(rate / b_rate, 2),
            "alerts_match": alerts == b_alerts,
        }
        say(f"  baseline: {b_rate:,.0f} events/s ({b_wall:.2f} s), {len(b_alerts):,} alerts\n")
        say(f"  speedup: {rate / b_rate:.1f}x; same alerts: {alerts == b_alerts}\n")
    result |= {"python": platform.python_version(), "bytewax": version("bytewax")}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


def _timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _bench_autoencoder(n: int, sensors: int) -> dict[str, Any]:
    from models.autoencoder import AutoencoderDetector  # noqa: PLC0415
    from operators.tflite_score import tflite_detector_factory  # noqa: PLC0415

    model = tflite_detector_factory("autoencoder")[0]
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 4)).astype(np.float32)
    batched = _timed(lambda: model.predict(z))
    few = z[: min(n, 5000)]
    single = _timed(lambda: [model.predict(few[i : i + 1]) for i in range(len(few))], 1)
    raw = rng.standard_normal((n, 3)) * 0.01 + np.array([0.2, 90.0, 0.1])
    per = -(-n // sensors)
    detectors = [AutoencoderDetector(model) for _ in range(sensors)]
    stream = _timed(
        lambda: [d.score_learn_many(raw[i * per : (i + 1) * per]) for i, d in enumerate(detectors)],
        1,
    )
    return {
        "samples": n,
        "invoke_batched_samples_per_s": round(n / batched, 1),
        "invoke_per_sample_samples_per_s": round(len(few) / single, 1),
        "batched_speedup": round((n / batched) / (len(few) / single), 2),
        "detector_samples_per_s": round(n / stream, 1),
    }


def _bench_lstm(n: int, sensors: int) -> dict[str, Any]:
    from models.lstm import LSTMDetector  # noqa: PLC0415
    from operators.tflite_score import tflite_detector_factory  # noqa: PLC0415

    model = tflite_detector_factory("lstm")[0]
    window = model.metadata.window
    rng = np.random.default_rng(0)
    windows = rng.random((n, window, 1), dtype=np.float32)
    invoke = _timed(lambda: model.predict(windows))
    per = max(1, n // sensors)
    power = rng.random((sensors, per + window - 1)) * 3
    detectors = [LSTMDetector(model) for _ in range(sensors)]
    stream = _timed(
        lambda: [d.score_learn_many(p) for d, p in zip(detectors, power, strict=True)], 1
    )
    us, det_us = invoke / n * 1e6, stream / (sensors * per) * 1e6
    return {
        "windows": n,
        "window": window,
        "model_batch": model.fixed_batch,
        "invoke_us_per_window": round(us, 2),
        "inferences_per_s": round(n / invoke, 1),
        "detector_us_per_reading": round(det_us, 2),
        "paper_rpi3b_us_per_window": 935,
        "vs_paper": round(935 / us, 1),
    }


def model_bench_command(args: argparse.Namespace) -> int:
    """Benchmark a TFLite detector's inference; the last line printed is one JSON object."""
    say: Callable[[str], Any] = (lambda _: None) if args.json else sys.stdout.write
    n = args.events if args.detector == "autoencoder" else min(args.events, 20_000)
    say(f"edgewatch bench --detector {args.detector}: {n:,} rows, 1 interpreter thread\n")
    if args.detector == "autoencoder":
        result = _bench_autoencoder(n, args.sensors)
    else:
        result = _bench_lstm(n, args.sensors)
    for k, v in result.items():
        say(f"  {k:<34} {v:,}\n")
    result = {"detector": args.detector, **result, "python": platform.python_version()}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0
