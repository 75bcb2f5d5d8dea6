"""A deterministic, labelled fleet of PurpleAir-like sensors.

Every sensor has its own baseline ``pm1.0_cf_1`` level, a daily rhythm, smooth noise and
correlated temperature (°F), humidity (%), pressure (hPa), ``pm2.5_cf_1``,
``pm10.0_cf_1``, ``pm2.5_atm``, ``rssi`` and ``uptime`` (seconds). Labelled anomaly
episodes are injected after a clean warm-up: ``spike`` (``pm1.0_cf_1`` jumps above 150),
``drift`` (it ramps up over 20–60 readings), ``stuck`` (it repeats one exact value for
20–60 readings) and ``dropout`` (temperature, humidity, pressure and ``pm1.0_cf_1`` are
``None`` for a few readings).

Each sensor draws from its own generator seeded by ``(seed, sensor)`` and the episode
plan from one seeded by ``seed``, so the output depends on the configuration only, never
on how the fleet is split into partitions.

The labelled fleet of misbehaving MQTT devices (:class:`DeviceFleet`, its source and
:data:`MISBEHAVIOUR_KINDS`) lives in :mod:`sources.security_sim` and is re-exported here.

>>> sim = Simulator(SimulatorConfig(sensors=2, duration_s=3600))
>>> rows = list(sim.payloads())
>>> len(rows), rows[0]["sensor_index"], rows[1]["sensor_index"], rows[2]["last_seen"]
(60, 1000, 1001, 1711929720)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from sources.security_sim import KINDS as MISBEHAVIOUR_KINDS
from sources.security_sim import DeviceFleet, DeviceFleetConfig, DeviceFleetSource, Misbehaviour

__all__ = [
    "FIRST_SENSOR_INDEX",
    "KINDS",
    "MISBEHAVIOUR_KINDS",
    "ORIGIN",
    "DeviceFleet",
    "DeviceFleetConfig",
    "DeviceFleetSource",
    "Misbehaviour",
    "Simulator",
    "SimulatorConfig",
    "SimulatorSource",
]

KINDS = ("spike", "drift", "stuck", "dropout")
"""Every kind of injected anomaly episode."""
ORIGIN = "simulator"
"""The origin of every simulator message."""
FIRST_SENSOR_INDEX = 1000
"""``sensor_index`` of the first simulated sensor; the others follow."""

SimMessage = tuple[str, dict[str, Any], float]

# Measured fields in matrix column order, and which of them PurpleAir reports as ints.
_FIELDS = ("rssi", "uptime", "humidity", "temperature", "pressure",
           "pm1.0_cf_1", "pm2.5_cf_1", "pm10.0_cf_1", "pm2.5_atm")  # fmt: skip
_INTS = (True, True, True, True, False, False, False, False, False)
_PM = slice(5, 9)
_DROPOUT_COLS = [2, 3, 4, 5]  # humidity, temperature, pressure, pm1.0_cf_1
_LENGTHS = {"spike": (1, 3), "drift": (20, 60), "stuck": (20, 60), "dropout": (1, 4)}
_CHUNK = 256  # readings per sensor converted to Python values at a time
_DAY = 86_400.0


@dataclass(frozen=True)
class SimulatorConfig:
    """What fleet to simulate.

    Attributes:
        sensors: Number of sensors (``sensor_index`` 1000, 1001, …).
        interval_s: Seconds between two readings of one sensor.
        duration_s: Simulated seconds; each sensor gives ``duration_s // interval_s``
            readings.
        seed: Seed of every random draw.
        start: Event time of the first reading (tz-aware).
        anomaly_rate: Fraction of all readings inside injected episodes.
        kinds: Episode kinds to inject, a subset of :data:`KINDS`.
        warmup_s: Seconds at the start of every sensor that stay clean.
    """

    sensors: int = 50
    interval_s: int = 120
    duration_s: int = 86_400
    seed: int = 7
    start: datetime = field(default_factory=lambda: datetime(2024, 4, 1, tzinfo=timezone.utc))
    anomaly_rate: float = 0.015
    kinds: tuple[str, ...] = KINDS
    warmup_s: int = 7_200

    def __post_init__(self) -> None:
        problems = [
            (self.sensors >= 1, "sensors must be at least 1"),
            (self.interval_s >= 1, "interval_s must be at least 1"),
            (self.duration_s >= 0, "duration_s must not be negative"),
            (0.0 <= self.anomaly_rate <= 0.5, "anomaly_rate must be within [0, 0.5]"),
            (set(self.kinds) <= set(KINDS), f"kinds must be among {', '.join(KINDS)}"),
            (self.start.tzinfo is not None, "start must be a tz-aware datetime"),
        ]
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)

    @property
    def readings_per_sensor(self) -> int:
        """How many readings each sensor gives."""
        return self.duration_s // self.interval_s

    @property
    def start_epoch(self) -> int:
        """Event time of the first reading, in whole seconds since the epoch."""
        return int(self.start.timestamp())


@dataclass(frozen=True)
class _Episode:
    sensor: int
    kind: str
    start: int
    length: int
    magnitude: float


def _plan(cfg: SimulatorConfig) -> list[_Episode]:
    """Place non-overlapping episodes, kinds in turn, until ``anomaly_rate`` is met."""
    n, kinds = cfg.readings_per_sensor, cfg.kinds
    budget = round(cfg.anomaly_rate * cfg.sensors * n)
    warm = max(1, math.ceil(cfg.warmup_s / cfg.interval_s))
    gap = math.ceil(3600 / cfg.interval_s)  # keep episodes an hour apart
    rng = np.random.default_rng([cfg.seed, 0])
    out: list[_Episode] = []
    busy: dict[int, list[tuple[int, int]]] = {}  # sensor -> (first, end) readings taken
    labelled = tries = 0
    while kinds and labelled < budget and tries < 100 + 20 * budget:
        tries += 1
        kind = kinds[len(out) % len(kinds)]
        lo, hi = _LENGTHS[kind]
        length = int(rng.integers(lo, hi + 1))
        sensor = int(rng.integers(cfg.sensors))
        magnitude = float(rng.uniform(8.0, 40.0) if kind == "spike" else rng.uniform(4.0, 10.0))
        if n - length < warm:
            continue
        start = int(rng.integers(warm, n - length + 1))
        taken = busy.setdefault(sensor, [])
        if any(start - gap < end and first < start + length + gap for first, end in taken):
            continue
        taken.append((start, start + length))
        out.append(_Episode(sensor, kind, start, length, magnitude))
        labelled += length
    return out


def _smooth(rng: np.random.Generator, n: int, sd: float, width: int = 9) -> np.ndarray:
    """Smooth noise with standard deviation ``sd``: a moving average of white noise."""
    white = rng.normal(0.0, sd * math.sqrt(width), n + width - 1)
    return np.convolve(white, np.ones(width) / width, mode="valid")


def _sensor_matrix(cfg: SimulatorConfig, sensor: int, episodes: Sequence[_Episode]) -> np.ndarray:
    """All readings of one sensor as an ``(n, len(_FIELDS))`` matrix; NaN marks missing."""
    rng = np.random.default_rng([cfg.seed, 1, sensor])
    n = cfg.readings_per_sensor
    t = cfg.start_epoch + np.arange(n, dtype=np.float64) * cfg.interval_s
    day = 2 * math.pi * (t % _DAY) / _DAY
    base = math.exp(rng.uniform(math.log(3.0), math.log(30.0)))
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    rhythm = 1 + rng.uniform(0.2, 0.35) * np.cos(day - p1) + 0.1 * np.cos(2 * (day - p2))
    pm1 = base * rhythm * np.exp(_smooth(rng, n, 0.15) + rng.normal(0.0, 0.04, n))
    temp_mean, temp_amp, temp_phase = rng.uniform(50, 80), rng.uniform(5, 12), rng.uniform(0, 7)
    temp = temp_mean + temp_amp * np.cos(day - temp_phase) + _smooth(rng, n, 0.8)
    hum = rng.uniform(30, 70) - 1.2 * (temp - temp_mean) + _smooth(rng, n, 1.5)
    slow = 2 * math.pi * (t - t[0]) / (3 * _DAY)
    pres = rng.uniform(990, 1025) + 3 * np.sin(slow + rng.uniform(0, 7)) + _smooth(rng, n, 0.2)
    rssi = rng.uniform(-80, -45) + rng.normal(0.0, 2.0, n)
    uptime = rng.integers(0, 5 * 86_400) + (t - t[0])
    ratio25 = rng.uniform(1.3, 1.7) * np.exp(rng.normal(0.0, 0.03, n))
    ratio10 = rng.uniform(1.1, 1.4) * np.exp(rng.normal(0.0, 0.05, n))
    for e in episodes:  # spikes and drifts change pm1 before the other PM channels follow it
        window = slice(e.start, e.start + e.length)
        if e.kind == "spike":
            peak = max(base * e.magnitude, 190.0 + 5.0 * e.magnitude)
            pm1[window] = peak * 0.9 ** np.arange(e.length)
        elif e.kind == "drift":
            pm1[window] += np.linspace(0.0, base * e.magnitude + 40.0, e.length + 1)[1:]
    pm25 = pm1 * ratio25
    pm25_atm = np.where(pm25 < 25.0, pm25, 25.0 + (pm25 - 25.0) * 0.67)
    m = np.column_stack(
        [np.clip(np.round(rssi), -95, -30), uptime, np.clip(np.round(hum), 2, 100),
         np.round(temp), np.round(pres, 2), pm1, pm25, pm25 * ratio10, pm25_atm]
    )  # fmt: skip
    m[:, _PM] = np.round(np.maximum(m[:, _PM], 0.0), 1)
    for e in episodes:  # stuck repeats the last good PM values; dropout blanks fields
        window = slice(e.start, e.start + e.length)
        if e.kind == "stuck":
            m[window, _PM] = m[e.start - 1, _PM]
        elif e.kind == "dropout":
            m[window, _DROPOUT_COLS] = np.nan
    return m


def _row(index: int, ts: int, values: list[float]) -> dict[str, Any]:
    row: dict[str, Any] = {"sensor_index": index, "last_seen": ts}
    for name, v, is_int in zip(_FIELDS, values, _INTS, strict=True):
        row[name] = None if math.isnan(v) else (int(v) if is_int else v)
    row["data_time_stamp"] = ts
    return row


def _payloads(cfg: SimulatorConfig, sensors: Sequence[int], skip: int) -> Iterator[dict[str, Any]]:
    """Rows of ``sensors`` in time order (all sensors at t0, then t1…), after ``skip`` rows."""
    if not sensors:
        return
    plan = _plan(cfg)
    mats = [_sensor_matrix(cfg, s, [e for e in plan if e.sensor == s]) for s in sensors]
    first_t, first_j = divmod(skip, len(sensors))
    for lo in range(first_t, cfg.readings_per_sensor, _CHUNK):
        chunks = [m[lo : lo + _CHUNK].tolist() for m in mats]
        for k in range(len(chunks[0])):
            ts = cfg.start_epoch + (lo + k) * cfg.interval_s
            for j in range(first_j if lo + k == first_t else 0, len(sensors)):
                yield _row(FIRST_SENSOR_INDEX + sensors[j], ts, chunks[j][k])


class Simulator:
    """The simulated fleet as plain Python: its payloads and their labels.

    Args:
        config: What to simulate.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config

    def payloads(self) -> Iterator[dict[str, Any]]:
        """PurpleAir row dicts of the whole fleet in time order.

        Each has ``sensor_index``, ``last_seen`` (event time, epoch seconds), the measured
        fields (``None`` where missing) and ``data_time_stamp``.
        """
        return _payloads(self.config, range(self.config.sensors), 0)

    def labels(self) -> dict[tuple[str, int], str]:
        """``{(sensor_id, epoch_seconds): kind}`` for every reading inside an episode."""
        cfg = self.config
        out: dict[tuple[str, int], str] = {}
        for e in _plan(cfg):
            sensor_id = str(FIRST_SENSOR_INDEX + e.sensor)
            for i in range(e.start, e.start + e.length):
                out[sensor_id, cfg.start_epoch + i * cfg.interval_s] = e.kind
        return out


