"""Pick the input connector a flow reads from, by configuration, and parse what it reads."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, Source

from dataflows.monitoring import instrument_source
from dataflows.settings import ConfigError, Settings
from operators.feedback import FEEDBACK_TOPIC
from operators.keyed import key_batched
from operators.limits import rate_limit
from operators.parse import KeyedParseOut, ParseLimits, ParseOut, parse, parse_keyed, parse_routed
from operators.records import RawMessage, Reading
from sources.files import (
    CSVSource,
    JSONLSource,
    household_power_source,
    nab_source,
    skab_source,
)
from sources.mqtt import MQTTSettings, MQTTSource
from sources.purpleair import PurpleAirAPISource, PurpleAirSnapshotSource
from sources.simulator import SimulatorConfig, SimulatorSource

__all__ = ["build_source", "feedback_source", "iter_messages", "mqtt_settings", "mqtt_source",
           "read_keyed_input",
           "read_input", "simulator_config"]  # fmt: skip

_Source = FixedPartitionedSource[Any, Any]


def simulator_config(settings: Settings) -> SimulatorConfig:
    """The simulator configuration the settings describe."""
    return SimulatorConfig(
        sensors=settings.sim_sensors,
        interval_s=settings.sim_interval_s,
        duration_s=settings.sim_duration_s,
        seed=settings.sim_seed,
    )


def _purpleair_api(settings: Settings, _: list[Path]) -> _Source:
    key_file = settings.purpleair_api_key_file or None
    if key_file is None and not os.environ.get("EDGEWATCH_PURPLEAIR_API_KEY"):
        msg = (
            "the PurpleAir API needs a read key: set EDGEWATCH_PURPLEAIR_API_KEY "
            "or EDGEWATCH_PURPLEAIR_API_KEY_FILE"
        )
        raise ConfigError(msg)
    return PurpleAirAPISource(
        base_url=settings.purpleair_api_url,
        api_key_file=key_file,
        poll_interval_s=settings.purpleair_poll_s,
    )


def mqtt_settings(settings: Settings) -> MQTTSettings:
    """How to reach the broker the settings name; :class:`ConfigError` if malformed."""
    files = {
        "password_file": settings.mqtt_password_file,
        "ca_file": settings.mqtt_ca_file,
        "cert_file": settings.mqtt_cert_file,
        "key_file": settings.mqtt_key_file,
    }
    missing = [f"mqtt_{k}={v}" for k, v in files.items() if v and not Path(v).is_file()]
    if missing:
        msg = f"file(s) not found: {', '.join(missing)}"
        raise ConfigError(msg)
    options: dict[str, Any] = {k: v for k, v in files.items() if v}
    if settings.mqtt_username:
        options["username"] = settings.mqtt_username
    try:
        return MQTTSettings.from_url(
            settings.mqtt_url,
            protocol=settings.mqtt_protocol,
            session_expiry_s=settings.mqtt_session_expiry_s,
            connect_timeout_s=settings.mqtt_connect_timeout_s,
            **options,
        )
    except ValueError as exc:
        msg = f"mqtt_url={settings.mqtt_url!r}: {exc}"
        raise ConfigError(msg) from None


def mqtt_source(settings: Settings, flow: str) -> MQTTSource:
    """The MQTT source the settings describe (client id ``edgewatch-<flow>`` by default)."""
    prefix = settings.mqtt_prefix
    try:
        return MQTTSource(
            settings=mqtt_settings(settings),
            topics=tuple(prefix + t for t in settings.mqtt_topics),
            qos=settings.mqtt_qos,
            client_id=settings.mqtt_client_id or None,
            shared_group=settings.mqtt_group or None,
            process_id=settings.mqtt_process_id,
            partitions=settings.mqtt_partitions,
            queue_size=settings.mqtt_queue_size,
            flow=flow,
            max_batch=settings.batch_size,
            idle_stop_s=settings.mqtt_idle_stop_s or None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_BUILDERS: dict[str, Callable[[Settings, list[Path]], _Source]] = {
    "simulator": lambda s, _: SimulatorSource(simulator_config(s), batch_size=s.batch_size),
    "purpleair": lambda s, p: PurpleAirSnapshotSource(p[0], batch_size=s.batch_size),
    "purpleair-api": _purpleair_api,
    "jsonl": lambda s, p: JSONLSource(p),
    "csv": lambda s, p: CSVSource(p),
    "nab": lambda s, p: nab_source(p),
    "skab": lambda s, p: skab_source(p),
    "household-power": lambda s, p: household_power_source(p),
}


def build_source(settings: Settings, flow: str = "main") -> _Source:
    """The Bytewax source for ``settings.source``; raises :class:`ConfigError` if unusable.

    ``flow`` names the flow in the MQTT client id.
    """
    if settings.source == "mqtt":
        return mqtt_source(settings, flow)
    paths = [Path(p) for p in settings.source_path]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        msg = f"input file(s) not found: {', '.join(missing)}"
        raise ConfigError(msg)
    return _BUILDERS[settings.source](settings, paths)


def feedback_source(settings: Settings, flow: str) -> MQTTSource:
    """The MQTT source of ``<prefix>feedback/+`` (client id ``edgewatch-<flow>-feedback``)."""
    client_id = f"{settings.mqtt_client_id}-feedback" if settings.mqtt_client_id else ""
    only = dataclasses.replace(settings, mqtt_topics=(FEEDBACK_TOPIC,), mqtt_client_id=client_id)
    return instrument_source(mqtt_source(only, f"{flow}-feedback"), flow)


def read_input(
    flow: Dataflow, settings: Settings, flow_name: str, source: Source[RawMessage] | None = None
) -> ParseOut:
    """Input → parse (→ per-sensor rate limit): a flow's readings and its refused messages.

    Reads ``source``, else the source the settings name (with its metrics hooks).
    """
    raw, limits = _raw_input(flow, settings, flow_name, source)
    parsed = parse("parse", raw, limits)
    if settings.max_rate_per_sensor > 0:
        limited = rate_limit("rate_limit", parsed.oks, settings.max_rate_per_sensor,
                             settings.rate_window_s)  # fmt: skip
        parsed = ParseOut(limited.oks, op.merge("invalid", parsed.errs, limited.errs))
    return parsed


def _raw_input(
    flow: Dataflow, settings: Settings, flow_name: str, source: Source[RawMessage] | None
) -> tuple[Stream[RawMessage], ParseLimits]:
    """The flow's input step and the parse limits the settings give.

    The input reads ``source``, else the source the settings name (with its metrics hooks).
    """
    src = source or instrument_source(build_source(settings, flow_name), flow_name)
    limits = ParseLimits(
        max_payload_bytes=settings.max_payload_bytes, max_future_s=settings.max_future_s
    )
    return op.input("input", flow, src), limits


def read_keyed_input(
    flow: Dataflow,
    settings: Settings,
    flow_name: str,
    key: Callable[[Reading], str],
    source: Source[RawMessage] | None = None,
) -> KeyedParseOut:
    """:func:`read_input` with the readings keyed by ``key``, in the parse pass if it can.

    Without a rate limit, parsing and keying are one pass (one Bytewax step fewer per
    reading on the hot path), and in a cluster of processes the raw messages are routed by
    their topic's sensor before parsing (:func:`operators.parse.parse_routed`); with a rate
    limit, the limited readings are keyed after it.
    """
    if settings.max_rate_per_sensor > 0:
        parsed = read_input(flow, settings, flow_name, source)
        return KeyedParseOut(key_batched("key", parsed.oks, key), parsed.errs)
    raw, limits = _raw_input(flow, settings, flow_name, source)
    if settings.cluster_processes > 1:  # route bytes, not parsed readings, between processes
        return parse_routed("parse", raw, key, limits)
    return parse_keyed("parse", raw, key, limits)


def iter_messages(source: _Source, step_id: str = "offline") -> Iterator[RawMessage]:
    """Read a finite source to its end outside Bytewax, partition by partition."""
    for name in source.list_parts():
        part = source.build_part(step_id, name, None)
        try:
            while True:
                try:
                    batch = part.next_batch()
                except StopIteration:
                    break
                yield from batch
        finally:
            part.close()
