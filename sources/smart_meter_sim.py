"""A deterministic, labelled smart-meter simulator: households' active power at 30 s.

Each household's load (kW) is a base load following a daily rhythm (low at night, peaks in
the morning and evening) plus appliance signatures switching on and off: a fridge
compressor cycling all day, and kettle, oven and washing-machine runs placed more often
when people are awake. Labelled anomaly episodes are injected after a clean day:

- ``stuck_appliance``: a 1.5–3 kW heating element stays on, without cycling, for hours;
- ``theft``: the meter records only 10–35 % of the real load for hours (a bypass);
- ``spike``: 3–7 isolated readings 3–8 times the household's peak within an episode;
  only the spikes are labelled.

Each household draws from its own generator seeded by ``(seed, household)``, so the output
depends on the configuration only.

>>> sim = SmartMeterSimulator(SmartMeterConfig(households=2, duration_s=3600))
>>> power, labels = sim.household(0)
>>> power.shape, labels.shape, int(labels.max())
((120,), (120,), 0)
>>> rows = list(sim.payloads())
>>> len(rows), rows[0]["sensor_id"], rows[1]["sensor_id"], rows[2]["ts"]
(240, 'meter-0', 'meter-1', 1711929630)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = ["ANOMALY_KINDS", "ORIGIN", "SmartMeterConfig", "SmartMeterSimulator", "SmartMeterSource"]

ORIGIN = "smart_meter_sim"
"""The origin of every message of :class:`SmartMeterSource`."""

ANOMALY_KINDS = ("stuck_appliance", "theft", "spike")
"""Injected anomaly kinds; a label ``i > 0`` means ``ANOMALY_KINDS[i - 1]``."""

_DAY = 86_400.0
# Appliances: (kW, minutes per run, runs per day).
_APPLIANCES = ((2.2, 4, 5.0), (2.0, 45, 0.8), (0.5, 90, 0.5))  # kettle, oven, washer


@dataclass(frozen=True)
class SmartMeterConfig:
    """What households to simulate.

    Attributes:
        households: Number of households (``meter-0``, ``meter-1``, …).
        interval_s: Seconds between two readings (the paper's meters: 30).
        duration_s: Simulated seconds per household.
        seed: Seed of every random draw.
        start: Event time of the first reading (tz-aware).
        anomaly_rate: Fraction of readings inside anomaly episodes, after the first day.
    """

    households: int = 8
    interval_s: int = 30
    duration_s: int = 4 * 86_400
    seed: int = 5
    start: datetime = field(default_factory=lambda: datetime(2024, 4, 1, tzinfo=timezone.utc))
    anomaly_rate: float = 0.2

    def __post_init__(self) -> None:
        if self.households < 1 or self.interval_s < 1 or self.duration_s < 0:
            msg = "households and interval_s must be positive, duration_s not negative"
            raise ValueError(msg)
        if not 0.0 <= self.anomaly_rate <= 0.6:
            msg = "anomaly_rate must be within [0, 0.6]"
            raise ValueError(msg)

    @property
    def samples(self) -> int:
        """Readings per household."""
        return self.duration_s // self.interval_s


class SmartMeterSimulator:
    """Simulated households; see the module docstring for what they contain."""

    def __init__(self, config: SmartMeterConfig) -> None:
        self.config = config

    def household(self, index: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
        """One household's power (kW) and labels (0 normal, ``i``: ``ANOMALY_KINDS[i-1]``)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, index])
        n = cfg.samples
        t = cfg.start.timestamp() + np.arange(n) * cfg.interval_s
        hour = (t % _DAY) / 3600.0
        rhythm = 0.6 * np.exp(-(((hour - 7.5) / 1.5) ** 2)) + np.exp(-(((hour - 19.5) / 2.5) ** 2))
        base = rng.uniform(0.08, 0.2) + rng.uniform(0.2, 0.5) * rhythm
        power = base * (1 + 0.05 * rng.standard_normal(n))
        power += _fridge(rng, n, cfg.interval_s)
        for kw, minutes, per_day in _APPLIANCES:
            power += _runs(rng, n, cfg.interval_s, kw, minutes, per_day, 0.3 + rhythm)
        labels = np.zeros(n, dtype=np.int8)
        power = _inject(rng, power, labels, cfg)
        return power, labels

    def payloads(self) -> Iterator[dict[str, Any]]:
        """Every reading as ``{"sensor_id", "ts", "power_kw", "label"}``, in time order."""
        cfg = self.config
        start = int(cfg.start.timestamp())
        data = [self.household(h) for h in range(cfg.households)]
        for i in range(cfg.samples):
            ts = start + i * cfg.interval_s
            for h, (power, labels) in enumerate(data):
                yield {
                    "sensor_id": f"meter-{h}",
                    "ts": ts,
                    "power_kw": round(float(power[i]), 4),
                    "label": int(labels[i]),
                }


class _MeterPartition(StatefulSourcePartition[tuple[str, dict[str, Any], float], int]):
    def __init__(self, sim: SmartMeterSimulator, index: int, batch: int, resume: int) -> None:
        self._sim, self._index, self._batch, self._next = sim, index, batch, resume
        self._power: list[float] | None = None

    def next_batch(self) -> list[tuple[str, dict[str, Any], float]]:
        if self._power is None:
            self._power = np.round(self._sim.household(self._index)[0], 4).tolist()
        if self._next >= len(self._power):
            raise StopIteration
        cfg, now, sid = self._sim.config, time.time(), f"meter-{self._index}"
        start, stop = self._next, min(self._next + self._batch, len(self._power))
        t0 = int(cfg.start.timestamp())
        self._next = stop
        return [(ORIGIN, {"sensor_id": sid, "ts": t0 + i * cfg.interval_s,
                          "values": {"power_kw": self._power[i]}}, now)
                for i in range(start, stop)]  # fmt: skip

    def snapshot(self) -> int:
        return self._next


class SmartMeterSource(FixedPartitionedSource[tuple[str, dict[str, Any], float], int]):
    """Bytewax source of the simulated households as generic readings of ``power_kw``.

    Yields ``("smart_meter_sim", {"sensor_id", "ts", "values": {"power_kw"}}, received_at)``;
    the labels stay with :meth:`SmartMeterSimulator.household`. Parallelism: one partition
    per household (``meter-<i>``), its readings in event-time order. Delivery:
    exactly-once with recovery (the snapshot is the number of readings emitted).
    """

    def __init__(self, config: SmartMeterConfig, batch_size: int = 1000) -> None:
        self.config, self.batch_size = config, batch_size

    def list_parts(self) -> list[str]:
        """One partition per household."""
        return [f"meter-{h}" for h in range(self.config.households)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _MeterPartition:
        """Build a household's partition, skipping the readings it already emitted."""
        index = int(for_part.removeprefix("meter-"))
        return _MeterPartition(SmartMeterSimulator(self.config), index, self.batch_size,
                               resume_state or 0)  # fmt: skip


def _fridge(rng: np.random.Generator, n: int, interval_s: int) -> npt.NDArray[np.float64]:
    """A compressor: ~0.12 kW on for a third of a 40–60 minute cycle."""
    period = rng.uniform(40, 60) * 60 / interval_s
    phase = (np.arange(n) + rng.uniform(0, period)) % period
    return np.where(phase < period / 3, rng.uniform(0.1, 0.15), 0.0)


def _runs(
    rng: np.random.Generator,
    n: int,
    interval_s: int,
    kw: float,
    minutes: float,
    per_day: float,
    weight: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Rectangular appliance runs, started more often where ``weight`` is high."""
    out = np.zeros(n)
    length = max(1, round(minutes * 60 / interval_s))
    p = per_day * interval_s / _DAY * weight / weight.mean()
    for s in np.flatnonzero(rng.random(n) < p):
        out[s : s + length] = kw * rng.uniform(0.9, 1.1)
    return out


def _inject(
    rng: np.random.Generator,
    power: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int8],
    cfg: SmartMeterConfig,
) -> npt.NDArray[np.float64]:
    """Place anomaly episodes, kinds in turn, after the first day; labels set in place."""
    n, step = power.size, cfg.interval_s
    first = math.ceil(_DAY / step)
    budget = cfg.anomaly_rate * max(0, n - first)
    out, peak, k = power.copy(), float(np.percentile(power, 99)), 0
    for _ in range(1000):
        if labels.astype(bool).sum() >= budget or n - first <= 2000:
            break
        kind = ANOMALY_KINDS[k % len(ANOMALY_KINDS)]
        length = int(rng.integers(3600, 4 * 3600) / step)
        s = int(rng.integers(first, n - length))
        if labels[max(0, s - 240) : s + length + 240].any():
            k += 1
            continue
        seg: slice | npt.NDArray[np.int64] = slice(s, s + length)
        if kind == "stuck_appliance":
            out[seg] += rng.uniform(1.5, 3.0)
        elif kind == "theft":
            out[seg] *= rng.uniform(0.1, 0.35)
        else:
            hits = s + rng.choice(length, size=int(rng.integers(3, 8)), replace=False)
            out[hits] = peak * rng.uniform(3, 8, hits.size)
            seg = hits  # a spike labels its readings only
        labels[seg] = ANOMALY_KINDS.index(kind) + 1
        k += 1
    return out