class _SimPartition(StatefulSourcePartition[SimMessage, int]):
    def __init__(
        self,
        config: SimulatorConfig,
        sensors: Sequence[int],
        batch_size: int,
        realtime: float,
        emitted: int,
    ) -> None:
        self._config, self._sensors = config, sensors
        self._batch_size, self._realtime = batch_size, realtime
        self._emitted = emitted
        self._total = config.readings_per_sensor * len(sensors)
        self._it: Iterator[dict[str, Any]] | None = None
        self._wall0 = 0.0
        self._t0 = emitted // max(len(sensors), 1)

    def _due(self, now: float) -> int:
        """How many rows of this partition are due by wall time ``now`` (realtime mode)."""
        steps = (now - self._wall0) * self._realtime / self._config.interval_s
        return min((self._t0 + math.floor(steps) + 1) * len(self._sensors), self._total)

    def next_batch(self) -> list[SimMessage]:
        now = time.time()
        if self._it is None:
            self._it = _payloads(self._config, self._sensors, self._emitted)
            self._wall0 = now
        if self._emitted >= self._total:
            raise StopIteration
        size = self._batch_size
        if self._realtime > 0:
            size = min(size, self._due(now) - self._emitted)
        batch = [(ORIGIN, row, now) for row in islice(self._it, max(size, 0))]
        self._emitted += len(batch)
        return batch

    def next_awake(self) -> datetime | None:
        if self._realtime <= 0 or self._it is None or self._emitted >= self._total:
            return None
        step = self._emitted // len(self._sensors) - self._t0
        due = self._wall0 + step * self._config.interval_s / self._realtime
        return datetime.fromtimestamp(due, timezone.utc)

    def snapshot(self) -> int:
        return self._emitted


