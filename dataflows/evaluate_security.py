"""``edgewatch evaluate --dataset security-sim``: the security flow on a labelled fleet.

The misbehaving-device simulator (:mod:`sources.security_sim`) runs a fleet (1,000
devices over 24 simulated hours with 10 injected misbehaviours by default) through the
real security dataflow; its alerts are matched to the labels:

* an injected misbehaviour is *detected* by the first alert naming its device (or, for
  refused logins, which mosquitto logs without a client id, the device's host
  ``unknown@<ip>``) whose window overlaps the episode or closes within two windows after;
* its *time to detect* is that alert's window end minus the episode's start, in windows
  (a misbehaviour caught in the window it began in takes at most 1);
* every other alert is a *false alarm*, counted per 1,000 device-hours.

The bar: every misbehaviour detected, median time to detect <= 2 windows, <= 1 false
alarm per 1,000 device-hours. Progress goes to stderr, a table per kind to stdout, and
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, cast

import orjson
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from dataflows.security import build_flow
from dataflows.settings import Settings
from operators.records import Alert
from sources.security_sim import DeviceFleet, DeviceFleetConfig, DeviceFleetSource, Misbehaviour

__all__ = ["Match", "evaluate_security", "match_alerts", "run_summary", "security_eval_command"]


@dataclass(frozen=True)
class Match:
    """How one injected misbehaviour was caught.

    Attributes:
        label: The injected episode.
        alert: The first alert that caught it (``None``: missed).
        windows: Time to detect in windows (``None``: missed).
    """

    label: Misbehaviour
    alert: Alert | None
    windows: float | None


def match_alerts(
    alerts: Sequence[Alert],
    labels: Sequence[Misbehaviour],
    window_s: float,
    aliases: Callable[[str], set[str]] = lambda device: {device},
) -> tuple[list[Match], list[Alert]]:
    """Match alerts to labelled episodes: the matches, and the alerts that are false alarms.

    ``aliases`` gives the names an alert may use for a device (a refused login names only
    the host it came from: ``unknown@<host>``).

    >>> from datetime import datetime, timezone
    >>> def at(device, end):
    ...     t = datetime.fromtimestamp(end, timezone.utc)
    ...     return Alert(f"{device}{end}", device, "security", "security", 9.0, 3.0, t, t, {})
    >>> labels = [Misbehaviour("d1", "flood", 1000.0, 1300.0)]
    >>> found, false = match_alerts([at("d1", 1020.0), at("d2", 1020.0)], labels, 60.0)
    >>> found[0].windows, [a.sensor_id for a in false]
    (0.333, ['d2'])
    """
    found: list[Match] = []
    used: set[str] = set()
    for m in labels:
        names = aliases(m.device)
        hits = sorted((a for a in alerts if a.sensor_id in names
                       and m.start < a.ts.timestamp() <= m.end + 2 * window_s),
                      key=lambda a: a.ts)  # fmt: skip
        used.update(a.alert_id for a in hits)
        first = hits[0] if hits else None
        ttd = None if first is None else round((first.ts.timestamp() - m.start) / window_s, 3)
        found.append(Match(m, first, ttd))
    return found, [a for a in alerts if a.alert_id not in used]


def _aliases(fleet: DeviceFleet) -> Callable[[str], set[str]]:
    def names(device: str) -> set[str]:
        return {device, f"unknown@{fleet.host(device)}"}

    return names


def run_summary(alerts: Sequence[Alert], config: DeviceFleetConfig, window_s: float) -> str:
    """Lines for ``edgewatch run --flow security``'s summary: the alerts against the labels."""
    fleet = DeviceFleet(config)
    found, false = match_alerts(alerts, fleet.labels(), window_s, _aliases(fleet))
    kinds: dict[str, list[int]] = {}
    for m in found:
        k = kinds.setdefault(m.label.kind, [0, 0])
        k[0] += m.alert is not None
        k[1] += 1
    ttds = [m.windows for m in found if m.windows is not None]
    median = f", median {statistics.median(ttds):.2f} windows to detect" if ttds else ""
    per_1000 = 1000 * len(false) / fleet.device_hours()
    detail = ", ".join(f"{k} {d}/{n}" for k, (d, n) in sorted(kinds.items()))
    return (f"  misbehaviour detected {len(ttds)}/{len(found)}{median}: {detail}\n"
            f"  false alarms {len(false)} ({per_1000:.2f} per 1,000 device-hours)\n")  # fmt: skip


