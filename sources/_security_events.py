"""Event generation of the misbehaving-device fleet of :mod:`sources.security_sim`.

:class:`_Run` turns a :class:`~sources.security_sim.DeviceFleetConfig` and its plan of
labelled episodes into the fleet's MQTT messages and broker events, in event-time order:
per-device constants and generators (seeded by ``(seed, device)``), broker events,
reboots and episode messages scheduled up front, normal readings drawn a time slice at a
time and turned into payloads (padded or malformed during their episodes) in one loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from sources.broker_log import BrokerEvent
from sources.mqtt import MQTTMessage

if TYPE_CHECKING:
    from sources.security_sim import DeviceFleetConfig, Misbehaviour

Event = MQTTMessage | BrokerEvent
_F = npt.NDArray[np.float64]
_I = npt.NDArray[np.int64]
_READ, _FOREIGN, _CONNECT, _DISCONNECT, _AUTH = range(5)  # event codes
_BROKER = {_CONNECT: "connect", _DISCONNECT: "disconnect", _AUTH: "auth_failure"}
_PAD = 1_000  # a reading whose aux is at least this is padded to aux bytes
_BAD_SHARE = 0.85  # share of a malformed device's payloads that are invalid
_MAX_UPTIME_S = 20 * 86_400.0
_DAY = 86_400.0
_TAU = 2 * math.pi


class _Run:
    """One generation of the fleet's events: per-device constants, generators and schedule.

    A device's message ``k`` is due at ``first[d] + k * interval_s``, give or take the
    jitter. Everything else (broker events, reboots, episode messages) is scheduled up
    front in ``extra`` (time-sorted rows ``t, device, code, aux``); normal readings are
    drawn a time slice at a time.
    """

    def __init__(
        self, cfg: DeviceFleetConfig, ids: list[str], plan: list[tuple[int, Misbehaviour]]
    ) -> None:
        self.cfg, self.ids, self.plan = cfg, ids, plan
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