class SimulatorSource(FixedPartitionedSource[SimMessage, int]):
    """Bytewax source of the simulated fleet: ``("simulator", row_dict, received_at)``.

    Parallelism: ``min(sensors, partitions)`` partitions named ``sim-<j>-of-<k>``;
    partition ``j`` holds sensors ``j, j+k, j+2k…`` so ``-w N`` workers split the fleet.
    Within a partition rows are in event-time order. Delivery: exactly-once with
    recovery — the snapshot is the number of rows emitted and the output is
    deterministic, so a resume skips exactly what was emitted. Changing ``partitions``
    renames the partitions, so a resume with another ``k`` starts over.

    Args:
        config: What to simulate.
        batch_size: Most rows per batch.
        partitions: Most partitions.
        realtime: ``0`` emits as fast as possible; ``r > 0`` emits ``r`` simulated
            seconds per wall-clock second (waiting with ``next_awake``, never blocking).
    """

    def __init__(
        self,
        config: SimulatorConfig,
        batch_size: int = 1000,
        partitions: int = 8,
        realtime: float = 0.0,
    ) -> None:
        if batch_size < 1 or partitions < 1 or realtime < 0:
            msg = "batch_size and partitions must be at least 1 and realtime not negative"
            raise ValueError(msg)
        self.config, self.batch_size = config, batch_size
        self.partitions, self.realtime = partitions, realtime

    def _k(self) -> int:
        return min(self.config.sensors, self.partitions)

    def list_parts(self) -> list[str]:
        """Every partition (all are available on every worker)."""
        k = self._k()
        return [f"sim-{j}-of-{k}" for j in range(k)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SimPartition:
        """Build a partition, skipping the ``resume_state`` rows it already emitted."""
        j = int(for_part.split("-")[1])
        sensors = range(j, self.config.sensors, self._k())
        return _SimPartition(
            self.config, sensors, self.batch_size, self.realtime, resume_state or 0
        )
