"""``edgewatch fleet bench --flow pump``: do pumps joining a fleet catch a fault sooner?

Offline, on SKAB (``--skab``, default ``../shared/data/skab/valve1``; every file is one
pump, each with one labelled valve fault). The files are split into ``--folds`` folds;
in each fold the other pumps are the running fleet, spread over ``--nodes`` nodes: every
one runs its whole file through a :class:`~models.pump_fleet.FleetPump` adding to its
node's :class:`~models.pump_fleet.PumpNode`. The node summaries are encoded, decoded and
merged as the aggregator does, and the fold's pumps join: each starts ``u`` readings
before its fault (``u`` drawn in ``[20, 80]`` from ``--seed``, so its first 100 readings
hold normal ones then the fault's start) and is run twice on the same readings: from
the fleet prior, and as a plain ensemble waiting for its 400-row prefix.

Reported: recall of labelled readings, false-alarm rate and the share of episodes (runs
of labelled readings) with at least one alert over the joining pumps' first 100
readings, with and without the prior; for comparison the warmed-up pumps (the
fleet's own, past their prefix): over every scored normal row, and on the same 100
readings of the same files. The last line is one JSON object.

``--source sim`` runs the same comparison on simulated SKAB-shaped pumps
(:func:`pump_sim_bench`, :mod:`sources.pump_sim`) instead of the files.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import orjson

from dataflows.evaluate_skab import SKAB_CHANNELS, read_skab_file
from dataflows.pump import FLOW_NAME, SKAB_DIR, ensemble_config
from dataflows.settings import Settings
from models.ensemble import EnsembleConfig, PumpEnsemble
from models.fleet import merge
from models.pump_fleet import FleetPump, PumpNode, PumpPrior, pump_template
from models.summaries import decode, encode
from sources.pump_sim import FIELDS, PumpSim, PumpSimConfig

__all__ = ["SIM_KINDS", "pump_bench", "pump_bench_command", "pump_sim_bench"]

FIRST = 100  # readings of a joining pump that are judged
BATCH = 10  # rows per ensemble call (results do not depend on it)
SIM_KINDS = ("spike", "drift", "cavitation")  # simulated kinds that change the readings' law
Bools = npt.NDArray[np.bool_]


def _alerts(model: PumpEnsemble, x: npt.NDArray[np.float64]) -> Bools:
    return np.concatenate([model.process(x[i : i + BATCH]).alerts
                           for i in range(0, len(x), BATCH)])  # fmt: skip


def _count(alerts: Bools, labels: Bools) -> npt.NDArray[np.int64]:
    """``[caught, labelled, false alarms, normal, episodes caught, episodes]``.

    An episode is a run of labelled readings; it is caught when one of them alerts.
    """
    edges = np.diff(np.concatenate([[0], labels.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    hit = [bool(alerts[a:b].any()) for a, b in zip(starts, ends, strict=True)]
    return np.array([(alerts & labels).sum(), labels.sum(), (alerts & ~labels).sum(),
                     (~labels).sum(), sum(hit), len(hit)], dtype=np.int64)  # fmt: skip


def pump_bench(config: EnsembleConfig, files: list[Path], *, nodes: int = 3, folds: int = 4,
               seed: int = 7, q: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Warm fleets fold by fold, merge their summaries, run joining pumps with and without.

    ``q``: the prior's threshold quantile (default: the ensemble's ``q``).
    """
    q = config.q if q is None else q
    columns = [SKAB_CHANNELS.index(c) for c in config.channels]
    pumps = [(x[:, columns], y) for x, y in map(read_skab_file, files)]
    rng = np.random.default_rng(seed)
    starts = [int(np.flatnonzero(y)[0]) - int(rng.integers(20, 81)) for _, y in pumps]
    fold_of = rng.permutation(len(pumps)) % folds
    tally = {name: np.zeros(6, np.int64) for name in ("with", "without", "warm", "warm_same")}
    sizes: list[int] = []
    fleets: list[int] = []
    for fold in range(folds):
        fleet_ids = [i for i in range(len(pumps)) if fold_of[i] != fold]
        accs = _nodes(config, nodes)
        for rank, i in enumerate(fleet_ids):
            warm = FleetPump(config)
            warm.node = accs[rank % nodes]
            x, y = pumps[i]
            alerts = _alerts(warm, x)
            scored = np.arange(len(x)) >= config.train_rows
            if fold == (fold_of[i] + 1) % folds:  # count every pump once
                tally["warm"] += _count(alerts[scored], y[scored])
                at = starts[i]
                tally["warm_same"] += _count(alerts[at : at + FIRST], y[at : at + FIRST])
        prior, wire, fleet_bytes = _fleet_prior(accs, q)
        sizes += wire
        fleets.append(fleet_bytes)
        for i in (i for i in range(len(pumps)) if fold_of[i] == fold):
            x, y = pumps[i]
            x, y = x[starts[i] : starts[i] + FIRST], y[starts[i] : starts[i] + FIRST]
            tally["with"] += _count(_alerts(FleetPump(config, prior), x), y)
            tally["without"] += _count(_alerts(PumpEnsemble(config), x), y)
    return {"pumps": len(pumps), "nodes": nodes, "folds": folds, "seed": seed, "q": q,
            "summary_bytes": max(sizes), "fleet_bytes": max(fleets),
            **{name: _doc(t) for name, t in tally.items()}}  # fmt: skip


def _fleet_prior(accs: list[PumpNode], q: float) -> tuple[PumpPrior | None, list[int], int]:
    """The nodes' summaries through the wire and the aggregator's merge: prior and sizes."""
    wire = [encode(s) for a in accs if (s := a.summary()) is not None]
    fleet = encode(merge([decode(data) for data in wire]))
    return PumpPrior.of(decode(fleet), q), [len(w) for w in wire], len(fleet)


