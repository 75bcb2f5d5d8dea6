"""``edgewatch fleet bench``: does the fleet prior catch anomalies of sensors that just joined?

Offline, models only (the MQTT path is the end-to-end test's): a simulated PurpleAir-shaped
fleet of ``--sensors`` warms up for ``--days`` on ``--nodes`` nodes, each node's models
adding their windows to a :class:`~operators.fleet_sync.NodeAccumulator`. The node
summaries are encoded (their size is reported), decoded, merged as the aggregator merges
them, encoded again and offered to a :class:`~operators.fleet_sync.PriorStore`, exactly
the bytes a node would receive. Then ``--new`` sensors join (another seed, so other
baselines), each with ``spike`` and ``drift`` episodes — the kinds Half-Space Trees on
one PM channel can see — placed in its first 100 readings, and every one is scored twice
on the same readings: from the fleet prior (the nodes' own code: a prior following the
sensor's level, blended with its first own window), and from scratch (the first window
scores 0).

Reported, on the new sensors' first 100 readings: recall of labelled readings and of
episodes (one alert inside is a catch), and the false-alarm rate (alerts on unlabelled
readings / unlabelled readings); next to them, the warmed-up fleet's false-alarm rate and
recall over its second half. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import numpy as np
import orjson

from dataflows.air_quality import FLOW_NAME, hst_factory
from dataflows.settings import Settings
from models.fleet import merge
from models.halfspace import HalfSpaceTrees
from models.summaries import decode, encode
from operators.fleet_sync import (
    FleetModel,
    NodeAccumulator,
    PriorStore,
    fleet_factories,
    hst_template,
)
from sources.simulator import FIRST_SENSOR_INDEX, Simulator, SimulatorConfig

__all__ = ["Outcome", "fleet_bench", "fleet_bench_command", "sensor_series"]

FIRST = 100  # readings of a new sensor that are judged
BATCH = 24  # readings per model call, as a flow's batches
VISIBLE = ("spike", "drift")  # the kinds judged for recall


@dataclass(frozen=True)
class Outcome:
    """Alerts against labels: readings and episodes caught, false alarms."""

    labelled: int
    caught: int
    episodes: int
    episodes_caught: int
    normal: int
    false_alarms: int

    @property
    def recall(self) -> float:
        """Labelled readings alerted / labelled readings."""
        return self.caught / max(self.labelled, 1)

    @property
    def episode_recall(self) -> float:
        """Episodes with at least one alert / episodes."""
        return self.episodes_caught / max(self.episodes, 1)

    @property
    def far(self) -> float:
        """Unlabelled readings alerted / unlabelled readings."""
        return self.false_alarms / max(self.normal, 1)

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(*(a + b for a, b in zip(self.row(), other.row(), strict=True)))

    def row(self) -> tuple[int, ...]:
        """The counts, in field order."""
        return (self.labelled, self.caught, self.episodes, self.episodes_caught, self.normal,
                self.false_alarms)  # fmt: skip


def sensor_series(cfg: SimulatorConfig, field: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per sensor: ``field``, gaps filled with the running mean, and each reading's label.

    A label is the reading's episode kind, ``""`` when normal.
    """
    labels = Simulator(cfg).labels()
    values: dict[str, list[float]] = {}
    stamps: dict[str, list[int]] = {}
    for row in Simulator(cfg).payloads():
        sid = str(row["sensor_index"])
        v = row[field]
        values.setdefault(sid, []).append(np.nan if v is None else float(v))
        stamps.setdefault(sid, []).append(int(row["last_seen"]))
    out = {}
    for sid, vs in values.items():
        x = np.asarray(vs)
        seen = np.cumsum(~np.isnan(x))
        means = np.cumsum(np.nan_to_num(x)) / np.maximum(seen, 1)
        filled = np.where(np.isnan(x), np.concatenate([[np.nan], means[:-1]]), x)
        out[sid] = (filled, np.array([labels.get((sid, t), "") for t in stamps[sid]]))
    return out


def _scores(model: HalfSpaceTrees | FleetModel, x: np.ndarray) -> np.ndarray:
    parts = [model.score_learn_many(x[i : i + BATCH, None]) for i in range(0, len(x), BATCH)]
    return np.concatenate(parts)


def _judge(alerts: np.ndarray, kinds: np.ndarray) -> Outcome:
    """Recall over spike and drift readings, false alarms over normal ones.

    Stuck values and dropouts, which no HST on one PM channel can see, count as neither.
    """
    labels, normal = np.isin(kinds, VISIBLE), kinds == ""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labels.astype(int), [0]])))
    spans = list(zip(edges[::2], edges[1::2], strict=True))
    return Outcome(int(labels.sum()), int((alerts & labels).sum()), len(spans),
                   sum(bool(alerts[a:b].any()) for a, b in spans), int(normal.sum()),
                   int((alerts & normal).sum()))  # fmt: skip


