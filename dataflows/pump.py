"""Pump: multivariate SKAB-shaped readings → impute → per-pump voting ensemble → alerts.

Run it with ``python -m bytewax.run dataflows.pump:flow`` (configured by ``EDGEWATCH_*``
variables, see :mod:`dataflows.settings`) or ``edgewatch run --flow pump``.

The flow::

    input ─► parse ─► key ─► impute ─┬─► ensemble (k of 3) ─┬─► alerts ─┬─► JSONL, MQTT
    feedback/<id> ─► parse feedback ─┘                      │           ├─► correlate
                                                            │           └─► audit log
                                                            └─► invalid ─► dead letters

Readings carry the eight SKAB channels (:data:`SKAB_FIELDS`); the ensemble scores the six
of :data:`CHANNELS` (imputed when missing). The default input (``source``
left at ``simulator``; ``sources.pump_sim`` feeds only the fleet bench) is a replay of the SKAB
``valve1`` files in ``../shared/data/skab/valve1``; any other source works as for air
quality (``skab`` files, JSON lines, MQTT ``sensors/<id>/readings``). Each pump has its
own :class:`models.ensemble.PumpEnsemble`: its first ``ensemble_train_rows`` readings
are a training prefix without verdicts, then a reading alerts when ``ensemble_k`` of the
three detectors flag it. ``ensemble_autoencoder`` picks the shipped TFLite autoencoder,
fine-tuned on each pump's prefix by the interpreter (default), or a per-pump numpy one.
``pump_threshold`` keeps each detector's prefix threshold (``prefix``), adapts it per
context (``adaptive``: hour of day, season, day part and/or the operating mode read from
``pump_mode_field``, as ``pump_context`` lists, in ``pump_timezone``) or scales it by
the seed's fixed context factors (``fixed``, ``pump_threshold_factors``); the thresholds
are part of each pump's snapshot.

With MQTT outputs on (``source=mqtt`` or ``mqtt_outputs=on``) the flow also reads
operators' labels from ``<prefix>feedback/<sensor_id>``: ``{"alert_id", "label"}`` with
label ``true_positive`` or ``false_positive``. The sensor's ensemble moves its thresholds
(a false positive raises them by 10 %, a true positive lowers them by 5 %); every
applied label is logged, counted in ``edgewatch_feedback_total{flow, label}`` and written
to the audit log; malformed or unappliable feedback is dead-lettered with its reason.

With ``fleet_groups`` set, ``fleet_k`` pumps of one group alerting within
``fleet_window_s`` make one fleet incident (:mod:`operators.correlate`), written with the
alerts and published to ``<prefix>alerts/fleet/<group>``. ``audit_path`` keeps every
alert, incident and applied feedback in a rotating audit log. ``flow`` is built on first
access, from the environment.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Sequence
from datetime import timedelta, tzinfo
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream

from dataflows.fleet_node import fleet_pumps
from dataflows.inputs import feedback_source, read_keyed_input
from dataflows.monitoring import lazy_flow
from dataflows.outputs import add_audit, add_outputs, add_scored_output
from dataflows.settings import ConfigError, Settings
from models.ensemble import EnsembleConfig, PumpEnsemble, check_member
from models.ensemble_thresholds import SEED_FACTORS, parse_factors
from models.thresholds import context_key
from operators.correlate import FLEET_DETECTOR, correlate, incident_topic
from operators.ensemble import ENSEMBLE, ENSEMBLE_REASONS, ensemble
from operators.feedback import FEEDBACK_REASONS, LABELS, AppliedFeedback, Feedback, parse_feedback
from operators.impute import impute
from operators.keyed import key_batched
from operators.parse import REASONS
from operators.records import Alert, RawMessage, Reading
from sinks.memory import CallbackSink
from sinks.metrics import (
    FeedbackMetricsSink,
    ScoreMetricsSink,
    inference_timer,
    prepare_flow,
    set_model_info,
)

__all__ = ["CHANNELS", "FLOW_NAME", "SKAB_DIR", "SKAB_FIELDS", "build_flow", "group_rule",
           "pump_settings"]  # fmt: skip

logger = logging.getLogger(__name__)

FLOW_NAME = "pump"
SKAB_FIELDS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
               "Thermocouple", "Voltage", "Volume Flow RateRMS")  # fmt: skip
"""The eight channels of a SKAB reading."""
CHANNELS = tuple(c for c in SKAB_FIELDS if c not in {"Temperature", "Thermocouple"})
"""The channels the ensemble scores: the thermal ones drift within any 400-row prefix
(``models.pump_detectors.screen_channels`` on valve1; README, Pump: SKAB valve1)."""
SKAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "skab" / "valve1"
"""The default input: SKAB's valve1 experiments, one pump per file."""


