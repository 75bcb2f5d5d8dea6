"""Fleet learning on a node: what its Half-Space Trees give the fleet, and what they take.

A node's per-sensor models add the reference masses of every window they finish to one
:class:`NodeAccumulator`, in the level bucket of the window (the median of its first
feature, :mod:`models.fleet_hst`): a running sum per bucket, no model work per reading (a
model copies its batch's values of that feature and checks a row count; it takes a
median and copies 5,110 masses once a window). Its :meth:`~NodeAccumulator.summary` is
the node's ``"hst"`` summary (:mod:`models.fleet`) that :mod:`dataflows.fleet_node`
publishes. The fleet's merged summary comes back into a :class:`PriorStore`, which
checks it (version, group, kind, parameters, checksum) and keeps it ready: a sensor the
node has never seen starts from the fleet's average window near its level and scores
from its first reading. Until its own first window ends, a :class:`Newcomer` moves that
prior with the sensor's level (the median of the readings it did not alert on); the
first own window is then blended halfway with the prior instead of replacing it, and
later windows replace the masses as usual. Only the sensors' own windows are ever
contributed.

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

from models.fleet import summarise
from models.fleet_hst import LevelPrior, bucket_of
from models.halfspace import HalfSpaceTrees
from models.summaries import MALFORMED, WRONG_SHAPE, Summary, SummaryError, decode_like

__all__ = ["MAX_WINDOWS", "MODEL_VERSION", "FleetModel", "Newcomer", "NodeAccumulator",
           "PriorStore", "fleet_factories", "hst_template"]  # fmt: skip

logger = logging.getLogger(__name__)

MODEL_VERSION = "hst-levels/2"
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
    (0, 0, (0, 30))
    """
    model = new_model()
    model.set_reference_masses(np.zeros(model.n_trees * (2 ** (model.height + 1) - 1), np.int64))
    part = summarise(model, flow=flow, node=node, group=group, model_version=MODEL_VERSION)
    empty = {name: a[:0] for name, a in part.arrays.items()}
    return dataclasses.replace(part, count=0, meta={**part.meta, "windows": 0, "buckets": 0},
                               arrays=empty)  # fmt: skip


class NodeAccumulator:
    """The sum of the reference masses of every window this node's models finished.

    Sums are kept per level bucket (:mod:`models.fleet_hst`) of the windows.

    Args:
        template: :func:`hst_template` of the node's models (names, parameters).
        max_windows: Halve every sum and window count when they reach this in all.
    """

    def __init__(self, template: Summary, max_windows: int = MAX_WINDOWS) -> None:
        self.template, self.max_windows = template, max_windows
        self.edges: tuple[float, ...] = tuple(template.meta["level_edges"])
        self._sums: dict[int, npt.NDArray[np.int64]] = {}
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, masses: npt.NDArray[np.int64], level: float = math.nan) -> None:
        """Add one finished window's reference masses, of level ``level``."""
        bucket = bucket_of(level, self.edges)
        with self._lock:
            if bucket not in self._sums:
                self._sums[bucket] = np.zeros(masses.shape, dtype=np.int64)
                self._counts[bucket] = 0
            self._sums[bucket] += masses
            self._counts[bucket] += 1
            if sum(self._counts.values()) >= self.max_windows:  # ceil: average <= window_size
                for b in self._sums:
                    self._sums[b] //= 2
                    self._counts[b] = math.ceil(self._counts[b] / 2)

    @property
    def windows(self) -> int:
        """Windows summed (after halving)."""
        return sum(self._counts.values())

    def summary(self, now: datetime | None = None) -> Summary | None:
        """The node's summary (``count``: windows x window size), or ``None`` before any."""
        with self._lock:
            buckets = sorted(self._sums)
            arrays = {"buckets": np.array(buckets, np.uint32),
                      "windows": np.array([self._counts[b] for b in buckets], np.uint32),
                      "masses": np.array([self._sums[b] for b in buckets], np.uint32)}  # fmt: skip
        windows = int(arrays["windows"].sum())
        if not windows:
            return None
        t = self.template
        stamp = now or datetime.now(timezone.utc).replace(microsecond=0)
        meta = {**t.meta, "windows": windows, "buckets": len(buckets)}
        return dataclasses.replace(t, count=windows * int(t.meta["window_size"]),
                                   created_at=stamp, meta=meta, arrays=arrays)  # fmt: skip


class PriorStore:
    """The fleet prior a node received last, checked, ready to seed new sensors.

    Args:
        template: :func:`hst_template` of the node's models; a prior must match its
            kind, model version, group and parameter fingerprint.
        gain: Multiply the fleet's average masses by this (capped at ``window_size``).
            The average spreads a window over the ranges of many sensors (of about the
            same level), so one sensor's usual values weigh less than in its own window;
            a gain above 1 gives them back weight (fewer false alarms), while where no
            sensor goes stays at 0 (see the README's fleet learning figures).
    """

    def __init__(self, template: Summary, gain: float = 1.0) -> None:
        self.template, self.gain = template, gain
        self.fleet: Summary | None = None
        self.prior: LevelPrior | None = None
        self._lock = threading.Lock()

    def offer(self, data: bytes) -> Summary | None:
        """Take a fleet summary's bytes (empty: the fleet withdrew it, forget the prior).

        Raises:
            SummaryError: The summary is refused; the prior in use stays.
        """
        if not data:
            with self._lock:
                self.fleet, self.prior = None, None
            return None
        fleet = decode_like(data, self.template)
        if int(fleet.meta.get("windows", 0)) < 1:
            msg = "a fleet summary of no windows"
            raise SummaryError(MALFORMED, msg)
        try:
            prior = LevelPrior(fleet, self.gain)
            prior.model()  # the pooled masses fit the trees
        except (ValueError, KeyError, TypeError) as error:
            raise SummaryError(WRONG_SHAPE, str(error)) from error
        with self._lock:
            self.fleet, self.prior = fleet, prior
        return fleet

    def new_model(self, level: float | None = None) -> HalfSpaceTrees | None:
        """A fresh model holding the prior of ``level`` (``None`` without a prior)."""
        prior = self.prior
        return None if prior is None else prior.model(level)


