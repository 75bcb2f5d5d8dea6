"""Smart meter: one power reading per meter every 30 s → per-meter LSTM windows → alerts.

Run it with ``python -m bytewax.run dataflows.smart_meter:flow`` (configured by
``EDGEWATCH_*`` variables, see :mod:`dataflows.settings`) or
``edgewatch run --flow smart_meter``.

The flow::

    input ─► parse ─┬─► key by meter ─► impute ─► LSTM (200-reading windows) ─► threshold ─► alerts
                    └─► invalid ─► dead letters + metrics

Every meter keeps the last 199 readings; each new reading is scored by the window ending
at it with the shipped TFLite classifier (Conv1D → MaxPool → LSTM, see
:mod:`models.lstm`), normalised so that the model's own threshold is 0.5
(:data:`operators.tflite_score.MODEL_THRESHOLD`), which is the alert threshold here; the
first 199 readings of a meter score 0. The default input (``source`` left at
``simulator``) is the labelled smart-meter simulator (:mod:`sources.smart_meter_sim`:
``meter_households`` households over ``meter_duration_s``, seeded by ``sim_seed``), read
as ``power_kw``. ``source=household-power`` replays the UCI household power file
(``../shared/data/household-power``, gzip read as it is) by its ``Global_active_power``
(kW); any other source works as for air quality, with ``meter_field`` naming the field.
``flow`` is built on first access, from the environment.
"""

from __future__ import annotations

from collections.abc import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from dataflows.inputs import read_keyed_input
from dataflows.monitoring import lazy_flow
from dataflows.outputs import add_outputs, add_scored_output
from dataflows.settings import Settings
from models.runtime import cached_model
from operators.alert import to_alert
from operators.impute import impute
from operators.parse import REASONS
from operators.records import Alert, RawMessage, Reading, Scored
from operators.tflite_score import MODEL_THRESHOLD, lstm
from operators.threshold import threshold
from sinks.memory import CallbackSink
from sinks.metrics import ScoreMetricsSink, prepare_flow, set_model_info
from sources.smart_meter_sim import SmartMeterConfig, SmartMeterSource

__all__ = ["FLOW_NAME", "MODEL", "build_flow", "meter_config", "meter_field"]

FLOW_NAME = "smart_meter"
MODEL = "smart_meter_lstm"
HOUSEHOLD_FIELD = "Global_active_power"


def meter_config(settings: Settings) -> SmartMeterConfig:
    """The simulated households the settings describe."""
    return SmartMeterConfig(
        households=settings.meter_households,
        duration_s=settings.meter_duration_s,
        seed=settings.sim_seed,
    )


def meter_field(settings: Settings) -> str:
    """The power field scored: ``meter_field``, else the household file's, else the model's.

    >>> meter_field(Settings.load(env={})), meter_field(Settings.load(env={},
    ...     source="household-power", source_path="x.csv.gz"))
    ('power_kw', 'Global_active_power')
    """
    if settings.meter_field:
        return settings.meter_field
    if settings.source == "household-power":
        return HOUSEHOLD_FIELD
    return cached_model(MODEL).metadata.inputs[0]


def build_flow(
    settings: Settings,
    *,
    source: Source[RawMessage] | None = None,
    on_alerts: Callable[[list[Alert]], None] | None = None,
    on_scored: Callable[[list[tuple[str, Scored]]], None] | None = None,
) -> Dataflow:
    """Build the smart-meter dataflow.

    Args:
        settings: Source, simulator and output settings.
        source: Read from this instead of the source the settings name.
        on_alerts: Also hand every batch of alerts to this callable.
        on_scored: Also hand every batch of ``(key, Scored)`` to this callable.

    Returns:
        The dataflow, ready for ``bytewax.run``.
    """
    if source is None and settings.source == "simulator":
        source = SmartMeterSource(meter_config(settings), settings.batch_size)  # type: ignore[assignment]
    idle = settings.idle_timeout
    field = meter_field(settings)
    flow = Dataflow(FLOW_NAME)
    parsed = read_keyed_input(flow, settings, FLOW_NAME, _sensor, source)
    filled = impute("impute", parsed.oks, (field,), idle, settings.reject_stale)
    invalid = op.merge("invalid_all", parsed.errs, filled.errs)
    scored = lstm("lstm", filled.oks, features=(field,), idle_timeout=idle)
    judged = threshold("threshold", scored, MODEL_THRESHOLD)
    alerts = to_alert("to_alert", judged, FLOW_NAME)

    add_outputs(settings, FLOW_NAME, alerts, invalid)
    add_scored_output(settings, judged)
    prepare_flow(FLOW_NAME, detectors=["lstm"], reasons=REASONS, fields=(field,))
    meta = cached_model(MODEL).metadata
    set_model_info(FLOW_NAME, "lstm", f"window={meta.window} field={field} "
                   f"threshold={MODEL_THRESHOLD:g}", meta.sha256[:12])  # fmt: skip
    op.output("score_metrics", judged, ScoreMetricsSink(FLOW_NAME, settings.idle_timeout_s))
    if on_alerts is not None:
        op.output("alerts_cb", alerts, CallbackSink(on_alerts))
    if on_scored is not None:
        op.output("scored_cb", judged, CallbackSink(on_scored))
    return flow


def _sensor(r: Reading) -> str:
    return r.sensor_id


__getattr__ = lazy_flow(__name__, build_flow)
