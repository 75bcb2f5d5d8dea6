"""A deterministic fleet of MQTT devices with labelled misbehaviour, for security detectors.

Every device publishes a generic edgewatch reading ``{"sensor_id", "ts", "values": {"uptime",
"rssi", "pm2.5_atm", "temperature", "humidity"}}`` on ``sensors/<id>/readings`` every
``interval_s`` at its own phase (send times jittered, a little loss). Broker events
(:class:`~sources.broker_log.BrokerEvent`) go with it: a ``connect`` before each device's
first message and ``disconnect`` + ``connect`` at the ordinary, unlabelled reboots of
healthy devices. After ``warmup_s``, distinct
devices misbehave for 3–30 minutes each, the :data:`KINDS` in turn: ``flood``
(``flood_factor`` × the normal rate), ``foreign_topic`` (also publishes on other devices'
topics, about once per interval), ``oversized`` (payloads of 20–200 KB), ``malformed``
(most payloads broken JSON, a JSON array, strings for numbers or without ``sensor_id``),
``reboot_loop`` (reboots before every first or second message: ``uptime`` near 0,
``disconnect`` + ``connect``), ``silent`` (publishes nothing) and ``wrong_password``
(``auth_failure`` every 2–6 s while its normal traffic goes on).

Each device draws from its own generator seeded by ``(seed, device)`` and the plan from
generators seeded by ``seed``: a configuration always gives the same bytes. The plan, its
labels and the Bytewax source live here; :mod:`sources._security_events` generates the events.

>>> fleet = DeviceFleet(DeviceFleetConfig(devices=3, duration_s=60, misbehaviours=0))
>>> events = list(fleet.events())
>>> events[0]
BrokerEvent(ts=1767225602.852, kind='connect', client_id='dev-0', address='10.0.0.1:3158', \
detail='dev-0')
>>> events[3]  # doctest: +NORMALIZE_WHITESPACE
('sensors/dev-1/readings', b'{"sensor_id":"dev-1","ts":1767225613.112,"values":{"uptime":\
100958,"rssi":-58,"pm2.5_atm":15.8,"temperature":59.8,"humidity":56.9}}', 1767225613.112)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from sources._security_events import Event, _Run, host_of

__all__ = ["KINDS", "DeviceFleet", "DeviceFleetConfig", "DeviceFleetSource", "Misbehaviour"]

KINDS = ("flood", "foreign_topic", "oversized", "malformed", "reboot_loop", "silent",
         "wrong_password")  # fmt: skip
"""Every kind of injected misbehaviour."""

_EPISODE_S = (180.0, 1_800.0)
_SKIP_CHUNK = 100_000  # events a resuming partition drops per call


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """One labelled episode: ``device`` misbehaves as ``kind`` in ``[start, end)``.

    Attributes:
        device: The device id (also its MQTT client id and user name).
        kind: One of :data:`KINDS`.
        start: First second of the episode, Unix seconds.
        end: End of the episode (exclusive), Unix seconds.
    """

    device: str
    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class DeviceFleetConfig:
    """What fleet to simulate.

    Attributes:
        devices: Number of devices (``dev-0000``, ``dev-0001``, … for 1000).
        interval_s: Seconds between two messages of a healthy device.
        jitter_s: Most seconds a send time is early or late (uniform, below
            ``interval_s / 2`` so every device keeps its order).
        loss: Fraction of normal messages lost.
        duration_s: Simulated seconds.
        seed: Seed of every random draw.
        start: Event time where the simulation starts (tz-aware).
        warmup_s: Seconds at the start without misbehaviour.
        misbehaviours: How many episodes to inject, each on its own device.
        kinds: Kinds to inject, taken in turn, a subset of :data:`KINDS`.
        reboot_every_days: Mean days between ordinary reboots of a healthy device.
        flood_factor: How many times its normal rate a flooding device publishes.
    """

    devices: int = 1000
    interval_s: float = 15.0
    jitter_s: float = 1.5
    loss: float = 0.005
    duration_s: float = 86_400
    seed: int = 7
    start: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    warmup_s: float = 3_600
    misbehaviours: int = 10
    kinds: tuple[str, ...] = KINDS
    reboot_every_days: float = 30.0
    flood_factor: float = 20.0

    def __post_init__(self) -> None:
        episodes = self.misbehaviours > 0
        problems = [
            (self.devices >= 1, "devices must be at least 1"),
            (self.interval_s > 0, "interval_s must be positive"),
            (0 <= self.jitter_s < self.interval_s / 2, "jitter_s must be in [0, interval_s/2)"),
            (0.0 <= self.loss < 1.0, "loss must be within [0, 1)"),
            (self.duration_s > 0 and self.warmup_s >= 0, "duration_s must be positive and "
             "warmup_s not negative"),
            (self.start.tzinfo is not None, "start must be a tz-aware datetime"),
            (0 <= self.misbehaviours <= self.devices, "misbehaviours must be in [0, devices]"),
            (bool(self.kinds) or not episodes, "kinds must not be empty"),
            (set(self.kinds) <= set(KINDS), f"kinds must be among {', '.join(KINDS)}"),
            (not episodes or self.duration_s - self.warmup_s >= _EPISODE_S[1],
             "duration_s must exceed warmup_s by 30 minutes for misbehaviours"),
            (self.reboot_every_days > 0, "reboot_every_days must be positive"),
            (self.flood_factor >= 1, "flood_factor must be at least 1"),
        ]  # fmt: skip
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)


def _ids(cfg: DeviceFleetConfig) -> list[str]:
    return [f"dev-{d:0{len(str(cfg.devices))}d}" for d in range(cfg.devices)]


def _plan(cfg: DeviceFleetConfig) -> list[tuple[int, Misbehaviour]]:
    """``(device index, episode)`` of every injected misbehaviour, sorted by start."""
    rng, t0, ids = np.random.default_rng([cfg.seed, 0]), cfg.start.timestamp(), _ids(cfg)
    out = []
    for i, d in enumerate(rng.choice(cfg.devices, cfg.misbehaviours, replace=False).tolist()):
        length = rng.uniform(*_EPISODE_S)
        start = round(rng.uniform(t0 + cfg.warmup_s, t0 + cfg.duration_s - length), 3)
        kind = cfg.kinds[i % len(cfg.kinds)]
        out.append((d, Misbehaviour(ids[d], kind, start, round(start + length, 3))))
    return sorted(out, key=lambda x: x[1].start)


def _events(cfg: DeviceFleetConfig) -> Iterator[Event]:
    """Every event of the fleet ``cfg`` in time order, generated lazily."""
    return _Run(cfg, _ids(cfg), _plan(cfg)).events()


class DeviceFleet:
    """The simulated fleet as plain Python: its events and their labels.

    Args:
        config: What to simulate.
    """

    def __init__(self, config: DeviceFleetConfig) -> None:
        self.config = config

    def events(self) -> Iterator[Event]:
        """MQTT messages and broker events of the whole fleet, in event-time order.

        A message is ``(topic, payload, t)``, ``t`` its event time (Unix seconds, also
        the payload's ``ts``). Generated lazily, a time slice at a time.
        """
        return _events(self.config)

    def labels(self) -> list[Misbehaviour]:
        """Every injected episode, sorted by start."""
        return [m for _, m in _plan(self.config)]

    def device_ids(self) -> list[str]:
        """Every device id, which is also its MQTT client id and user name."""
        return _ids(self.config)

    def host(self, device: str) -> str:
        """The IP address device ``device`` connects from (a refused login names only it)."""
        return host_of(int(device.removeprefix("dev-")))

    def device_hours(self) -> float:
        """Devices times simulated hours: the denominator of false-alarm rates."""
        return self.config.devices * self.config.duration_s / 3600


class _FleetPartition(StatefulSourcePartition[Event, int]):
    def __init__(self, config: DeviceFleetConfig, batch_size: int, emitted: int) -> None:
        self._config, self._batch_size = config, batch_size
        self._emitted, self._skip = emitted, emitted
        self._it: Iterator[Event] | None = None

    def next_batch(self) -> list[Event]:
        if self._it is None:
            self._it = _events(self._config)
        if self._skip:  # resuming: regenerate and drop what was emitted, a chunk a call
            n = min(self._skip, _SKIP_CHUNK)
            deque(islice(self._it, n), maxlen=0)
            self._skip -= n
            return []
        batch = list(islice(self._it, self._batch_size))
        if not batch:
            raise StopIteration
        self._emitted += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._emitted


class DeviceFleetSource(FixedPartitionedSource[Event, int]):
    """Bytewax source of :meth:`DeviceFleet.events`: MQTT messages and broker events.

    Parallelism: one partition, ``device-fleet``, so the stream keeps its event-time
    order. Delivery: exactly-once with recovery — the snapshot is the number of events
    emitted and the output is deterministic, so a resume regenerates and drops exactly
    those (about 100,000 per ``next_batch`` call, which returns ``[]`` meanwhile, so it
    never blocks for long). EOF after the last event.

    Args:
        config: What to simulate.
        batch_size: Most events per batch.
    """

    def __init__(self, config: DeviceFleetConfig, batch_size: int = 1000) -> None:
        if batch_size < 1:
            msg = "batch_size must be at least 1"
            raise ValueError(msg)
        self.config, self.batch_size = config, batch_size

    def list_parts(self) -> list[str]:
        """The single partition."""
        return ["device-fleet"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FleetPartition:
        """Build the partition, skipping the ``resume_state`` events it already emitted."""
        return _FleetPartition(self.config, self.batch_size, resume_state or 0)
