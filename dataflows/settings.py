"""Typed configuration from defaults, a TOML file and ``EDGEWATCH_*`` environment variables.

Precedence, lowest first: the defaults below, the TOML file named by ``EDGEWATCH_CONFIG``
(or passed explicitly), then one environment variable per setting: the field name in
upper case with an ``EDGEWATCH_`` prefix. Lists are comma-separated in the environment;
HST limits are ``field:low:high`` items, e.g.
``EDGEWATCH_HST_LIMITS="pm1.0_cf_1:0:1200"``.

>>> s = Settings.load(env={"EDGEWATCH_THRESHOLD": "0.8", "EDGEWATCH_MODE": "fleet"})
>>> s.threshold, s.mode, s.hst_limits
(0.8, 'fleet', {'pm1.0_cf_1': (0.0, 1200.0)})
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["MQTT_OUTPUTS", "SOURCES", "Cluster", "ConfigError", "Settings", "bytewax_cluster"]

SOURCES = ("simulator", "mqtt", "purpleair", "purpleair-api", "jsonl", "csv", "nab", "skab",
           "household-power")  # fmt: skip
MQTT_OUTPUTS = ("auto", "on", "off")
MODES = ("per-sensor", "fleet")
SCOPES = ("sensor", "fleet")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """Every setting of the air-quality flow (see the README's configuration table)."""

    source: str = "simulator"
    """Input: simulator, purpleair (snapshot file), purpleair-api, jsonl, csv, nab, skab."""
    source_path: tuple[str, ...] = ()
    """Input files for file sources."""
    batch_size: int = 1000
    """Largest batch a source hands Bytewax at once."""
    sim_sensors: int = 50
    sim_interval_s: int = 120
    sim_duration_s: int = 86_400
    sim_seed: int = 7
    purpleair_api_url: str = "https://api.purpleair.com"
    purpleair_api_key_file: str = ""
    """File holding the PurpleAir read key (or set EDGEWATCH_PURPLEAIR_API_KEY)."""
    purpleair_poll_s: float = 120.0
    mode: str = "per-sensor"
    """per-sensor: one model per sensor over time; fleet: one model across sensors."""
    impute_fields: tuple[str, ...] = ("temperature", "humidity", "pressure", "pm1.0_cf_1")
    impute_scope: str = "sensor"
    """sensor: running means per sensor; fleet: one running mean per field for all."""
    hst_features: tuple[str, ...] = ("pm1.0_cf_1",)
    hst_limits: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"pm1.0_cf_1": (0.0, 1200.0)}
    )
    hst_trees: int = 10
    hst_height: int = 8
    hst_window: int = 72
    hst_seed: int = 11
    threshold: float = 0.7
    """Scores strictly above this raise an alert."""
    alerts_path: str = "-"
    """JSON-lines alert file; ``-`` is stdout."""
    deadletter_path: str = "deadletter.jsonl"
    """JSON-lines dead-letter file (created on the first invalid message)."""
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    """Broker ``mqtt[s]://[user@]host[:port]``; the password is best kept in
    EDGEWATCH_MQTT_PASSWORD or ``mqtt_password_file``, not in the URL."""
    mqtt_topics: tuple[str, ...] = ("sensors/+/readings",)
    """Topic filters to read (``mqtt_prefix`` is put in front of each)."""
    mqtt_prefix: str = ""
    """Prefix of every topic read and written, e.g. ``site1/``."""
    mqtt_qos: int = 1
    """Subscription QoS: 1 (at-least-once, default), 0 or 2."""
    mqtt_protocol: str = "5"
    """MQTT protocol version: 5 or 3.1.1."""
    mqtt_client_id: str = ""
    """Stable client id of the subscriber (default ``edgewatch-<flow>``)."""
    mqtt_group: str = ""
    """Shared-subscription group (``$share/<group>/...``) so processes split one stream."""
    mqtt_process_id: str = ""
    """Tells independent processes of one shared group apart (part of the client id)."""
    mqtt_partitions: int = 1
    """MQTT clients of this process with a shared group (one per worker is best)."""
    mqtt_username: str = ""
    mqtt_password_file: str = ""
    """File holding the broker password (else EDGEWATCH_MQTT_PASSWORD or the URL)."""
    mqtt_ca_file: str = ""
    """CA bundle to verify an mqtts:// broker (default: the system store)."""
    mqtt_cert_file: str = ""
    """Client certificate (PEM) for brokers that require one."""
    mqtt_key_file: str = ""
    mqtt_session_expiry_s: int = 86_400
    """How long the broker keeps the subscriber's session (and its queued messages)."""
    mqtt_connect_timeout_s: float = 30.0
    """How long the first connection may retry before the flow stops with an error."""
    mqtt_queue_size: int = 30_000
    """Messages buffered between the network thread and the flow (also v5 receive max):
    with QoS 1 at most this many per epoch, so it caps the rate at about
    ``mqtt_queue_size / epoch_interval_s`` messages per second."""
    mqtt_idle_stop_s: float = 0.0
    """Stop the flow after this long without a message (0: run until interrupted)."""
    mqtt_outputs: str = "auto"
    """Publish alerts, dead letters and status to the broker: auto (when the source is
    mqtt), on, off."""
    mqtt_alert_qos: int = 1
    """QoS of published alerts and dead letters (1 waits for every PUBACK)."""
    mqtt_node: str = ""
    """Name in the retained ``status/<node>`` topic (default: the host name)."""
    epoch_interval_s: float = 1.0
    """Bytewax epoch length for ``edgewatch run``; MQTT messages are acknowledged when
    the epoch holding them is done."""
    recovery_dir: str = ""
    """Bytewax recovery store for ``edgewatch run`` (made, mode 0700, when missing;
    resumed from otherwise); empty: no recovery."""
    snapshot_interval_s: float = 0.0
    """With recovery: seconds between state snapshots, which are also the epochs
    (0: ``epoch_interval_s``)."""
    backup_interval_s: float = 0.0
    """With recovery: how long old snapshots are kept for a backup of the store to lag."""
    scored_path: str = ""
    """JSON-lines file with one ``{sensor_id, ts, score}`` line per scored reading
    (empty: none); for audits and the crash tests."""
    max_payload_bytes: int = 256 * 1024
    max_future_s: float = 300.0
    max_rate_per_sensor: float = 0.0
    """Readings/s one sensor may send, averaged over ``rate_window_s``; readings over it
    are dead letters (``rate_limited``). 0: no limit."""
    rate_window_s: float = 10.0
    """Seconds the per-sensor rate is averaged over (a sensor may burst
    ``max_rate_per_sensor * rate_window_s`` readings)."""
    reject_stale: bool = True
    """Refuse a reading whose event time is not after its sensor's last one (dead letters
    ``duplicate_reading`` / ``out_of_order``), so a message sent again is never scored
    twice; false: score every reading in arrival order."""
    idle_timeout_s: float = 86_400.0
    """Drop a sensor's state after this long without readings (0 keeps it forever)."""
    cluster_processes: int = 1
    """Processes of the Bytewax cluster this one belongs to (set by ``-i``/``-a``): with
    more than one, raw messages are routed to the worker owning their topic's sensor and
    parsed there, so readings never cross processes pickled."""
    metrics_addr: str = "127.0.0.1:9464"
    """Serve Prometheus metrics on ``HOST:PORT`` (``:PORT``: every interface; empty: none)."""
    audit_path: str = ""
    """Pump flow: audit log of alerts, incidents and applied feedback (empty: none)."""
    ensemble_k: int = 2
    """Pump flow: detectors (of hst, mahalanobis, autoencoder) that must agree to alert."""
    ensemble_train_rows: int = 400
    """Pump flow: rows each pump learns from before it scores."""
    ensemble_autoencoder: str = "tflite"
    """Pump flow: the ensemble's autoencoder, ``tflite`` (the shipped label-free
    ``models/artifacts/pump_ensemble_ae``, fine-tuned on each pump's prefix by the TFLite
    interpreter) or ``numpy`` (per pump, trained on its prefix from random weights)."""
    pump_threshold: str = "prefix"
    """Pump flow: detector thresholds: ``prefix`` (the quantile of each pump's prefix
    scores), ``adaptive`` (per context, a quantile of recent normal scores, seeded by the
    prefix) or ``fixed`` (prefix quantile x ``pump_threshold_factors``)."""
    pump_context: tuple[str, ...] = ("hour",)
    """Pump flow, adaptive/fixed thresholds: parts of a reading's context, of ``hour``
    (of day), ``daypart``, ``season`` and ``mode`` (the ``pump_mode_field`` value)."""
    pump_mode_field: str = ""
    """Pump flow: the reading field holding the operating mode (context part ``mode``)."""
    pump_threshold_factors: tuple[str, ...] = ()
    """Pump flow, fixed thresholds: ``PART=FACTOR`` items (hours as numbers, seasons,
    day parts, modes); empty: the seed's (summer 1.05, other seasons 0.95, 8-10 h 1.1)."""
    pump_timezone: str = ""
    """Pump flow: IANA zone of hour, day part and season (empty: UTC)."""
    fleet_groups: tuple[str, ...] = ()
    """Pump flow: ``SENSOR=GROUP`` items (``PREFIX*=GROUP``: ids starting with PREFIX; the
    first match wins) for fleet incidents; empty: none."""
    fleet_k: int = 3
    fleet_window_s: float = 300.0
    """Pump flow: ``fleet_k`` sensors of a group alerting within this make an incident."""
    meter_households: int = 8
    meter_duration_s: int = 172_800
    """Smart-meter flow: the simulated households (``sim_seed`` seeds them)."""
    meter_field: str = ""
    """Smart-meter flow: the power field (default: the model's, or Global_active_power)."""
    fleet_sync_group: str = ""
    """Fleet learning (air-quality and pump flows, MQTT): this node's group. Non-empty turns it
    on: the node publishes its model summary to ``models/<flow>/<node>`` and new sensors
    start from ``models/<flow>/fleet/<group>``; the aggregator (``dataflows.fleet``)
    merges this group only (empty there: every group)."""
    fleet_prior_gain: float = 2.0
    """Fleet learning: weight of the fleet's average masses in a new sensor's prior
    (``operators.fleet_sync.PriorStore``): higher, fewer false alarms and less recall."""
    fleet_publish_s: float = 60.0
    """Fleet learning: seconds between two summaries a node publishes."""
    fleet_expiry_s: float = 86_400.0
    """Fleet aggregator: drop a node's summary this long after it was made."""
    security_window_s: float = 60.0
    """Security flow: length of the tumbling event-time window devices are judged over."""
    security_lateness_s: float = 2.0
    """Security flow, live sources: how long a window waits for late messages and broker
    log lines (a replay of the simulator waits for none)."""
    security_topics: tuple[str, ...] = ("sensors/#",)
    """Security flow: topic filters it watches (every message any device writes there)."""
    security_z: float = 3.0
    """Security flow: robust z-score at which a device's baseline rule votes."""
    security_k: int = 2
    """Security flow: detectors (of zscore, hst) that must vote to alert."""
    security_history: int = 120
    """Security flow: windows a device's baseline remembers."""
    security_min_history: int = 10
    """Security flow: windows before every feature of a new device is scored."""
    security_hst_threshold: float = 0.25
    """Security flow: fleet Half-Space Trees score at which they vote."""
    security_broker_log: str = ""
    """Security flow: mosquitto log file to follow for connects, auth failures and ACL
    denials (empty: none)."""
    security_sys: str = "auto"
    """Security flow: read the broker's ``$SYS/#`` rates: auto (with MQTT), on, off."""
    security_misbehaviours: int = 10
    """Security flow, simulator: misbehaving devices injected (``sim_sensors`` devices for
    ``sim_duration_s``, seed ``sim_seed``)."""

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from defaults, the TOML file, the environment and overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_file or env.get("EDGEWATCH_CONFIG")
        if path:
            values.update(_read_toml(Path(path)))
        names = {f.name for f in dataclasses.fields(cls)}
        for name in names:
            key = f"EDGEWATCH_{name.upper()}"
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - names)
        if unknown:
            msg = f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            raise ConfigError(msg)
        hints = typing.get_type_hints(cls)
        settings = cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
        settings.validate()
        if env is os.environ and _under_bytewax_run():
            settings = settings.for_cluster(bytewax_cluster())
        return settings

    def for_cluster(self, cluster: Cluster) -> Settings:
        """These settings for one process of a Bytewax cluster.

        With a shared group and the default single MQTT partition, one client per worker
        of the whole cluster (the partitions are spread over the workers, so each has
        one); the metrics port is the base port plus the process id, so processes on one
        host never clash (process 0 keeps ``metrics_addr`` as it is).

        >>> s = Settings.load(env={}, mqtt_group="g", metrics_addr=":9464")
        >>> c = s.for_cluster(Cluster(process_id=1, processes=2, workers_per_process=2))
        >>> c.mqtt_partitions, c.metrics_addr
        (4, ':9465')
        """
        changes: dict[str, Any] = {"cluster_processes": cluster.processes}
        if self.mqtt_group and self.mqtt_partitions == 1:
            changes["mqtt_partitions"] = cluster.workers
        if self.metrics_addr and cluster.process_id:
            host, _, port = self.metrics_addr.rpartition(":")
            changes["metrics_addr"] = f"{host}:{int(port) + cluster.process_id}"
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that makes no sense.

        The broker URL and topic filters are checked where the MQTT connectors are
        built (:func:`dataflows.inputs.mqtt_settings`).
        """
        checks = [
            (self.source in SOURCES, f"source must be one of {', '.join(SOURCES)}"),
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}"),
            (self.impute_scope in SCOPES, f"impute_scope must be one of {', '.join(SCOPES)}"),
            (0.0 <= self.threshold <= 1.0, "threshold must lie in [0, 1]"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (bool(self.hst_features), "hst_features must name at least one field"),
            (self.hst_window >= 1 and self.hst_trees >= 1 and self.hst_height >= 1,
             "hst_window, hst_trees and hst_height must be at least 1"),
            (all(lo < hi for lo, hi in self.hst_limits.values()),
             "every hst_limits entry needs low < high"),
            (self.mqtt_outputs in MQTT_OUTPUTS,
             f"mqtt_outputs must be one of {', '.join(MQTT_OUTPUTS)}"),
            (self.mqtt_qos in (0, 1, 2), "mqtt_qos must be 0, 1 or 2"),
            (self.mqtt_alert_qos in (0, 1), "mqtt_alert_qos must be 0 or 1"),
            (self.mqtt_protocol in ("5", "3.1.1"), "mqtt_protocol must be 5 or 3.1.1"),
            (self.mqtt_partitions >= 1 and self.mqtt_queue_size >= 1,
             "mqtt_partitions and mqtt_queue_size must be at least 1"),
            (self.mqtt_partitions == 1 or bool(self.mqtt_group),
             "mqtt_partitions > 1 needs mqtt_group (else every client gets every message)"),
            (self.epoch_interval_s > 0, "epoch_interval_s must be positive"),
            (self.snapshot_interval_s >= 0 and self.backup_interval_s >= 0,
             "snapshot_interval_s and backup_interval_s must not be negative"),
            (self.max_rate_per_sensor >= 0 and self.rate_window_s > 0,
             "max_rate_per_sensor must be >= 0 (0: off) and rate_window_s positive"),
            (not self.metrics_addr or self.metrics_addr.rpartition(":")[2].isdigit(),
             "metrics_addr must be HOST:PORT, :PORT or empty (no metrics)"),
            (2 <= self.fleet_k and self.fleet_window_s > 0 and 1 <= self.ensemble_k <= 3
             and all("=" in g for g in self.fleet_groups),
             "need fleet_k >= 2, fleet_window_s > 0, ensemble_k in 1..3, SENSOR=GROUP items"),
            (self.ensemble_autoencoder in ("numpy", "tflite")
             and self.pump_threshold in ("prefix", "adaptive", "fixed")
             and set(self.pump_context) <= {"hour", "daypart", "season", "mode"}
             and ("mode" not in self.pump_context or bool(self.pump_mode_field)),
             "need ensemble_autoencoder numpy/tflite, pump_threshold prefix/adaptive/fixed, "
             "pump_context of hour, daypart, season, mode (mode needs pump_mode_field)"),
            (self.fleet_publish_s > 0 and self.fleet_expiry_s > 0 and self.fleet_prior_gain > 0
             and not set(self.fleet_sync_group) & set("/+#\0"),
             "need fleet_publish_s, fleet_expiry_s, fleet_prior_gain > 0, a fleet_sync_group "
             "without / + #"),
            (self.security_window_s > 0 and self.security_lateness_s >= 0
             and self.security_z > 0 and 1 <= self.security_k <= 2
             and 1 <= self.security_min_history <= self.security_history
             and 0 < self.security_hst_threshold < 1 and self.security_misbehaviours >= 0
             and self.security_sys in MQTT_OUTPUTS,
             "need security_window_s > 0, security_lateness_s >= 0, security_z > 0, "
             "security_k 1..2, 1 <= security_min_history <= security_history, "
             "security_hst_threshold in (0, 1), security_misbehaviours >= 0, "
             "security_sys auto/on/off"),
            (self.source not in ("jsonl", "csv", "nab", "skab", "purpleair", "household-power")
             or bool(self.source_path),
             f"source {self.source!r} needs source_path (EDGEWATCH_SOURCE_PATH or --input)"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def idle_timeout(self) -> timedelta | None:
        """``idle_timeout_s`` as the keyed operators take it (``None``: keep state forever)."""
        return timedelta(seconds=self.idle_timeout_s) if self.idle_timeout_s else None

    @property
    def publishes_mqtt(self) -> bool:
        """Whether alerts, dead letters and the node status go to the broker."""
        return self.mqtt_outputs == "on" or (self.mqtt_outputs == "auto" and self.source == "mqtt")


@dataclass(frozen=True)
class Cluster:
    """The shape of a Bytewax execution: this process's id, processes, workers in each."""

    process_id: int = 0
    processes: int = 1
    workers_per_process: int = 1

    @property
    def workers(self) -> int:
        """Workers in the whole cluster."""
        return self.processes * self.workers_per_process


