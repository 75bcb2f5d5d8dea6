"""``edgewatch bench --flow security``: messages per second through the security flow.

The misbehaving-device simulator's events (MQTT message tuples and broker events, as the
live sources hand them over) are generated in memory beforehand, then run through
:func:`dataflows.security.build_flow` on one Bytewax worker. The baseline, measured in
the same run over the same events and batches, is the least a per-device windowed flow
does in Bytewax: decode each message's JSON, key it by topic and count it with
``count_window`` over the same tumbling event-time windows. The observe stage (decode,
validity check, device attribution) is also timed outside the runtime. The issue's bar
is 20,000 messages/s on one worker; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any, cast

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, count_window
from bytewax.testing import TestingSource, run_main

from dataflows.security import build_flow, observer
from dataflows.settings import Settings
from operators.records import Alert
from sinks.memory import CallbackSink
from sources.security_sim import DeviceFleet, DeviceFleetConfig

__all__ = ["TARGET", "security_bench_command"]

_WINDOW_S = Settings().security_window_s
TARGET = 20_000.0
"""Messages per second the flow must keep up with on one worker."""


def _events(n: int, devices: int) -> list[Any]:
    per_hour = devices * 3600 / DeviceFleetConfig.interval_s
    hours = max(2.0, 1.2 * n / per_hour + 1.0)  # the misbehaviours start after an hour
    config = DeviceFleetConfig(devices=devices, duration_s=hours * 3600,
                               misbehaviours=min(10, devices))  # fmt: skip
    events = list(islice(DeviceFleet(config).events(), n))
    # end at a window boundary: a window cut short would look like a fleet gone quiet
    end = _time(events[-1]) // _WINDOW_S * _WINDOW_S
    while events and _time(events[-1]) >= end:
        events.pop()
    return events


def _time(event: Any) -> float:
    return float(event[2] if type(event) is tuple else event.ts)


def _run(flow: Dataflow) -> float:
    start = time.perf_counter()
    cast(Callable[[Dataflow], None], run_main)(flow)
    return time.perf_counter() - start


def _baseline(events: list[Any], batch: int, window_s: float) -> float:
    """Decode, key by topic, ``count_window`` per device: the windowed flow's floor."""
    flow = Dataflow("baseline")
    messages = op.filter("messages", op.input("in", flow, TestingSource(events, batch)),
                         lambda e: type(e) is tuple)  # fmt: skip
    keyed = op.map("decode", messages, _decode)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    clock = EventClock(_second, timedelta(0), to_system_utc=_never)
    counts = count_window("count", keyed, clock,
                          TumblingWindower(timedelta(seconds=window_s), epoch), _first)  # fmt: skip
    op.output("out", counts.down, CallbackSink(_drop))
    return _run(flow)


def _decode(m: tuple[str, bytes, float]) -> tuple[str, datetime]:
    try:
        orjson.loads(m[1])
    except orjson.JSONDecodeError:
        pass
    return m[0], datetime.fromtimestamp(m[2], timezone.utc)


def _second(item: tuple[str, datetime]) -> datetime:
    return item[1]


def _first(item: tuple[str, datetime]) -> str:
    return item[0]


def _never(_: datetime) -> None:
    return None


def _drop(_: list[Any]) -> None:
    return None


def security_bench_command(args: argparse.Namespace) -> int:
    """Time the security flow against the bare runtime; the last line is JSON."""
    say: Callable[[str], Any] = (lambda _: None) if args.json else sys.stdout.write
    devices = args.sensors if args.sensors != 100 else 1000  # the bench's default is air's
    say(f"bench: security flow, {args.events:,} events from {devices:,} devices, "
        f"batch {args.batch_size}\n")  # fmt: skip
    events = _events(args.events, devices)
    settings = dataclasses.replace(Settings.load(env={}), alerts_path="", deadletter_path="",
                                   metrics_addr="", batch_size=args.batch_size)  # fmt: skip
    alerts: list[Alert] = []
    flow = build_flow(settings, source=TestingSource(events, args.batch_size),
                      on_alerts=alerts.extend)  # fmt: skip
    wall = _run(flow)
    base = _baseline(events, args.batch_size, settings.security_window_s)
    observe = observer(settings)
    start = time.perf_counter()
    for i in range(0, len(events), args.batch_size):
        observe(events[i : i + args.batch_size])
    observe_us = (time.perf_counter() - start) / len(events) * 1e6
    rate, base_rate = len(events) / wall, len(events) / base
    result = {
        "flow": "security", "events": len(events), "devices": devices,
        "batch_size": args.batch_size, "events_per_s": round(rate),
        "baseline_events_per_s": round(base_rate),
        "ratio_to_baseline": round(rate / base_rate, 3),
        "observe_us_per_event": round(observe_us, 2), "target_events_per_s": TARGET,
        "meets_target": rate >= TARGET, "alerts": len(alerts), "wall_s": round(wall, 2),
    }  # fmt: skip
    say(f"security flow   {rate:>10,.0f} events/s  ({wall:.2f} s, {len(alerts)} alerts)\n"
        f"baseline        {base_rate:>10,.0f} events/s  (decode + count_window per "
        f"device, same events): ratio {rate / base_rate:.2f}\n"
        f"observe stage   {observe_us:>10.2f} us/event (decode, check, attribute)\n"
        f"target          {TARGET:>10,.0f} events/s: "
        f"{'met' if rate >= TARGET else 'NOT met'} ({rate / TARGET:.2f}x)\n")  # fmt: skip
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0