class FleetModel:
    """A sensor's HST that adds each window it finishes, with its level, to an accumulator.

    It keeps the current window's values of the level feature (the first) to take the
    window's median at its end. A model seeded from the prior also carries a
    :class:`Newcomer` until its first own window ends. It pickles as the bare model, so
    snapshots do not depend on fleet learning (a restore ends the newcomer phase early).
    """

    __slots__ = ("_add", "_values", "model", "newcomer")

    def __init__(self, model: HalfSpaceTrees, add: Callable[..., None],
                 newcomer: Newcomer | None = None) -> None:  # fmt: skip
        self.model, self._add, self.newcomer = model, add, newcomer
        self._values = np.full(model.window_size, np.nan)  # NaN: rows not seen (restored)

    def score_learn_many(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Score then learn ``x``; contribute the reference masses if a window ended."""
        model, young = self.model, self.newcomer
        if young is not None:
            young.place(model, x)
        rows = model.window_rows
        scores = model.score_learn_many(x)
        if rows + len(x) < model.window_size:  # the usual: the window goes on
            self._values[rows : rows + len(x)] = x[:, 0]
            if young is not None:
                young.learn(x, scores)
            return scores
        masses = model.reference_masses()
        if masses is not None:
            self._add(masses, self._window_level(x[:, 0], rows))
        if young is not None:
            young.blend(model)
            self.newcomer = None
        return scores

    def _window_level(self, column: npt.NDArray[np.float64], rows: int) -> float:
        """Median of the last window that ``column`` finished; keeps the rows after it."""
        size = len(self._values)
        joined = np.concatenate([self._values[:rows], column])
        end = len(joined) - len(joined) % size
        last, rest = joined[end - size : end], joined[end:]
        self._values[:] = np.nan
        self._values[: len(rest)] = rest
        return float(np.nanmedian(last)) if np.isfinite(last).any() else math.nan

    def __reduce__(self) -> tuple[Any, ...]:
        return object.__new__, (type(self.model),), self.model.__getstate__()


class Newcomer:
    """A seeded sensor's first window: its prior follows its level, then meets its own.

    Before each batch, the sensor's level (median of the readings it has not flagged so
    far; the batch's median before any) picks the prior's bucket; when the first own
    window ends, the model's reference masses become the mean of its own and the
    prior's, so one window that caught an episode does not make its normal readings rare.

    Args:
        prior: The fleet prior.
        threshold: Scores above it are alerts (their readings do not set the level).
    """

    def __init__(self, prior: LevelPrior, threshold: float) -> None:
        self.prior, self.threshold = prior, threshold
        self.bucket: int | None = None
        self._clean = np.empty(0)

    def level(self, x: npt.NDArray[np.float64]) -> float:
        """The sensor's level: median of its unflagged readings, else of ``x``."""
        values = self._clean if len(self._clean) else x[:, 0]
        return float(np.nanmedian(values)) if np.isfinite(values).any() else math.nan

    def place(self, model: HalfSpaceTrees, x: npt.NDArray[np.float64]) -> None:
        """Give ``model`` the prior of the sensor's bucket, if it moved."""
        bucket = self.prior.bucket(self.level(x))
        if bucket != self.bucket:
            model.set_reference_masses(self.prior.masses(bucket))
            self.bucket = bucket

    def learn(self, x: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]) -> (
            npt.NDArray[np.float64]):  # fmt: skip
        """Keep the unflagged readings (the last window's worth); returns ``scores``."""
        clean = np.concatenate([self._clean, x[scores <= self.threshold, 0]])
        self._clean = clean[-self.prior.window_size :]
        return scores

    def blend(self, model: HalfSpaceTrees) -> None:
        """After the first own window: reference masses halfway between own and prior."""
        own = model.reference_masses()
        if own is not None:
            prior = self.prior.masses(self.bucket).astype(np.int64)
            model.set_reference_masses((own + prior + 1) // 2)


def fleet_factories(
    new_model: Callable[[], HalfSpaceTrees],
    accumulator: NodeAccumulator,
    prior: PriorStore,
    on_prior: Callable[[], None] | None = None,
    threshold: float = 0.7,
) -> tuple[Callable[[], FleetModel], Callable[[bytes], FleetModel]]:
    """``(new, restore)`` for :func:`operators.score.score`: models that contribute.

    ``new`` starts a model from the prior when there is one (calling ``on_prior``), a
    :class:`Newcomer` whose alerts are scores above ``threshold``, else from
    ``new_model``; ``restore`` unpickles a snapshot.
    """

    def new() -> FleetModel:
        level_prior = prior.prior
        if level_prior is None:
            return FleetModel(new_model(), accumulator.add)
        if on_prior is not None:
            on_prior()
        return FleetModel(level_prior.model(), accumulator.add, Newcomer(level_prior, threshold))

    def restore(data: bytes) -> FleetModel:
        return FleetModel(pickle.loads(data), accumulator.add)  # noqa: S301 - our snapshot

    return new, restore
