"""``edgewatch fleet status`` and ``edgewatch fleet bench``: the fleet-learning commands.

``status`` reads the retained ``<prefix>models/<flow>/…`` topics (``--flow``, default
air_quality) for a moment and prints one line per group and node: samples, windows (or
pumps), age of the last summary, drift from the group's merged summary, and whether the
aggregator merged it. ``bench`` runs :mod:`dataflows.fleet_bench` (``--flow pump``:
:mod:`dataflows.fleet_bench_pump`).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, TextIO

import orjson
import paho.mqtt.client as mqtt

from dataflows.fleet import FLOWS
from dataflows.inputs import mqtt_settings
from dataflows.settings import Settings
from models.summaries import SummaryError, decode
from sources.mqtt import MQTTConnectError

__all__ = ["add_fleet_parser", "fleet_command", "read_retained", "status_rows"]


def add_fleet_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``fleet`` command and its ``status`` and ``bench`` subcommands."""
    f = sub.add_parser("fleet", help="fleet learning: status of the shared models, bench",
                       description="Fleet learning (see the README's Fleet learning).")  # fmt: skip
    fs = f.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND")
    st = fs.add_parser("status", help="groups, nodes, samples, last update and drift")
    st.add_argument("--broker", metavar="URL", help="mqtt[s]://[user@]host[:port]")
    st.add_argument("--flow", default="air_quality", choices=FLOWS)
    st.add_argument("--wait", type=float, default=1.5, metavar="S",
                    help="seconds to collect retained topics (default 1.5)")  # fmt: skip
    st.add_argument("--config", metavar="FILE", help="TOML settings file")
    b = fs.add_parser("bench", help="recall of joining sensors with and without the prior",
                      description="Offline: warm a simulated fleet, merge its summaries, and "
                      "score sensors joining it with and without the fleet prior. The last "
                      "line is one JSON object.")  # fmt: skip
    b.add_argument(
        "--flow",
        default="air_quality",
        choices=FLOWS,
        help="air_quality: simulated PurpleAir sensors; pump: SKAB pumps",
    )
    b.add_argument("--sensors", type=int, help="warm fleet (default 60; pump sim: 12)")
    b.add_argument("--nodes", type=int, default=3, help="nodes it is spread over (default 3)")
    b.add_argument("--new", type=int, help="sensors joining (default 40)")
    b.add_argument("--days", type=float, default=2.0, help="warm-up days (default 2)")
    b.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    b.add_argument(
        "--skab",
        metavar="DIR",
        help="pump: SKAB files, one pump each (default ../shared/data/skab/valve1)",
    )
    b.add_argument(
        "--source",
        default="skab",
        choices=("skab", "sim"),
        help="pump: the SKAB files (default) or simulated pumps (sources/pump_sim.py)",
    )
    b.add_argument("--folds", type=int, default=4, help="pump: folds of joining pumps (4)")
    b.add_argument(
        "--q", type=float, help="pump: the prior's threshold quantile (default: the ensemble's q)"
    )
    b.add_argument("--config", metavar="FILE", help="TOML settings file")


def fleet_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``edgewatch fleet status`` or ``edgewatch fleet bench``."""
    if args.fleet_command == "bench" and args.flow == "pump":
        from dataflows.fleet_bench_pump import pump_bench_command  # noqa: PLC0415

        return pump_bench_command(args, out)
    if args.fleet_command == "bench":
        from dataflows.fleet_bench import fleet_bench_command  # noqa: PLC0415

        return fleet_bench_command(args, out)
    overrides = {"mqtt_url": args.broker, "mqtt_connect_timeout_s": 5.0}
    settings = Settings.load(args.config, **overrides)
    try:
        retained = read_retained(settings, f"{settings.mqtt_prefix}models/{args.flow}/#",
                                 args.wait)  # fmt: skip
    except MQTTConnectError as exc:
        sys.stderr.write(f"edgewatch fleet status: {exc}\n")
        return 1
    rows = status_rows(retained, settings.mqtt_prefix)
    head = ("group", "node", "samples", "windows", "updated", "drift", "state")
    out.write("".join(f"{h:<{w}}" for h, w in zip(head, _WIDTHS, strict=True)).rstrip() + "\n")
    for row in rows:
        out.write("".join(f"{c:<{w}}" for c, w in zip(row, _WIDTHS, strict=True)).rstrip() + "\n")
    if not rows:
        out.write(f"(no summaries on {settings.mqtt_prefix}models/{args.flow}/)\n")
    return 0


_WIDTHS = (14, 20, 10, 9, 10, 9, 20)


def read_retained(settings: Settings, topic: str, wait_s: float) -> dict[str, bytes]:
    """The retained messages under ``topic`` (a filter), collected for ``wait_s`` seconds."""
    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got[msg.topic] = bytes(msg.payload)

    def setup(client: mqtt.Client) -> None:
        client.on_message = on_message

    def subscribe(client: mqtt.Client, session_present: bool) -> None:
        client.subscribe(topic, qos=1)

    client = mqtt_settings(settings).connect(f"edgewatch-fleet-status-{time.time_ns()}",
                                             persistent=False, setup=setup,
                                             on_connected=subscribe)  # fmt: skip
    try:
        time.sleep(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return {t: p for t, p in got.items() if p}


def status_rows(retained: dict[str, bytes], prefix: str = "") -> list[tuple[str, ...]]:
    """One row per node summary: group, node, samples, windows, age, drift, state."""
    drifts: dict[tuple[str, str], float] = {}
    for topic, payload in retained.items():
        if topic.endswith("/drift"):
            doc = orjson.loads(payload)
            drifts.update({(doc["group"], n): v["drift"] for n, v in doc["nodes"].items()})
    rows = []
    now = datetime.now(timezone.utc)
    for topic, payload in retained.items():
        levels = topic.removeprefix(prefix).split("/")
        if len(levels) != 3:
            continue
        try:
            s = decode(payload)
        except SummaryError as error:
            rows.append(("?", levels[2], "-", "-", "-", "-", f"invalid: {error.reason}"))
            continue
        drift = drifts.get((s.group, s.node))
        parts = s.meta.get("windows", f"{s.meta.get('pumps', '-')} pumps")
        rows.append((s.group, s.node, f"{s.count:,}", str(parts),
                     _age((now - s.created_at).total_seconds()),
                     "-" if drift is None else f"{drift:.4f}",
                     "merged" if drift is not None else "not merged"))  # fmt: skip
    return sorted(rows)


def _age(seconds: float) -> str:
    """``42s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"
