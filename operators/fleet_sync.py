"""Fleet learning on a node: what its Half-Space Trees give the fleet, and what they take.

A node's per-sensor models add the reference masses of every window they finish to one
:class:`NodeAccumulator` (a running sum, no work per reading: a model checks a row count
after each batch and copies 5,110 masses once a window); its
:meth:`~NodeAccumulator.summary` is the node's ``"hst"`` summary (:mod:`models.fleet`)
that :mod:`dataflows.fleet_node` publishes. The fleet's merged summary comes back into a
:class:`PriorStore`, which checks it (version, group, kind, parameters, checksum) and
keeps it ready as a model: a sensor the node has never seen starts from the fleet's
average window (:func:`models.fleet.hst_prior`) and scores from its first reading; its
own first window then replaces the prior, and only its own windows are ever contributed.

Nothing here touches a network; every class is thread-safe (Bytewax workers add, the
MQTT threads read and offer).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt

from models.fleet import hst_prior, summarise
from models.halfspace import HalfSpaceTrees
from models.summaries import MALFORMED, MISMATCH, WRONG_SHAPE, Summary, SummaryError, decode

__all__ = ["MAX_WINDOWS", "MODEL_VERSION", "FleetModel", "NodeAccumulator", "PriorStore",
           "fleet_factories", "hst_template"]  # fmt: skip

logger = logging.getLogger(__name__)

MODEL_VERSION = "hst-masses/1"
"""``model_version`` of air-quality HST summaries: what the masses mean (bump on change)."""
MAX_WINDOWS = 4096
"""A node's sum keeps at most this many windows: beyond, sum and count are halved, so old
windows fade (about exponentially) and the merged masses stay far below ``2**32``."""


def hst_template(new_model: Callable[[], HalfSpaceTrees], *, flow: str, node: str,
                 group: str) -> Summary:  # fmt: skip
    """An empty (zero windows) summary of the models ``new_model`` builds.

    Its fingerprint is what every summary of the same parameters carries.

    >>> t = hst_template(lambda: HalfSpaceTrees(2, 3, 10, {"x": (0, 1)}, 1, ["x"]),
    ...                  flow="f", node="n", group="g")
    >>> t.count, t.meta["windows"], t.arrays["masses"].shape
    (0, 0, (30,))
    """
    model = new_model()
    model.set_reference_masses(np.zeros(model.n_trees * (2 ** (model.height + 1) - 1), np.int64))
    part = summarise(model, flow=flow, node=node, group=group, model_version=MODEL_VERSION)
    return dataclasses.replace(part, count=0, meta={**part.meta, "windows": 0})


class NodeAccumulator:
    """The sum of the reference masses of every window this node's models finished.

    Args:
        template: :func:`hst_template` of the node's models (names, parameters).
        max_windows: Halve the sum and the window count when they reach this.
    """

    def __init__(self, template: Summary, max_windows: int = MAX_WINDOWS) -> None:
        self.template, self.max_windows = template, max_windows
        self._sum = np.zeros(template.arrays["masses"].shape, dtype=np.int64)
        self._windows = 0
        self._lock = threading.Lock()

    def add(self, masses: npt.NDArray[np.int64]) -> None:
        """Add one finished window's reference masses."""
        with self._lock:
            self._sum += masses
            self._windows += 1
            if self._windows >= self.max_windows:  # ceil keeps the average <= window_size
                self._sum //= 2
                self._windows = math.ceil(self._windows / 2)

    @property
    def windows(self) -> int:
        """Windows summed (after halving)."""
        return self._windows

    def summary(self, now: datetime | None = None) -> Summary | None:
        """The node's summary (``count``: windows x window size), or ``None`` before any."""
        with self._lock:
            windows, masses = self._windows, self._sum.astype(np.uint32)
        if not windows:
            return None
        t = self.template
        stamp = now or datetime.now(timezone.utc).replace(microsecond=0)
        return dataclasses.replace(t, count=windows * int(t.meta["window_size"]),
                                   created_at=stamp, meta={**t.meta, "windows": windows},
                                   arrays={"masses": masses})  # fmt: skip


