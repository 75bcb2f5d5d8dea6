"""``edgewatch replay``: publish a dataset to ``sensors/<id>/readings``, in event-time order.

The dataset is read with the flows' own sources (:func:`dataflows.inputs.build_source`)
and parser. A message holding one reading is published as it came (a JSON line's bytes,
a PurpleAir row, a CSV row as ``{"sensor_id", "ts", "values"}``); one holding several (a
JSON array, a whole ``/v1/sensors`` response on one line) is split into one
``{"sensor_id", "ts", "values"}`` per reading, each on its own sensor's topic. A message
the parser refuses is published unchanged to ``sensors/_unparsed/readings``, so a replay
exercises the dead-letter path too (the flow dead-letters it there, unless all it lacked
was a sensor id, which that topic supplies), and counted apart (``--skip-unparsed``
leaves such messages out).

Publishing (pacing, the acknowledgement window, counts) is :mod:`dataflows.publish`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from dataflows.inputs import build_source, iter_messages, mqtt_settings
from dataflows.publish import (
    DEFAULT_RATE,
    UNPARSED,
    Progress,
    ReplayError,
    ReplayInterrupted,
    ReplayMessage,
    check_prefix,
    publish,
)
from dataflows.settings import ConfigError, Settings
from operators.parse import ParseLimits, parse_message
from operators.records import RawMessage, Reading
from sources.mqtt import MQTTConnectError

__all__ = ["replay_command", "replay_messages"]


def _json(payload: bytes | dict[str, Any]) -> bytes:
    return payload if isinstance(payload, bytes) else orjson.dumps(payload, default=repr)


def replay_messages(messages: Iterable[RawMessage]) -> list[ReplayMessage]:
    """Messages to publish, sorted by event time (stable: ties keep the input order).

    A message that does not parse takes the event time of the reading before it in the
    input, so it stays next to its neighbours.

    >>> rows = [("f:1", {"sensor_id": "b", "ts": 1711929720, "values": {"x": 2}}, 0.0),
    ...         ("f:2", {"sensor_id": "a", "ts": 1711929600, "values": {"x": 1}}, 0.0),
    ...         ("f:3", b"{oops", 0.0)]
    >>> [(m.sensor_id, m.payload[:20]) for m in replay_messages(rows)]
    [('a', b'{"sensor_id":"a","ts'), ('_unparsed', b'{oops'), ('b', b'{"sensor_id":"b","ts')]
    """
    limits = ParseLimits(max_future_s=float("inf"))
    out: list[ReplayMessage] = []
    last_ts = float("-inf")
    for origin, raw, received in messages:
        parsed = parse_message(origin, raw, received, limits)
        for item in parsed:
            if not isinstance(item, Reading):
                out.append(ReplayMessage(UNPARSED, last_ts, _json(item.payload)))
                continue
            last_ts = item.ts.timestamp()
            body = _json(raw) if len(parsed) == 1 else orjson.dumps(
                {"sensor_id": item.sensor_id, "ts": item.ts.isoformat(), "values": item.values}
            )  # fmt: skip
            out.append(ReplayMessage(item.sensor_id, last_ts, body))
    out.sort(key=lambda m: m.ts)
    return out


def _settings(args: argparse.Namespace) -> Settings:
    paths, sim = tuple(args.path), args.format == "simulator"
    problems = [
        (not (sim and paths), "--format simulator takes no PATH (it has --sensors, --duration, "
                              "--interval, --seed)"),
        (sim or bool(paths), f"--format {args.format} needs a PATH"),
        (args.format != "purpleair" or len(paths) <= 1, "--format purpleair takes one PATH"),
        (not any(map(os.path.isdir, paths)), "a PATH is a directory: name its files"),
        (args.rate is None or args.rate > 0, "--rate must be positive"),
        (args.limit is None or args.limit >= 0, "--limit must not be negative"),
        (args.connect_timeout > 0 and args.ack_timeout > 0, "timeouts must be positive"),
    ]  # fmt: skip
    for ok, msg in problems:
        if not ok:
            raise ConfigError(msg)
    return Settings.load(
        args.config, source=args.format, source_path=paths or None, sim_sensors=args.sensors,
        sim_duration_s=args.duration, sim_interval_s=args.interval, sim_seed=args.seed,
        mqtt_url=args.broker, mqtt_prefix=args.prefix, mqtt_password_file=args.password_file,
        mqtt_ca_file=args.ca_file, mqtt_cert_file=args.cert_file, mqtt_key_file=args.key_file,
        mqtt_connect_timeout_s=args.connect_timeout,
    )  # fmt: skip


def _read(settings: Settings) -> list[ReplayMessage]:
    try:
        return replay_messages(iter_messages(build_source(settings)))
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        where = ", ".join(settings.source_path) or "the simulator"
        msg = f"cannot read {where} as --format {settings.source}: {exc}"
        raise ConfigError(msg) from None


def replay_command(args: argparse.Namespace) -> int:
    """Run ``edgewatch replay``: 0 when all is acknowledged, 1 on a broker error, 130 on Ctrl-C.

    A usage or input problem raises :class:`ConfigError` (the CLI exits 2).
    """
    settings = _settings(args)
    try:
        prefix = check_prefix(settings.mqtt_prefix)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    broker = mqtt_settings(settings)
    messages = _read(settings)
    if args.skip_unparsed:
        messages = [m for m in messages if m.sensor_id != UNPARSED]
    progress = Progress(sys.stderr)
    rate = None if args.max else args.rate or DEFAULT_RATE
    try:
        stats = publish(broker, messages[: args.limit], prefix=prefix, qos=args.qos, rate=rate,
                        client_id=args.client_id, ack_timeout_s=args.ack_timeout,
                        progress=progress)  # fmt: skip
    except ReplayInterrupted as exc:
        progress.close()
        sys.stdout.write(f"interrupted: {exc.stats.summary()}\n")
        sys.stderr.write("edgewatch: interrupted\n")
        return 130
    except (MQTTConnectError, ReplayError, OSError) as exc:
        progress.close()
        if isinstance(exc, ReplayError):
            sys.stdout.write(f"{exc.stats.summary()}\n")
        where = "" if isinstance(exc, (MQTTConnectError, ReplayError)) else f"{broker.url}: "
        sys.stderr.write(f"edgewatch: cannot publish: {where}{exc}\n")
        return 1
    progress.close()
    sys.stdout.write(f"{stats.summary()}\n")
    return 0