def pump_settings(settings: Settings, skab_dir: Path = SKAB_DIR) -> Settings:
    """The settings with the default input resolved: ``simulator`` means the SKAB replay.

    Raises:
        ConfigError: The default input is asked for and there are no SKAB files.
    """
    if settings.source != "simulator":
        return settings
    files = sorted(skab_dir.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        msg = (f"the pump flow has no simulator and no SKAB files in {skab_dir}: name an "
               "input, e.g. --source skab --input FILE.csv or --source mqtt")  # fmt: skip
        raise ConfigError(msg)
    return dataclasses.replace(settings, source="skab", source_path=tuple(map(str, files)))


def group_rule(items: Sequence[str]) -> Callable[[str], str | None]:
    """Sensor id → group from ``SENSOR=GROUP`` / ``PREFIX*=GROUP`` items (first match wins).

    >>> rule = group_rule(["p7=spare", "p*=north", "*=rest"])
    >>> rule("p7"), rule("p1"), rule("x")
    ('spare', 'north', 'rest')
    >>> group_rule(["a=north"])("b") is None
    True
    """
    rules = []
    for item in items:
        pattern, _, group = item.partition("=")
        try:
            incident_topic("", group.strip())
        except ValueError as exc:
            msg = f"fleet_groups item {item!r}: {exc}"
            raise ConfigError(msg) from None
        rules.append((pattern.strip(), group.strip()))

    def group_of(sensor_id: str) -> str | None:
        for pattern, group in rules:
            prefix = pattern.removesuffix("*")
            if sensor_id == pattern or (pattern.endswith("*") and sensor_id.startswith(prefix)):
                return group
        return None

    return group_of


def ensemble_config(settings: Settings) -> EnsembleConfig:
    """The ensemble every pump gets.

    Raises:
        ConfigError: Bad threshold factors, or a TFLite autoencoder not made for it.
    """
    try:
        factors = parse_factors(settings.pump_threshold_factors or SEED_FACTORS)
        config = EnsembleConfig(
            channels=CHANNELS, k=settings.ensemble_k, train_rows=settings.ensemble_train_rows,
            autoencoder=settings.ensemble_autoencoder,  # type: ignore[arg-type]
            threshold=settings.pump_threshold,  # type: ignore[arg-type]
            threshold_factors=factors if settings.pump_threshold == "fixed" else (),
        )  # fmt: skip
        check_member(config)
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    return config


def context_rule(settings: Settings) -> Callable[[Reading], Hashable] | None:
    """A reading's threshold context, or ``None`` with prefix thresholds.

    >>> from datetime import datetime, timezone
    >>> s = Settings.load(env={}, pump_threshold="adaptive", pump_context=("season", "hour",
    ...                   "mode"), pump_mode_field="Mode", pump_timezone="Europe/Moscow")
    >>> r = Reading("p", datetime(2020, 3, 9, 10, 14, tzinfo=timezone.utc), {"Mode": 2.0}, "t")
    >>> context_rule(s)(r)
    ('spring', 13, 2.0)
    """
    if settings.pump_threshold == "prefix":
        return None
    try:
        tz = ZoneInfo(settings.pump_timezone) if settings.pump_timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        msg = f"pump_timezone {settings.pump_timezone!r} is not an IANA time zone"
        raise ConfigError(msg) from None
    return partial(_context, by=settings.pump_context, field=settings.pump_mode_field, tz=tz)


def _context(r: Reading, by: tuple[str, ...], field: str, tz: tzinfo | None) -> Hashable:
    return context_key(r.ts, r.values.get(field) if field else None, by, tz)


def build_flow(
    settings: Settings,
    *,
    source: Source[RawMessage] | None = None,
    feedback: Source[RawMessage] | None = None,
    on_alerts: Callable[[list[Alert]], None] | None = None,
) -> Dataflow:
    """Build the pump dataflow.

    Args:
        settings: Source, ensemble, fleet, audit and output settings.
        source: Read readings from this instead of the source the settings name.
        feedback: Read feedback messages from this instead of ``<prefix>feedback/+``
            (which is read only with MQTT outputs on).
        on_alerts: Also hand every batch of alerts and incidents to this callable.

    Returns:
        The dataflow, ready for ``bytewax.run``.
    """
    if source is None:
        settings = pump_settings(settings)
    idle = settings.idle_timeout
    flow = Dataflow(FLOW_NAME)
    parsed = read_keyed_input(flow, settings, FLOW_NAME, _sensor, source)
    filled = impute("impute", parsed.oks, CHANNELS, idle, settings.reject_stale)
    invalid = op.merge("invalid_all", parsed.errs, filled.errs)
    items: KeyedStream[Reading | Feedback] = filled.oks
    if feedback is None and settings.publishes_mqtt:
        feedback = feedback_source(settings, FLOW_NAME)  # type: ignore[assignment]
    if feedback is not None:
        labels = parse_feedback("feedback_parse", op.input("feedback_input", flow, feedback))
        invalid = op.merge("invalid_feedback", invalid, labels.errs)
        by_sensor = key_batched("feedback_key", labels.oks, _sensor)
        items = op.merge("with_feedback", items, by_sensor)

    config = ensemble_config(settings)
    fleet = fleet_pumps(settings, FLOW_NAME, config, filled.oks)  # fleet learning, if on
    new_pump, restore_pump = fleet or (partial(PumpEnsemble, config), None)
    judged = ensemble("ensemble", items, new_pump, CHANNELS, restore_model=restore_pump,
                      flow=FLOW_NAME, k=config.k, idle_timeout=idle,
                      observe_seconds=inference_timer(FLOW_NAME, ENSEMBLE),
                      context_of=context_rule(settings))  # fmt: skip
    invalid = op.merge("invalid_ensemble", invalid, judged.errs)
    incidents = None
    if settings.fleet_groups:
        incidents = correlate("correlate", judged.alerts, group_rule(settings.fleet_groups),
                              flow=FLOW_NAME, k=settings.fleet_k, idle_timeout=idle,
                              window=timedelta(seconds=settings.fleet_window_s))  # fmt: skip
    add_outputs(settings, FLOW_NAME, judged.alerts, invalid, incidents)
    _add_feedback_outputs(judged.feedback)
    audited: Stream[Any] = op.merge("audited", judged.alerts, judged.feedback,
                                    *([incidents] if incidents is not None else []))  # fmt: skip
    version = PumpEnsemble(config).model_version
    add_audit(settings, audited, {ENSEMBLE: version, FLEET_DETECTOR: version})
    add_scored_output(settings, judged.scored)

    prepare_flow(FLOW_NAME, detectors=[ENSEMBLE, FLEET_DETECTOR], fields=CHANNELS,
                 reasons=REASONS + FEEDBACK_REASONS + ENSEMBLE_REASONS,
                 feedback_labels=LABELS)  # fmt: skip
    set_model_info(FLOW_NAME, ENSEMBLE, _params(settings, config), version)
    op.output("score_metrics", judged.scored, ScoreMetricsSink(FLOW_NAME, settings.idle_timeout_s))
    if on_alerts is not None:
        every = judged.alerts if incidents is None else op.merge("every", judged.alerts, incidents)
        op.output("alerts_cb", every, CallbackSink(on_alerts))
    return flow


def _params(s: Settings, c: EnsembleConfig) -> str:
    groups = ",".join(s.fleet_groups) or "-"
    return (f"k={c.k} train_rows={c.train_rows} window={c.window} smooth={c.smooth} q={c.q} "
            f"seed={c.seed} autoencoder={c.autoencoder} threshold={c.threshold} "
            f"context={','.join(s.pump_context)} fleet_groups={groups} fleet_k={s.fleet_k} "
            f"fleet_window_s={s.fleet_window_s:g}")  # fmt: skip


def _add_feedback_outputs(applied: Stream[AppliedFeedback]) -> None:
    """Log and count every applied feedback."""
    op.output("feedback_log", applied, CallbackSink(_log_feedback))
    labels = op.map("feedback_label", applied, lambda f: f.feedback.label)
    op.output("feedback_metrics", labels, FeedbackMetricsSink(FLOW_NAME))


def _log_feedback(batch: list[AppliedFeedback]) -> None:
    for f in batch:
        logger.info("feedback %s on alert %s of sensor %s applied", f.feedback.label,
                    f.feedback.alert_id, f.feedback.sensor_id)  # fmt: skip


def _sensor(x: Reading | Feedback) -> str:
    return x.sensor_id


__getattr__ = lazy_flow(__name__, build_flow)