def bytewax_cluster(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> Cluster:
    """The cluster ``python -m bytewax.run`` was asked for, from its ``-w/-i/-a`` arguments.

    ``BYTEWAX_WORKERS_PER_PROCESS``, ``BYTEWAX_PROCESS_ID`` and ``BYTEWAX_ADDRESSES`` (which
    ``bytewax.run`` also reads) fill in what ``argv`` leaves out.

    >>> bytewax_cluster(["m:flow", "-w", "2", "-i", "1", "-a", "a:1;b:1;c:1"], env={})
    Cluster(process_id=1, processes=3, workers_per_process=2)
    >>> bytewax_cluster(["m:flow"], env={"BYTEWAX_PROCESS_ID": "0", "BYTEWAX_ADDRESSES": "a:1"})
    Cluster(process_id=0, processes=1, workers_per_process=1)
    """
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-w", "--workers-per-process", type=int,
                        default=env.get("BYTEWAX_WORKERS_PER_PROCESS", 1))  # fmt: skip
    parser.add_argument("-i", "--process-id", type=int, default=env.get("BYTEWAX_PROCESS_ID", 0))
    parser.add_argument("-a", "--addresses", default=env.get("BYTEWAX_ADDRESSES", ""))
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    addresses = [a for a in str(known.addresses).split(";") if a.strip()]
    return Cluster(int(known.process_id), max(len(addresses), 1),
                   max(int(known.workers_per_process), 1))  # fmt: skip


