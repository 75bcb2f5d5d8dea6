"""A deterministic, labelled fleet of SKAB-shaped pumps.

Every pump gives the eight SKAB channels (``Accelerometer1RMS`` … ``Volume Flow
RateRMS``, as ``dataflows.pump.SKAB_FIELDS``) as a correlated first-order autoregressive
process whose stationary mean, standard deviations and correlations, and per-channel
lag-1 autocorrelation, were fitted once, offline, on SKAB's anomaly-free recording
(``anomaly-free/anomaly-free.csv``, 9,405 rows; the constants below, nothing is read at
run time). The thermocouple's lag-1 autocorrelation (0.99998: it drifts over the whole
recording) is capped at 0.995 so the process stays stationary; the innovation covariance
(stationary covariance less its autoregressive part) is projected onto the positive
semi-definite matrices and rescaled to unit stationary variances. Each pump has its own
operating level (each channel's mean moved by 1–3 of its standard deviations, either
way) and its own noise scale (0.7–1.3).

Labelled anomaly episodes are injected after a clean warm-up, in the six channels the
pump ensemble scores (not the two thermal ones): ``spike`` (2–3 channels jump 4–8
standard deviations for 1–5 readings), ``drift`` (one channel ramps to 4–8 standard
deviations over 20–60 readings), ``stuck`` (one channel repeats its last value for
20–60 readings) and ``cavitation`` (both vibration channels get extra white noise of 3–5
standard deviations for 20–60 readings). Standard deviations are the pump's own.

Each pump draws from its own generator seeded by ``(seed, pump)`` and the episode plan
from one seeded by ``seed``.

>>> sim = PumpSim(PumpSimConfig(pumps=2, readings=50))
>>> x, kinds = sim.matrix(0)
>>> x.shape, kinds.shape, bool((x == sim.matrix(0)[0]).all())
((50, 8), (50,), True)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FIELDS", "KINDS", "MEAN", "PHI", "SD", "PumpSim", "PumpSimConfig"]

FIELDS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
          "Thermocouple", "Voltage", "Volume Flow RateRMS")  # fmt: skip
"""The eight SKAB channels, in column order."""
KINDS = ("spike", "drift", "stuck", "cavitation")
"""Every kind of injected anomaly episode."""

# Fitted on SKAB anomaly-free.csv (9,405 rows): mean, standard deviation, correlation,
# lag-1 autocorrelation of each channel.
MEAN = (0.212604, 0.268407, 2.40301, 0.111266, 89.4723, 28.4743, 228.647, 125.237)
SD = (0.00474, 0.003989, 0.4865, 0.2533, 0.6671, 0.7307, 10.98, 1.605)
CORR = (
    (1.0, -0.446, -0.02, 0.004, -0.69, 0.741, 0.007, 0.713),
    (-0.446, 1.0, 0.007, 0.005, 0.708, -0.759, -0.016, -0.706),
    (-0.02, 0.007, 1.0, 0.015, 0.007, -0.012, 0.472, -0.01),
    (0.004, 0.005, 0.015, 1.0, 0.012, 0.0, 0.015, 0.002),
    (-0.69, 0.708, 0.007, 0.012, 1.0, -0.891, -0.014, -0.76),
    (0.741, -0.759, -0.012, 0.0, -0.891, 1.0, 0.014, 0.83),
    (0.007, -0.016, 0.472, 0.015, -0.014, 0.014, 1.0, 0.019),
    (0.713, -0.706, -0.01, 0.002, -0.76, 0.83, 0.019, 1.0),
)
PHI = (0.9269, 0.8868, 0.0743, 0.1067, 0.9376, 0.995, 0.0092, 0.9493)

_SCORED = (0, 1, 2, 3, 6, 7)  # channels the pump ensemble scores
_VIBRATION = (0, 1)
_LENGTHS = {"spike": (1, 5), "drift": (20, 60), "stuck": (20, 60), "cavitation": (20, 60)}
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PumpSimConfig:
    """What pumps to simulate.

    Attributes:
        pumps: Number of pumps (ids ``pump-0``, ``pump-1``, …).
        readings: Readings per pump (one a second, as SKAB).
        seed: Seed of every random draw.
        anomaly_rate: Fraction of all readings inside injected episodes.
        kinds: Episode kinds to inject, a subset of :data:`KINDS`.
        warmup: Readings at the start of every pump that stay clean.
        first: Id number of the first pump.
        start_epoch: Event time of the first reading, epoch seconds.
    """

    pumps: int = 12
    readings: int = 1000
    seed: int = 7
    anomaly_rate: float = 0.015
    kinds: tuple[str, ...] = KINDS
    warmup: int = 100
    first: int = 0
    start_epoch: int = 1_583_748_000

    def __post_init__(self) -> None:
        problems = [
            (self.pumps >= 1, "pumps must be at least 1"),
            (self.readings >= 0, "readings must not be negative"),
            (0.0 <= self.anomaly_rate <= 0.5, "anomaly_rate must be within [0, 0.5]"),
            (set(self.kinds) <= set(KINDS), f"kinds must be among {', '.join(KINDS)}"),
            (self.warmup >= 1, "warmup must be at least 1"),
        ]
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)


@dataclass(frozen=True)
class _Episode:
    pump: int
    kind: str
    start: int
    length: int
    channels: tuple[int, ...]
    magnitude: float  # standard deviations


def _plan(cfg: PumpSimConfig) -> list[_Episode]:
    """Place non-overlapping episodes, kinds in turn, until ``anomaly_rate`` is met."""
    n, kinds = cfg.readings, cfg.kinds
    budget = round(cfg.anomaly_rate * cfg.pumps * n)
    rng = np.random.default_rng([cfg.seed, 0])
    out: list[_Episode] = []
    busy: dict[int, list[tuple[int, int]]] = {}
    labelled = tries = 0
    while kinds and labelled < budget and tries < 100 + 20 * budget:
        tries += 1
        kind = kinds[len(out) % len(kinds)]
        lo, hi = _LENGTHS[kind]
        length = min(int(rng.integers(lo, hi + 1)), budget - labelled)
        pump = int(rng.integers(cfg.pumps))
        width = int(rng.integers(2, 4)) if kind == "spike" else 1
        picked = tuple(int(c) for c in rng.choice(_SCORED, width, replace=False))
        channels = _VIBRATION if kind == "cavitation" else picked
        magnitude = float(rng.uniform(3.0, 5.0) if kind == "cavitation" else rng.uniform(4.0, 8.0))
        if n - length < cfg.warmup or length < 1:
            continue
        start = int(rng.integers(cfg.warmup, n - length + 1))
        taken = busy.setdefault(pump, [])
        if any(start - 5 < end and first < start + length + 5 for first, end in taken):
            continue
        taken.append((start, start + length))
        out.append(_Episode(pump, kind, start, length, channels, magnitude))
        labelled += length
    return out


@cache
def _innovation_root() -> Floats:
    """A square root of the innovation covariance of the standardised process."""
    corr, phi = np.array(CORR), np.array(PHI)
    cov = corr - np.outer(phi, phi) * corr
    values, vectors = np.linalg.eigh(cov)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    stationary = (root**2).sum(axis=1) / (1.0 - phi**2)  # variances after the projection
    return np.asarray(root / np.sqrt(stationary)[:, None], dtype=np.float64)


def _normal(rng: np.random.Generator, n: int) -> Floats:
    """``n`` standardised readings of the fitted process, started from its stationary law."""
    phi = np.array(PHI)
    root = _innovation_root()
    z = np.empty((n, len(FIELDS)))
    prev = np.linalg.cholesky(np.array(CORR) + 1e-9 * np.eye(len(FIELDS))) @ rng.normal(
        size=len(FIELDS)
    )
    shocks = rng.normal(size=(n, len(FIELDS))) @ root.T
    for t in range(n):
        prev = phi * prev + shocks[t]
        z[t] = prev
    return z


class PumpSim:
    """The simulated pumps as numpy matrices, payloads and labels.

    Args:
        config: What to simulate.
    """

    def __init__(self, config: PumpSimConfig) -> None:
        self.config = config

    def matrix(self, pump: int) -> tuple[Floats, npt.NDArray[np.str_]]:
        """Pump ``pump``'s readings ``(readings, 8)`` and each reading's kind (``""``: normal)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1, cfg.first + pump])
        sd = np.array(SD) * rng.uniform(0.7, 1.3)
        level = np.array(MEAN) + rng.choice([-1.0, 1.0], 8) * rng.uniform(1.0, 3.0, 8) * np.array(
            SD
        )
        x = level + _normal(rng, cfg.readings) * sd
        kinds = np.full(cfg.readings, "", dtype="<U10")
        for e in (e for e in _plan(cfg) if e.pump == pump):
            rows, cols = slice(e.start, e.start + e.length), list(e.channels)
            kinds[rows] = e.kind
            sign = rng.choice([-1.0, 1.0], len(cols))
            if e.kind == "spike":
                x[rows, cols] += sign * e.magnitude * sd[cols]
            elif e.kind == "drift":
                ramp = np.linspace(0.0, e.magnitude, e.length + 1)[1:, None]
                x[rows, cols] += ramp * sign * sd[cols]
            elif e.kind == "stuck":
                x[rows, cols] = x[e.start - 1, cols]
            else:
                x[rows, cols] += rng.normal(size=(e.length, len(cols))) * e.magnitude * sd[cols]
        return x, kinds

    def payloads(self) -> Iterator[dict[str, Any]]:
        """Readings as dicts (``pump``, ``ts`` epoch seconds, the channels), pump by pump."""
        cfg = self.config
        for pump in range(cfg.pumps):
            x, _ = self.matrix(pump)
            for i, row in enumerate(x.tolist()):
                yield {"pump": f"pump-{cfg.first + pump}", "ts": cfg.start_epoch + i,
                       **dict(zip(FIELDS, row, strict=True))}  # fmt: skip

    def labels(self) -> dict[tuple[str, int], str]:
        """``{(pump_id, epoch_seconds): kind}`` for every reading inside an episode."""
        cfg = self.config
        return {(f"pump-{cfg.first + e.pump}", cfg.start_epoch + i): e.kind
                for e in _plan(cfg) for i in range(e.start, e.start + e.length)}  # fmt: skip
