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
generators seeded by ``seed``: a configuration always gives the same bytes.

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

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from sources.broker_log import BrokerEvent
from sources.mqtt import MQTTMessage

__all__ = ["KINDS", "DeviceFleet", "DeviceFleetConfig", "DeviceFleetSource", "Misbehaviour"]

KINDS = ("flood", "foreign_topic", "oversized", "malformed", "reboot_loop", "silent",
         "wrong_password")  # fmt: skip
"""Every kind of injected misbehaviour."""

Event = MQTTMessage | BrokerEvent
_F = npt.NDArray[np.float64]
_I = npt.NDArray[np.int64]
_READ, _FOREIGN, _CONNECT, _DISCONNECT, _AUTH = range(5)  # event codes
_BROKER = {_CONNECT: "connect", _DISCONNECT: "disconnect", _AUTH: "auth_failure"}
_PAD = 1_000  # a reading whose aux is at least this is padded to aux bytes
_BAD_SHARE = 0.85  # share of a malformed device's payloads that are invalid
_EPISODE_S = (180.0, 1_800.0)
_MAX_UPTIME_S = 20 * 86_400.0
_SKIP_CHUNK = 100_000  # events a resuming partition drops per call
_DAY = 86_400.0
_TAU = 2 * math.pi


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


class _Run:
    """One generation of the fleet's events: per-device constants, generators and schedule.

    A device's message ``k`` is due at ``first[d] + k * interval_s``, give or take the
    jitter. Everything else (broker events, reboots, episode messages) is scheduled up
    front in ``extra`` (time-sorted rows ``t, device, code, aux``); normal readings are
    drawn a time slice at a time.
    """

    def __init__(self, cfg: DeviceFleetConfig) -> None:
        self.cfg, self.ids, self.plan = cfg, _ids(cfg), _plan(cfg)
        self.t0 = cfg.start.timestamp()
        self.base = self.t0 - _MAX_UPTIME_S - 1  # boot keys: device * span + t - base
        self.span = self.t0 + cfg.duration_s - self.base + 1
        self.gens = [np.random.default_rng([cfg.seed, 1, d]) for d in range(cfg.devices)]
        self.p = np.array([g.random(13) for g in self.gens])  # scaled where used
        self.first = self.t0 + cfg.jitter_s + self.p[:, 0] * cfg.interval_s
        self.boots = [(d, self.t0 - u * _MAX_UPTIME_S) for d, u in enumerate(self.p[:, 9])]
        ports = (1024 + self.p[:, 11] * 60_000).astype(int).tolist()
        connect = self.t0 + (self.first - self.t0 - cfg.jitter_s) * self.p[:, 10]
        self.ev = [(t, d, _CONNECT, ports[d]) for d, t in enumerate(connect.tolist())]
        self._schedule()
        self.ev = sorted(e for e in self.ev if e[0] < self.t0 + cfg.duration_s)
        self.extra_t = np.round(np.array([e[0] for e in self.ev], dtype=np.float64), 3)
        self.extra = np.array([e[1:] for e in self.ev], dtype=np.int64).reshape(-1, 3)
        self.extra_z = np.random.default_rng([cfg.seed, 3]).standard_normal((len(self.ev), 4))
        keys = np.array([d * self.span + t - self.base for d, t in self.boots])
        order = np.argsort(keys)
        self.boot_key, self.boot_t = keys[order], np.array([t for _, t in self.boots])[order]

    def _reboot(self, d: int, k: int, u: _F) -> None:
        """Reboot device ``d`` between its messages ``k - 1`` and ``k``."""
        j = self.cfg.jitter_s
        gap = self.cfg.interval_s - 2 * j  # room between two messages
        b = float(self.first[d] + k * self.cfg.interval_s - j - gap * (0.3 + 0.3 * u[0]))
        port = 1024 + int(u[1] * 60_000)
        self.ev += [(b, d, _DISCONNECT, 0), (b + gap * 0.15, d, _CONNECT, port)]
        self.boots.append((d, b))

    def _schedule(self) -> None:
        cfg, i_s, n = self.cfg, self.cfg.interval_s, self.cfg.devices
        plan = dict(self.plan)
        for d, g in enumerate(self.gens):  # ordinary reboots of healthy devices
            count = g.poisson(cfg.duration_s / (cfg.reboot_every_days * _DAY))
            slots = g.integers(1, max(int(cfg.duration_s / i_s), 2), count)
            for k, u in zip(slots.tolist(), g.random((count, 2)), strict=True):
                if d not in plan:
                    self._reboot(d, k, u)
        for d, m in plan.items():
            rng, length = np.random.default_rng([cfg.seed, 2, d]), m.end - m.start
            if m.kind == "flood":
                step = i_s / cfg.flood_factor
                t = m.start + step * (np.arange(int(length / step)) + 0.5 * rng.random())
                self.ev += [(x, d, _READ, 0) for x in t.tolist()]
            elif m.kind == "foreign_topic":  # aux: the device whose topic it uses
                t = m.start + np.cumsum(i_s * rng.uniform(0.7, 1.3, int(length / i_s / 0.7)))
                other = (d + 1 + rng.integers(0, max(n - 1, 1), len(t))) % n
                self.ev += [(x, d, _FOREIGN, o) for x, o in zip(t.tolist(), other.tolist(),
                            strict=True) if x < m.end]  # fmt: skip
            elif m.kind == "wrong_password":
                t = m.start + np.cumsum(rng.uniform(2.0, 6.0, int(length / 2)))
                port = 1024 + rng.integers(0, 60_000, len(t))
                self.ev += [(x, d, _AUTH, o) for x, o in zip(t.tolist(), port.tolist(),
                            strict=True) if x < m.end]  # fmt: skip
            elif m.kind == "reboot_loop":
                j, gap = cfg.jitter_s, i_s - 2 * cfg.jitter_s
                k = math.ceil((m.start - self.first[d] + j + gap) / i_s)
                while self.first[d] + k * i_s - j < m.end:
                    self._reboot(d, k, rng.random(2))
                    k += int(rng.integers(1, 3))

    def _normal(self, a: float, b: float) -> tuple[_F, _I, _F]:
        """Normal readings due in ``[a, b)``: times, ``(device, code, aux)`` rows, noise."""
        cfg = self.cfg
        lo = np.maximum(np.ceil((a - self.first) / cfg.interval_s), 0).astype(np.int64)
        counts = np.maximum(np.ceil((b - self.first) / cfg.interval_s).astype(np.int64) - lo, 0)
        dev = np.repeat(np.arange(cfg.devices), counts)
        k = lo[dev] + np.arange(len(dev)) - np.repeat(np.cumsum(counts) - counts, counts)
        per_device = list(zip(self.gens, counts.tolist(), strict=True))
        u = np.concatenate([g.random((c, 3)) for g, c in per_device])  # jitter, loss, variant
        z = np.concatenate([g.standard_normal((c, 4)) for g, c in per_device])
        t = np.round(self.first[dev] + k * cfg.interval_s + cfg.jitter_s * (2 * u[:, 0] - 1), 3)
        aux = np.zeros(len(t), dtype=np.int64)
        keep = (u[:, 1] >= cfg.loss) & (t < self.t0 + cfg.duration_s)
        for d, m in self.plan:
            inside = (dev == d) & (t >= m.start) & (t < m.end)
            if m.kind in ("flood", "silent"):
                keep &= ~inside
            elif m.kind == "oversized":
                aux[inside] = (20_000 + 180_000 * u[inside, 2]).astype(np.int64)
            elif m.kind == "malformed":
                bad = inside & (u[:, 2] < _BAD_SHARE)
                aux[bad] = 1 + (4 * u[bad, 2] / _BAD_SHARE).astype(np.int64)
        cols = np.column_stack([dev, np.full(len(t), _READ), aux])
        return t[keep], cols[keep], z[keep]

    def _fields(self, t: _F, dev: _I, z: _F) -> list[Any]:
        """``uptime, rssi, pm2.5_atm, temperature, humidity`` of readings as Python lists."""
        at = np.searchsorted(self.boot_key, dev * self.span + t - self.base, side="right")
        p, day = self.p[dev], _TAU * (t % _DAY) / _DAY
        rssi = -80 + 30 * p[:, 1] + 4 * np.sin(_TAU * t / (1800 + 7200 * p[:, 2]) + 7 * p[:, 3])
        pm = np.exp(1.1 + 2.3 * p[:, 4]) * (1 + 0.3 * np.cos(day - _TAU * p[:, 5]))
        temp_mean = 50 + 30 * p[:, 6]
        temp = temp_mean + (5 + 7 * p[:, 7]) * np.cos(day - _TAU * p[:, 8]) + 0.3 * z[:, 2]
        hum = 30 + 40 * p[:, 12] - 1.2 * (temp - temp_mean) + z[:, 3]
        return [
            np.floor(t - self.boot_t[at - 1]).astype(np.int64).tolist(),
            np.clip(np.round(rssi + 1.5 * z[:, 0]), -100, -30).astype(np.int64).tolist(),
            np.round(pm * np.exp(0.15 * z[:, 1]), 1).tolist(),
            np.round(temp, 1).tolist(),
            np.clip(np.round(hum, 1), 2.0, 100.0).tolist(),
        ]

    def _emit(self, t: _F, cols: _I, z: _F) -> Iterator[Event]:
        """Messages and broker events of time-sorted rows, built in one Python loop."""
        ids, topics = self.ids, [f"sensors/{i}/readings" for i in self.ids]
        values = self._fields(t, cols[:, 0], z)
        for ts, (d, code, aux), up, rssi, pm, temp, hum in zip(t.tolist(), cols.tolist(),
                                                               *values, strict=True):  # fmt: skip
            if code > _FOREIGN:
                address = f"{host_of(d)}:{aux}" if aux else ""
                if code == _AUTH:  # as mosquitto 2.0 logs it: no client id, the address
                    yield BrokerEvent(ts, "auth_failure", "", address, "not authorised")
                    continue
                detail = "" if code == _DISCONNECT else ids[d]
                yield BrokerEvent(ts, _BROKER[code], ids[d], address, detail)
                continue
            row = {"sensor_id": ids[d], "ts": ts, "values": {
                "uptime": up, "rssi": rssi, "pm2.5_atm": pm, "temperature": temp,
                "humidity": hum}}  # fmt: skip
            if code == _FOREIGN:
                yield topics[aux], orjson.dumps(row), ts
            else:
                yield topics[d], _payload(row, aux) if aux else orjson.dumps(row), ts

    def events(self) -> Iterator[Event]:
        """Every event in time order, one time slice at a time.

        A slice's events are sorted with those held back from the last one, and only
        those before the earliest possible time of the next slice go out.
        """
        end, j = self.t0 + self.cfg.duration_s, self.cfg.jitter_s
        step = self.cfg.interval_s * max(4, math.ceil(100_000 / self.cfg.devices))
        t, cols, z = np.empty(0), np.empty((0, 3), dtype=np.int64), np.empty((0, 4))
        a = self.t0
        while a < end:
            b = min(a + step, end)
            lo, hi = np.searchsorted(self.extra_t, [a, b])
            nt, ncols, nz = self._normal(a, b)
            t = np.concatenate([t, nt, self.extra_t[lo:hi]])
            cols = np.concatenate([cols, ncols, self.extra[lo:hi]])
            z = np.concatenate([z, nz, self.extra_z[lo:hi]])
            order = np.argsort(t, kind="stable")
            t, cols, z = t[order], cols[order], z[order]
            cut = len(t) if b >= end else int(np.searchsorted(t, b - j))
            yield from self._emit(t[:cut], cols[:cut], z[:cut])
            t, cols, z, a = t[cut:], cols[cut:], z[cut:], b


def _payload(row: dict[str, Any], aux: int) -> bytes:
    """The payload of a reading: padded to ``aux`` bytes (``aux >= _PAD``) or malformed."""
    if aux >= _PAD:
        return orjson.dumps({**row, "pad": "x" * aux})
    if aux == 1:  # broken JSON
        return orjson.dumps(row)[:40]
    if aux == 2:  # JSON, not an object
        return orjson.dumps([row["sensor_id"], row["ts"], *row["values"].values()])
    if aux == 3:  # strings for numbers
        return orjson.dumps({**row, "values": {k: str(v) for k, v in row["values"].items()}})
    return orjson.dumps({k: v for k, v in row.items() if k != "sensor_id"})


def host_of(device: int) -> str:
    """The IP address of device number ``device`` (``10.0.x.y``, one per device)."""
    return f"10.0.{device // 254 % 256}.{device % 254 + 1}"


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
        return _Run(self.config).events()

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
            self._it = _Run(self._config).events()
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