def _nodes(config: EnsembleConfig, nodes: int) -> list[PumpNode]:
    return [PumpNode(pump_template(config, flow=FLOW_NAME, node=f"node-{n + 1}", group="bench"))
            for n in range(nodes)]  # fmt: skip


def pump_sim_bench(config: EnsembleConfig, *, pumps: int = 12, new: int = 40, nodes: int = 3,
                   readings: int = 1000, seed: int = 7,
                   q: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The same comparison on simulated pumps (:mod:`sources.pump_sim`).

    ``pumps`` warm pumps run ``readings`` readings each (1.5 % in episodes after 100
    clean ones) on ``nodes`` nodes; ``new`` pumps of another seed join with episodes
    in their first 100 readings (12 % labelled, after 20 clean ones). Only
    :data:`SIM_KINDS` are injected: a stuck channel stays inside the normal law.
    Warmed-up pumps are judged on their readings past their prefix.
    """
    q = config.q if q is None else q
    columns = [FIELDS.index(c) for c in config.channels]
    warm_sim = PumpSim(PumpSimConfig(pumps=pumps, readings=readings, seed=seed, kinds=SIM_KINDS))
    accs = _nodes(config, nodes)
    tally = {name: np.zeros(6, np.int64) for name in ("with", "without", "warm")}
    kinds_caught = {kind: np.zeros(2, np.int64) for kind in SIM_KINDS}
    for i in range(pumps):
        warm = FleetPump(config)
        warm.node = accs[i % nodes]
        x, kinds = warm_sim.matrix(i)
        alerts = _alerts(warm, x[:, columns])
        at = config.train_rows
        tally["warm"] += _count(alerts[at:], kinds[at:] != "")
    prior, sizes, fleet_bytes = _fleet_prior(accs, q)
    new_sim = PumpSim(PumpSimConfig(pumps=new, readings=FIRST, seed=seed + 1000, first=10_000,
                                    anomaly_rate=0.12, kinds=SIM_KINDS, warmup=20))  # fmt: skip
    for i in range(new):
        x, kinds = new_sim.matrix(i)
        x, y = x[:, columns], kinds != ""
        alerts = _alerts(FleetPump(config, prior), x)
        tally["with"] += _count(alerts, y)
        tally["without"] += _count(_alerts(PumpEnsemble(config), x), y)
        for kind, acc in kinds_caught.items():
            acc += [(alerts & (kinds == kind)).sum(), (kinds == kind).sum()]
    return {"source": "sim", "pumps": pumps + new, "new": new, "nodes": nodes, "folds": 1,
            "seed": seed, "q": q, "summary_bytes": max(sizes), "fleet_bytes": fleet_bytes,
            **{name: _doc(t) for name, t in tally.items()},
            "with_by_kind": {kind: round(int(c) / max(int(n), 1), 4)
                             for kind, (c, n) in kinds_caught.items()}}  # fmt: skip


def _doc(t: npt.NDArray[np.int64]) -> dict[str, Any]:
    caught, labelled, false, normal, found, episodes = (int(v) for v in t)
    return {"recall": round(caught / max(labelled, 1), 4),
            "false_alarm_rate": round(false / max(normal, 1), 5),
            "labelled": labelled, "normal": normal,
            "episode_recall": round(found / max(episodes, 1), 4), "episodes": episodes}  # fmt: skip


def _table(result: dict[str, Any], out: TextIO) -> None:
    rows: Iterable[tuple[str, Callable[[], dict[str, Any]]]] = [
        (f"joining pumps, first {FIRST} readings, fleet prior", lambda: result["with"]),
        (f"joining pumps, first {FIRST} readings, no prior", lambda: result["without"]),
        ("warmed-up pumps, every scored normal row", lambda: result["warm"]),
        (f"warmed-up pumps, the same {FIRST} readings", lambda: result["warm_same"]),
    ][: 4 if "warm_same" in result else 3]
    out.write(f"{'':50} {'recall':>7} {'false alarms':>13} {'episodes caught':>16}\n")
    for name, get in rows:
        d = get()
        out.write(f"{name:50} {d['recall']:7.3f} {100 * d['false_alarm_rate']:12.3f}% "
                  f"{d['episode_recall']:16.3f}\n")  # fmt: skip
    if "with_by_kind" in result:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in result["with_by_kind"].items())
        out.write(f"recall by kind, fleet prior: {kinds}\n")
    r = result
    out.write(f"summaries: node {r['summary_bytes']:,} B, fleet {r['fleet_bytes']:,} B (limit "
              f"65,536 B), {r['pumps']} pumps in {r['folds']} folds\n")  # fmt: skip


def pump_bench_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run :func:`pump_bench` (or :func:`pump_sim_bench`); print a table, then JSON."""
    config = ensemble_config(Settings.load(args.config))
    if args.source == "sim":
        result = pump_sim_bench(config, pumps=args.sensors or 12, new=args.new or 40,
                                nodes=args.nodes, seed=args.seed, q=args.q)  # fmt: skip
        _table(result, out)
        out.write(orjson.dumps(result).decode() + "\n")
        return 0
    folder = Path(args.skab) if args.skab else SKAB_DIR
    files = sorted(folder.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
    if len(files) < 2:
        out.write(f"edgewatch fleet bench: need at least 2 SKAB files in {folder}\n")
        return 2
    result = pump_bench(config, files, nodes=args.nodes, folds=min(args.folds, len(files)),
                        seed=args.seed, q=args.q)  # fmt: skip
    _table(result, out)
    out.write(orjson.dumps(result).decode() + "\n")
    return 0
