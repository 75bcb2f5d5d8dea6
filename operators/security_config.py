"""How the security flow judges device windows: detectors, groups, floors, priors, config.

The per-feature scale floors and the priors of a new device live here, next to the
:class:`SecurityConfig` that builds a device's :class:`~models.robust.RobustBaseline` and
the fleet's :class:`~models.halfspace.HalfSpaceTrees` from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.halfspace import HalfSpaceTrees
from models.robust import RobustBaseline
from operators.device_features import BROKER_FEATURES, FEATURES

__all__ = ["DETECTORS", "GROUPS", "REASONS", "SecurityConfig"]

DETECTORS = ("zscore", "hst")
GROUPS: dict[str, tuple[str, ...]] = {
    "traffic": ("messages", "kbytes", "jitter_s", "silent_windows"),
    "payload": ("size_mean", "size_max"),
    "topics": ("topics", "foreign_writes", "acl_denied"),
    "validity": ("invalid_ratio", "new_fields"),
    "health": ("reboots", "rssi_mean", "connects", "disconnects"),
    "auth": ("auth_failures", "protocol_errors"),
}
"""The HST's dimensions: groups of :data:`FEATURES`."""
REASONS = FEATURES + tuple(f"broker_{f}" for f in BROKER_FEATURES)
"""Every alert reason (the feature with the largest ``|z|``): the metric's label values."""

# Scale floors: a feature that never varied still needs this much change to reach z = 1.
_FLOORS = {"messages": 1.0, "kbytes": 1.0, "size_mean": 64.0, "size_max": 64.0, "topics": 1.0,
           "foreign_writes": 0.5, "jitter_s": 5.0, "invalid_ratio": 0.1, "new_fields": 1.0,
           "reboots": 0.5, "rssi_mean": 5.0, "connects": 1.0, "disconnects": 1.0,
           "auth_failures": 0.5, "acl_denied": 0.5, "protocol_errors": 0.5,
           "silent_windows": 0.5}  # fmt: skip
# Priors while a device is new: these are zero for any well-behaved device.
_PRIOR_ZERO = {"foreign_writes", "reboots", "auth_failures", "acl_denied", "protocol_errors"}
_BROKER_FLOORS = (1.0, 1.0, 1000.0, 1.0, 0.5)


@dataclass(frozen=True)
class SecurityConfig:
    """How device windows are judged.

    Attributes:
        z_threshold: ``|z|`` at which the baseline rule votes (the seed's 3 sigma).
        k: Detectors that must vote for an alert (of ``zscore`` and ``hst``).
        history: Windows a device's baseline remembers.
        min_history: Windows before every feature is scored (until then only the
            features whose normal is zero: foreign writes, reboots, auth failures, ACL
            denials, protocol errors).
        hst_threshold: HST score at which it votes.
        hst_trees: Trees of the fleet HST.
        hst_height: Their height.
        hst_window: Device windows per HST reference window (until the first is full
            the HST abstains).
        clip: Largest ``|z|`` the HST sees.
        seed: HST seed.
        rearm_windows: Windows in a row without a verdict that end a device's episode.
        refresh_every: Learned windows between two recomputations of a device's median
            and MAD (:class:`~models.robust.RobustBaseline`).
    """

    z_threshold: float = 3.0
    k: int = 2
    history: int = 120
    min_history: int = 10
    hst_threshold: float = 0.25
    hst_trees: int = 25
    hst_height: int = 6
    hst_window: int = 500
    clip: float = 10.0
    seed: int = 11
    rearm_windows: int = 3
    refresh_every: int = 5

    def __post_init__(self) -> None:
        problems = [text for bad, text in (
            (self.z_threshold <= 0, "z_threshold must be > 0"),
            (not 1 <= self.k <= len(DETECTORS), f"k must be 1..{len(DETECTORS)}"),
            (not 1 <= self.min_history <= self.history, "need 1 <= min_history <= history"),
            (not 0 < self.hst_threshold < 1, "hst_threshold must be in (0, 1)"),
            (self.clip <= self.z_threshold, "clip must exceed z_threshold"),
        ) if bad]  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))

    def baseline(self, broker: bool = False) -> RobustBaseline:
        """A fresh baseline for a device (or the broker)."""
        if broker:
            return RobustBaseline(len(BROKER_FEATURES), self.history, self.min_history,
                                  _BROKER_FLOORS, refresh_every=self.refresh_every)  # fmt: skip
        prior = [0.0 if f in _PRIOR_ZERO else math.nan for f in FEATURES]
        return RobustBaseline(len(FEATURES), self.history, self.min_history,
                              [_FLOORS[f] for f in FEATURES], prior=prior,
                              refresh_every=self.refresh_every)  # fmt: skip

    def hst(self) -> HalfSpaceTrees:
        """The fleet's Half-Space Trees over the groups' ``|z|``."""
        return HalfSpaceTrees(self.hst_trees, self.hst_height, self.hst_window,
                              {g: (0.0, self.clip) for g in GROUPS}, self.seed,
                              tuple(GROUPS))  # fmt: skip