def fleet_bench(settings: Settings, *, sensors: int = 60, nodes: int = 3, new: int = 40,
                days: float = 2.0, seed: int = 7) -> dict[str, Any]:  # fmt: skip
    """Warm a fleet, merge its summaries, score joining sensors with and without the prior."""
    fresh, field, limit = hst_factory(settings), settings.hst_features[0], settings.threshold
    interval = settings.sim_interval_s
    warm_cfg = SimulatorConfig(sensors=sensors, interval_s=interval,
                               duration_s=int(days * 86_400), seed=seed)  # fmt: skip
    accumulators = [NodeAccumulator(hst_template(fresh, flow=FLOW_NAME, node=f"node-{i + 1}",
                                                 group="bench")) for i in range(nodes)]  # fmt: skip
    warmed = Outcome(0, 0, 0, 0, 0, 0)
    for sid, (x, labels) in sensor_series(warm_cfg, field).items():
        node = (int(sid) - FIRST_SENSOR_INDEX) % nodes
        alerts = _scores(FleetModel(fresh(), accumulators[node].add), x) > limit
        half = len(x) // 2
        warmed += _judge(alerts[half:], labels[half:])
    wire = [encode(s) for a in accumulators if (s := a.summary()) is not None]
    fleet = merge([decode(data) for data in wire])
    prior = PriorStore(accumulators[0].template, settings.fleet_prior_gain)
    prior.offer(encode(fleet))
    start = warm_cfg.start + timedelta(seconds=warm_cfg.duration_s)
    new_cfg = SimulatorConfig(sensors=new, interval_s=interval, duration_s=FIRST * interval,
                              seed=seed + 1000, start=start, anomaly_rate=0.12,
                              kinds=VISIBLE, warmup_s=5 * interval)  # fmt: skip
    with_prior = without = first_window = Outcome(0, 0, 0, 0, 0, 0)
    window = settings.hst_window
    joined = NodeAccumulator(accumulators[0].template)  # what the new sensors contribute
    new_seeded, _ = fleet_factories(fresh, joined, prior, threshold=limit)
    for x, labels in sensor_series(new_cfg, field).values():
        alerts = _scores(new_seeded(), x) > limit
        with_prior += _judge(alerts, labels)
        first_window += _judge(alerts[:window], labels[:window])
        without += _judge(_scores(fresh(), x) > limit, labels)
    return {"fleet_sensors": sensors, "nodes": nodes, "new_sensors": new, "warm_days": days,
            "summary_bytes": max(len(w) for w in wire), "fleet_bytes": len(encode(fleet)),
            "fleet_windows": fleet.meta["windows"], "threshold": limit,
            "prior_gain": settings.fleet_prior_gain, "new_with_prior": _doc(with_prior),
            "new_without_prior": _doc(without), "new_prior_first_window": _doc(first_window),
            "warmed": _doc(warmed)}  # fmt: skip


def _doc(o: Outcome) -> dict[str, Any]:
    return {"recall": round(o.recall, 4), "episode_recall": round(o.episode_recall, 4),
            "false_alarm_rate": round(o.far, 5), "labelled": o.labelled,
            "episodes": o.episodes, "normal": o.normal}  # fmt: skip


def _table(result: dict[str, Any], out: TextIO) -> None:
    rows: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (f"new sensors, first {FIRST} readings, fleet prior", lambda: result["new_with_prior"]),
        (f"new sensors, first {FIRST} readings, no prior", lambda: result["new_without_prior"]),
        ("  of which the first window (prior alone)", lambda: result["new_prior_first_window"]),
        ("warmed-up sensors (second half)", lambda: result["warmed"]),
    ]
    out.write(f"{'':46} {'recall':>7} {'episodes':>9} {'false alarms':>13}\n")
    for name, get in rows:
        d = get()
        out.write(f"{name:46} {d['recall']:7.3f} {d['episode_recall']:9.3f} "
                  f"{100 * d['false_alarm_rate']:12.3f}%\n")  # fmt: skip
    out.write(f"summaries: node {result['summary_bytes']:,} B, fleet {result['fleet_bytes']:,} B "
              f"(limit 65,536 B), {result['fleet_windows']:,} windows merged\n")  # fmt: skip


def fleet_bench_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run :func:`fleet_bench` with the command's options; print a table, then JSON."""
    settings = Settings.load(args.config)
    result = fleet_bench(settings, sensors=args.sensors or 60, nodes=args.nodes, new=args.new or 40,
                         days=args.days, seed=args.seed)  # fmt: skip
    _table(result, out)
    out.write(orjson.dumps(result).decode() + "\n")
    return 0