def evaluate_security(
    config: DeviceFleetConfig, settings: Settings, progress: TextIO | None = None
) -> dict[str, Any]:
    """Run the security flow over the simulated fleet and score its alerts."""
    alerts: list[Alert] = []
    lock = threading.Lock()

    def collect(batch: list[Alert]) -> None:
        with lock:
            alerts.extend(batch)

    quiet = dataclasses.replace(settings, source="simulator", alerts_path="", deadletter_path="",
                                audit_path="", mqtt_outputs="off", metrics_addr="")  # fmt: skip
    fleet = DeviceFleet(config)
    flow = build_flow(quiet, source=DeviceFleetSource(config, batch_size=settings.batch_size),
                      on_alerts=collect)  # fmt: skip
    if progress is not None:
        progress.write(f"security-sim: {config.devices:,} devices, "
                       f"{config.duration_s / 3600:g} h, {config.misbehaviours} "
                       "misbehaviours; running the flow …\n")  # fmt: skip
    start = time.perf_counter()
    cast(Callable[[Dataflow], None], run_main)(flow)
    wall = time.perf_counter() - start
    found, false = match_alerts(alerts, fleet.labels(), settings.security_window_s,
                                _aliases(fleet))  # fmt: skip
    ttds = [m.windows for m in found if m.windows is not None]
    per_1000 = 1000 * len(false) / fleet.device_hours()
    return {
        "dataset": "security-sim", "devices": config.devices,
        "hours": config.duration_s / 3600, "seed": config.seed,
        "window_s": settings.security_window_s, "injected": len(found),
        "detected": len(ttds),
        "median_windows_to_detect": round(statistics.median(ttds), 3) if ttds else None,
        "max_windows_to_detect": max(ttds) if ttds else None,
        "false_alarms": len(false), "false_alarms_per_1000_device_hours": round(per_1000, 3),
        "alerts": len(alerts), "wall_s": round(wall, 1),
        "kinds": [{"kind": m.label.kind, "device": m.label.device,
                   "minutes": round((m.label.end - m.label.start) / 60, 1),
                   "detected": m.alert is not None, "windows_to_detect": m.windows,
                   "reason": None if m.alert is None else m.alert.details.get("reason")}
                  for m in found],
        "false_alarm_reasons": sorted({str(a.details.get("reason")) for a in false}),
    }  # fmt: skip


def _table(out: TextIO, r: dict[str, Any]) -> None:
    w = out.write
    w(f"{'kind':<15} {'device':<10} {'minutes':>7} {'detected':>8} {'windows':>8}  reason\n")
    for k in sorted(r["kinds"], key=lambda k: k["kind"]):
        ttd = "-" if k["windows_to_detect"] is None else f"{k['windows_to_detect']:.2f}"
        w(f"{k['kind']:<15} {k['device']:<10} {k['minutes']:>7.1f} "
          f"{'yes' if k['detected'] else 'NO':>8} {ttd:>8}  {k['reason'] or '-'}\n")  # fmt: skip
    w(f"detected {r['detected']}/{r['injected']}, median {r['median_windows_to_detect']} "
      f"windows to detect; {r['false_alarms']} false alarms = "
      f"{r['false_alarms_per_1000_device_hours']} per 1,000 device-hours "
      f"({r['devices']:,} devices x {r['hours']:g} h); {r['wall_s']} s\n")  # fmt: skip


def security_eval_command(args: argparse.Namespace) -> int:
    """``edgewatch evaluate --dataset security-sim``: table to stdout, last line JSON."""
    settings = Settings.load(getattr(args, "config", None))
    config = DeviceFleetConfig(devices=args.devices, duration_s=args.hours * 3600,
                               seed=args.seed, misbehaviours=args.misbehaviours)  # fmt: skip
    result = evaluate_security(config, settings, sys.stderr)
    _table(sys.stdout, result)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    ok = (result["detected"] == result["injected"]
          and (result["median_windows_to_detect"] or 0) <= 2
          and result["false_alarms_per_1000_device_hours"] <= 1)  # fmt: skip
    return 0 if ok or not args.strict else 1
