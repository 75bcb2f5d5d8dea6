"""Judge device windows: a robust per-device baseline rule and fleet Half-Space Trees vote.

Two detectors look at every closed :class:`~operators.device_features.DeviceWindow`:

* ``zscore`` — the seed's rule: each feature's robust z against the device's own
  baseline (:class:`models.robust.RobustBaseline`: median and MAD of its last windows);
  it votes when any ``|z|`` reaches ``z_threshold`` (3 by default). Score before learn:
  the baseline learns a window only when this rule did not flag it, so an attack never
  becomes the device's normal.
* ``hst`` — Half-Space Trees over the window's feature vector, robust-normalised and
  folded into :data:`GROUPS` (the largest ``|z|`` of each group, clipped to
  ``[0, clip]``), one model for the whole fleet. It learns every window, so a deviation
  that many devices share (a firmware rollout, a network-wide hiccup) becomes common to
  it and stops its vote, while a device that stands out from the fleet keeps it.

A window alerts when ``k`` of the detectors vote (the pump flow's k-of-n; default 2 of 2).
A detector that cannot judge yet abstains and ``k`` is capped by those that can: the HST
until it has learned its first reference window (``hst_window`` device windows, the
whole fleet's), and for the broker's own windows (``$SYS``), which only the rule judges.
An alert opens an *episode*: the device does not alert again until ``rearm_windows``
windows of it in a row pass without a verdict, so a ten-minute flood, or a malformed
stream that is only mostly malformed, is one alert, not ten.

The per-device step is keyed by device (its state: the baseline's ring, the field names
it has sent and its last uptime, a few KB); the vote runs on one worker, one item per
device and window.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import numpy.typing as npt
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from models.halfspace import HalfSpaceTrees
from operators.device_features import BROKER_FEATURES, FEATURES, DeviceWindow
from operators.keyed import IdleEvictingLogic, key_batched
from operators.observe import BROKER_DEVICE
from operators.records import Alert, alert_id
from operators.security_config import DETECTORS, GROUPS, REASONS, SecurityConfig

__all__ = ["DETECTORS", "GROUPS", "REASONS", "SecurityConfig", "Verdict", "judge", "vote"]

_GROUP_IDX = [[FEATURES.index(f) for f in fs] for fs in GROUPS.values()]
_NEW_FIELDS, _REBOOTS, _SILENT = (FEATURES.index(f) for f in
                                  ("new_fields", "reboots", "silent_windows"))  # fmt: skip
_MAX_NAMES = 256  # field names remembered per device
_CRITICAL = {"auth_failures", "acl_denied", "foreign_writes", "protocol_errors"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True, eq=False)
class Verdict:
    """The baseline rule's view of one device window.

    Attributes:
        window: The window (features completed with the device's history).
        z: Signed robust z per feature.
        score: Largest ``|z|``.
        reason: The feature with the largest ``|z|`` (``broker_…`` for the broker).
        vote: Whether ``score`` reached the threshold.
        drivers: For a vote, each feature at or over the threshold: value, median, scale, z.
    """

    window: DeviceWindow
    z: npt.NDArray[np.float64]
    score: float
    reason: str
    vote: bool
    drivers: dict[str, dict[str, float | None]]


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 4)


class _Device:
    """One device's memory: its baseline, the field names it sent, its last window."""

    def __init__(self, config: SecurityConfig, broker: bool) -> None:
        self.base = config.baseline(broker)
        self.names: set[str] = set()
        self.last_window = -1
        self.last_uptime = math.nan
        self.silent = 0

    def complete(self, w: DeviceWindow) -> npt.NDArray[np.float64]:
        """The window's features with what needs this device's history filled in."""
        x = w.x.copy()
        if w.device == BROKER_DEVICE:
            return x
        names = {n for t in w.names for n in t}
        new = names - self.names
        x[_NEW_FIELDS] = len(new) if not w.silent else math.nan
        if len(self.names) < _MAX_NAMES:
            self.names |= set(sorted(new)[: _MAX_NAMES - len(self.names)])
        if w.uptime_first < self.last_uptime:  # False when either is NaN
            x[_REBOOTS] += 1
        if not math.isnan(w.uptime_last):
            self.last_uptime = w.uptime_last
        self.silent = self.silent + 1 if w.silent else 0
        x[_SILENT] = self.silent
        return x


class _JudgeLogic(IdleEvictingLogic[DeviceWindow, Verdict, bytes]):
    def __init__(self, config: SecurityConfig, resume: bytes | None,
                 idle: timedelta | None) -> None:  # fmt: skip
        super().__init__(idle)
        self.config = config
        self.device: _Device | None = pickle.loads(resume) if resume else None

    def process(self, values: list[DeviceWindow]) -> list[Verdict]:
        out = []
        for w in sorted(values, key=lambda w: w.window):
            if self.device is None:
                self.device = _Device(self.config, w.device == BROKER_DEVICE)
            if w.window <= self.device.last_window:
                continue  # a window already judged (a real one after its silent stand-in)
            self.device.last_window = w.window
            out.append(self._judge(self.device, w))
        return out

    def _judge(self, dev: _Device, w: DeviceWindow) -> Verdict:
        x = dev.complete(w)
        z = dev.base.score(x)
        top = int(np.argmax(np.abs(z)))
        score = float(abs(z[top]))
        vote = score >= self.config.z_threshold
        broker = w.device == BROKER_DEVICE
        names = BROKER_FEATURES if broker else FEATURES
        drivers: dict[str, dict[str, float | None]] = {}
        if vote:
            center, scale = dev.base.center, dev.base.scale
            for i in np.flatnonzero(np.abs(z) >= self.config.z_threshold):
                drivers[names[i]] = {"value": _num(x[i]), "median": _num(center[i]),
                                     "scale": _num(scale[i]), "z": _num(z[i])}  # fmt: skip
        else:
            dev.base.learn(x)
        done = dataclasses.replace(w, x=x)
        reason = f"broker_{names[top]}" if broker else names[top]
        return Verdict(done, z, score, reason, vote, drivers)

    def snapshot(self) -> bytes:
        return pickle.dumps(self.device, protocol=pickle.HIGHEST_PROTOCOL)


@operator
def judge(
    step_id: str,
    up: Stream[DeviceWindow],
    config: SecurityConfig,
    idle_timeout: timedelta | None = None,
) -> Stream[Verdict]:
    """Score each device window against the device's own robust baseline.

    Args:
        step_id: Unique ID.
        up: Closed device windows.
        config: Thresholds and baseline sizes.
        idle_timeout: Forget a device after this much wall time without a window.

    Returns:
        One verdict per window (windows already judged are skipped).
    """
    keyed = key_batched("key", up, _device)

    def builder(resume: bytes | None) -> _JudgeLogic:
        return _JudgeLogic(config, resume, idle_timeout)

    judged = op.stateful_batch("baseline", keyed, builder)
    return op.map("unkey", judged, _value)


def _device(w: DeviceWindow) -> str:
    return w.device


def _value(item: tuple[str, Any]) -> Any:
    return item[1]


class _VoteLogic(StatefulBatchLogic[Verdict, Alert, bytes]):
    def __init__(self, config: SecurityConfig, flow: str, window_s: float,
                 resume: bytes | None) -> None:  # fmt: skip
        self.config, self.flow, self.window_s = config, flow, window_s
        state = pickle.loads(resume) if resume else {}
        self.hst: HalfSpaceTrees = state.get("hst") or config.hst()
        self.learned: int = state.get("learned", 0)  # device windows the HST has seen
        # device -> windows in a row without a verdict since its last alert
        self.episodes: dict[str, int] = dict(state.get("episodes", {}))

    def on_batch(self, values: list[Verdict]) -> tuple[list[Alert], bool]:
        devices = [v for v in values if v.window.device != BROKER_DEVICE]
        ready = self.learned >= self.config.hst_window  # its first reference window is full
        scores = iter(self._hst(devices).tolist())
        self.learned += len(devices)
        alerts = []
        for v in values:
            votes = {"zscore": {"score": round(v.score, 3), "threshold": self.config.z_threshold,
                                "vote": v.vote}}  # fmt: skip
            if v.window.device != BROKER_DEVICE:
                s = next(scores)
                if ready:
                    votes["hst"] = {"score": round(s, 4), "threshold": self.config.hst_threshold,
                                    "vote": s >= self.config.hst_threshold}  # fmt: skip
            k = min(self.config.k, len(votes))
            device = v.window.device
            if sum(bool(d["vote"]) for d in votes.values()) < k:
                if device in self.episodes:
                    self.episodes[device] += 1
                    if self.episodes[device] >= self.config.rearm_windows:
                        del self.episodes[device]
            elif device not in self.episodes:
                self.episodes[device] = 0
                alerts.append(self._alert(v, votes))
            else:
                self.episodes[device] = 0
        return alerts, StatefulBatchLogic.RETAIN

    def _hst(self, verdicts: Sequence[Verdict]) -> npt.NDArray[np.float64]:
        if not verdicts:
            return np.zeros(0)
        absz = np.abs(np.stack([v.z for v in verdicts]))
        groups = np.stack([absz[:, idx].max(axis=1) for idx in _GROUP_IDX], axis=1)
        return self.hst.score_learn_many(np.minimum(groups, self.config.clip))

    def _alert(self, v: Verdict, votes: dict[str, Any]) -> Alert:
        w = v.window
        ts = _EPOCH + timedelta(seconds=w.end)
        names = BROKER_FEATURES if w.device == BROKER_DEVICE else FEATURES
        values = {n: _num(x) for n, x in zip(names, w.x.tolist(), strict=True)}
        severity = "critical" if v.reason in _CRITICAL or v.score >= 3 * self.config.z_threshold \
            else "warning"  # fmt: skip
        details = {"reason": v.reason, "window_s": self.window_s, "drivers": v.drivers}
        return Alert(alert_id(self.flow, w.device, "security", ts), w.device, self.flow,
                     "security", round(v.score, 3), self.config.z_threshold, ts,
                     datetime.now(timezone.utc), values, votes, severity, (), "security",
                     details)  # fmt: skip

    def snapshot(self) -> bytes:
        return pickle.dumps({"hst": self.hst, "episodes": dict(self.episodes),
                             "learned": self.learned},
                            protocol=pickle.HIGHEST_PROTOCOL)  # fmt: skip


@operator
def vote(
    step_id: str, up: Stream[Verdict], config: SecurityConfig, flow: str, window_s: float
) -> Stream[Alert]:
    """Add the fleet HST's vote to each verdict and alert on ``k`` votes, once per episode.

    Args:
        step_id: Unique ID.
        up: Verdicts of the baseline rule.
        config: Thresholds, ``k`` and the HST's parameters.
        flow: Flow name stamped on the alerts (part of their ``alert_id``).
        window_s: The windows' length, recorded in each alert's details.

    Returns:
        Security alerts (``kind="security"``, detector ``"security"``, ``ts`` the end of
        the window, ``score`` the largest ``|z|``, ``votes`` both detectors', ``details``
        the reason and the driving features with their baselines).
    """
    keyed = op.key_on("fleet", up, _fleet)

    def builder(resume: bytes | None) -> _VoteLogic:
        return _VoteLogic(config, flow, window_s, resume)

    alerts = op.stateful_batch("vote", keyed, builder)
    return op.map("unkey", alerts, _value)


def _fleet(_: Verdict) -> str:
    return "fleet"