class PriorStore:
    """The fleet prior a node received last, checked, ready to seed new sensors.

    Args:
        template: :func:`hst_template` of the node's models; a prior must match its
            kind, model version, group and parameter fingerprint.
        gain: Multiply the fleet's average masses by this (capped at ``window_size``).
            The average spreads a window over every sensor's range, so one sensor's usual
            values weigh less than in its own window; a gain above 1 gives them back
            weight (fewer false alarms), while where no sensor goes stays at 0 (see the
            README's fleet learning figures).
    """

    def __init__(self, template: Summary, gain: float = 1.0) -> None:
        self.template, self.gain = template, gain
        self.fleet: Summary | None = None
        self._proto: bytes | None = None
        self._lock = threading.Lock()

    def offer(self, data: bytes) -> Summary | None:
        """Take a fleet summary's bytes (empty: the fleet withdrew it, forget the prior).

        Raises:
            SummaryError: The summary is refused; the prior in use stays.
        """
        if not data:
            with self._lock:
                self.fleet, self._proto = None, None
            return None
        t = self.template
        fleet = decode(data, expect_kind=t.kind, expect_version=t.model_version,
                       expect_group=t.group)  # fmt: skip
        if fleet.fingerprint != t.fingerprint or fleet.flow != t.flow:
            msg = f"parameters {fleet.fingerprint} of {fleet.flow}, expected {t.fingerprint}"
            raise SummaryError(MISMATCH, msg)
        if int(fleet.meta.get("windows", 0)) < 1:
            msg = "a fleet summary of no windows"
            raise SummaryError(MALFORMED, msg)
        try:
            model = hst_prior(fleet)
            if self.gain != 1.0:
                mean = fleet.arrays["masses"] / int(fleet.meta["windows"])
                model.set_reference_masses(
                    np.minimum(np.rint(mean * self.gain), model.window_size).astype(np.int64)
                )
            proto = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        except (ValueError, KeyError, TypeError) as error:
            raise SummaryError(WRONG_SHAPE, str(error)) from error
        with self._lock:
            self.fleet, self._proto = fleet, proto
        return fleet

    def new_model(self) -> HalfSpaceTrees | None:
        """A fresh model holding the prior (``None`` without one)."""
        proto = self._proto
        return None if proto is None else pickle.loads(proto)  # noqa: S301 - our own bytes


class FleetModel:
    """A sensor's HST that adds each window it finishes to a node's accumulator.

    It pickles as the bare model, so snapshots do not depend on fleet learning.
    """

    __slots__ = ("_add", "model")

    def __init__(self, model: HalfSpaceTrees, add: Callable[[Any], None]) -> None:
        self.model, self._add = model, add

    def score_learn_many(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Score then learn ``x``; contribute the reference masses if a window ended."""
        model = self.model
        ended = model.window_rows + len(x) >= model.window_size
        scores = model.score_learn_many(x)
        if ended:
            masses = model.reference_masses()
            if masses is not None:
                self._add(masses)
        return scores

    def __reduce__(self) -> tuple[Any, ...]:
        return object.__new__, (type(self.model),), self.model.__getstate__()


def fleet_factories(
    new_model: Callable[[], HalfSpaceTrees],
    accumulator: NodeAccumulator,
    prior: PriorStore,
    on_prior: Callable[[], None] | None = None,
) -> tuple[Callable[[], FleetModel], Callable[[bytes], FleetModel]]:
    """``(new, restore)`` for :func:`operators.score.score`: models that contribute.

    ``new`` starts a model from the prior when there is one (calling ``on_prior``), else
    from ``new_model``; ``restore`` unpickles a snapshot.
    """

    def new() -> FleetModel:
        model = prior.new_model()
        if model is None:
            model = new_model()
        elif on_prior is not None:
            on_prior()
        return FleetModel(model, accumulator.add)

    def restore(data: bytes) -> FleetModel:
        return FleetModel(pickle.loads(data), accumulator.add)  # noqa: S301 - our snapshot

    return new, restore
