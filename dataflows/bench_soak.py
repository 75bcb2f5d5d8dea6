"""``edgewatch bench --soak``: does memory level off while sensors come and go?

A churn of sensors runs through the real air-quality flow for a bounded wall time: a
window of ``active`` sensors slides over all ``sensors`` ids during the run, so every
sensor sends for a while and then falls silent for good. Silent sensors must lose their
impute and Half-Space Trees state after ``idle_timeout_s`` (wall time, see
:class:`operators.keyed.IdleEvictingLogic`), or the resident set size (RSS) grows with
every sensor ever seen. Messages are made on the fly (JSON bytes, as an MQTT source hands
them over, with the current time as event and receive time), so the source itself holds
nothing.

RSS is read from ``/proc/self/statm`` once a second and printed every ``report_s``
seconds; the last line is one JSON object with the curve and ``levelled_off``: whether
the least-squares RSS slope over the last third of the run, projected over that third,
stays under 5 % of its mean RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

from dataflows.air_quality import build_flow
from dataflows.settings import Settings
from operators.records import RawMessage, Scored

__all__ = ["ChurnSource", "levelled_off", "rss_mb", "soak_command"]

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux ``/proc/self/statm``; 0.0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE_MB
    except OSError:
        return 0.0


class _ChurnPartition(StatefulSourcePartition[RawMessage, None]):
    def __init__(self, src: ChurnSource) -> None:
        self._src = src
        self._rng = random.Random(src.seed)
        self._start = time.monotonic()
        self._clock_us = 0  # event times strictly increase (the order guard refuses repeats)

    def next_batch(self) -> list[RawMessage]:
        src, rng = self._src, self._rng
        done = (time.monotonic() - self._start) / src.seconds
        if done >= 1.0:
            raise StopIteration
        active = min(src.active, src.sensors)
        first = int((src.sensors - active) * done)
        now = time.time()
        batch: list[RawMessage] = []
        for _ in range(src.batch_size):
            sid = first + rng.randrange(active)
            self._clock_us = max(self._clock_us + 1, int(now * 1e6))
            body = {"sensor_id": f"soak-{sid}", "ts": self._clock_us / 1e6,
                    "values": {"pm1.0_cf_1": rng.uniform(0, 40), "temperature": 20.0}}  # fmt: skip
            batch.append(("soak", orjson.dumps(body), now))
        src.events += len(batch)
        src.high_water = max(src.high_water, first + active)
        return batch

    def snapshot(self) -> None:
        return None


class ChurnSource(FixedPartitionedSource[RawMessage, None]):
    """Readings from a sliding window of ``active`` sensors over ``sensors`` ids.

    One partition, ``batch_size`` messages per batch, as fast as the flow takes them,
    for ``seconds`` of wall time. ``events`` counts the messages made and ``high_water``
    the sensors that have sent so far.
    """

    def __init__(
        self, sensors: int, seconds: float, active: int = 1000, batch_size: int = 1000,
        seed: int = 0,
    ) -> None:  # fmt: skip
        self.sensors, self.seconds, self.active = sensors, seconds, active
        self.batch_size, self.seed = batch_size, seed
        self.events = self.high_water = 0

    def list_parts(self) -> list[str]:
        """One partition."""
        return ["churn"]

    def build_part(self, step_id: str, for_part: str, resume: None) -> _ChurnPartition:
        """Build the partition (a soak does not resume)."""
        return _ChurnPartition(self)


def levelled_off(curve: list[tuple[float, float]], tolerance: float = 0.05) -> tuple[bool, float]:
    """Whether RSS stopped growing, and the slope (MiB/min) over the curve's last third.

    >>> levelled_off([(t, 100.0 + min(t, 10.0)) for t in range(30)])
    (True, 0.0)
    >>> levelled_off([(t, 100.0 + t) for t in range(30)])
    (False, 60.0)
    """
    tail = curve[len(curve) - max(2, len(curve) // 3) :]
    if len(tail) < 2:
        return True, 0.0
    n = len(tail)
    mt, mr = sum(t for t, _ in tail) / n, sum(r for _, r in tail) / n
    var = sum((t - mt) ** 2 for t, _ in tail)
    slope = sum((t - mt) * (r - mr) for t, r in tail) / var if var else 0.0
    growth = slope * (tail[-1][0] - tail[0][0])
    return growth <= tolerance * mr, round(slope * 60.0, 3)


def _sample(curve: list[tuple[float, float]], stop: threading.Event, every: float) -> None:
    t0 = time.monotonic()
    while not stop.wait(every):
        curve.append((round(time.monotonic() - t0, 2), round(rss_mb(), 1)))


def soak_command(args: argparse.Namespace) -> int:
    """Run the soak and print the RSS curve; the last line is one JSON object."""
    say: Callable[[str], Any] = (lambda _: None) if args.json else sys.stdout.write
    sensors, seconds, idle = args.soak, args.seconds, args.idle_timeout
    source = ChurnSource(sensors, seconds, active=min(args.active, sensors),
                         batch_size=args.batch_size)  # fmt: skip
    settings = dataclasses.replace(Settings.load(env={}), alerts_path="", deadletter_path="",
                                   idle_timeout_s=idle)  # fmt: skip
    scored = [0]

    def count(batch: list[tuple[str, Scored]]) -> None:
        scored[0] += sum(len(s) for _, s in batch)

    say(f"edgewatch bench --soak: {sensors:,} sensors, {source.active:,} at a time, "
        f"{seconds:g} s, idle timeout {idle:g} s, 1 worker\n")  # fmt: skip
    curve: list[tuple[float, float]] = [(0.0, round(rss_mb(), 1))]
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(curve, stop, 1.0), daemon=True)
    sampler.start()
    flow = build_flow(settings, source=source, on_scored=count)
    runner = threading.Thread(target=cast(Callable[[Dataflow], None], run_main), args=(flow,))
    runner.start()
    seen, due = 0, 0.0
    while runner.is_alive():
        runner.join(0.5)
        for t, mb in curve[seen:]:
            if t >= due:
                say(f"  t={t:6.1f} s  rss={mb:8.1f} MiB  sensors seen {source.high_water:,}\n")
                due = t + args.report_every
        seen = len(curve)
    stop.set()
    sampler.join()
    curve.append((curve[-1][0], round(rss_mb(), 1)))
    flat, slope = levelled_off(curve[:-1])
    result = {
        "soak": True,
        "sensors": sensors,
        "sensors_seen": source.high_water,
        "active": source.active,
        "seconds": seconds,
        "idle_timeout_s": idle,
        "events": source.events,
        "scored": scored[0],
        "rss_mb": [list(p) for p in curve],
        "rss_start_mb": curve[0][1],
        "rss_peak_mb": max(mb for _, mb in curve),
        "rss_end_mb": curve[-1][1],
        "last_third_slope_mb_per_min": slope,
        "levelled_off": flat,
    }
    say(f"  RSS {curve[0][1]:.0f} -> peak {result['rss_peak_mb']:.0f} -> end {curve[-1][1]:.0f}"
        f" MiB; last third {slope:+.1f} MiB/min; levelled off: {flat}\n")  # fmt: skip
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0