def _under_bytewax_run() -> bool:
    """Whether this process is ``python -m bytewax.run``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "bytewax.run"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        msg = f"config file {path} does not exist"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"config file {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from None
    table = data.get("edgewatch", data)
    return {k.replace("-", "_"): v for k, v in table.items()}


def _coerce(name: str, value: Any, hint: Any) -> Any:  # noqa: PLR0911 - one branch per type
    """Convert an environment string or TOML value to the field's type."""
    try:
        if hint is bool:
            return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
        if hint in (int, float, str):
            if hint is int and isinstance(value, float):
                raise ValueError(value)
            return hint(value)
        origin = typing.get_origin(hint)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(i).strip() for i in items if str(i).strip())
        if origin is dict:
            return _limits(value)
    except (TypeError, ValueError):
        msg = f"setting {name}={value!r} is not a valid {getattr(hint, '__name__', hint)}"
        raise ConfigError(msg) from None
    msg = f"setting {name} has an unsupported type {hint}"
    raise ConfigError(msg)


def _limits(value: Any) -> dict[str, tuple[float, float]]:
    """``"a:0:1,b:-5:5"`` or a TOML table ``{a = [0, 1]}`` to ``{"a": (0.0, 1.0)}``."""
    if isinstance(value, str):
        out = {}
        for item in filter(None, (i.strip() for i in value.split(","))):
            name, lo, hi = item.rsplit(":", 2)
            out[name] = (float(lo), float(hi))
        return out
    return {str(k): (float(v[0]), float(v[1])) for k, v in dict(value).items()}
