"""Air quality: PurpleAir-shaped readings → impute → Half-Space Trees → alerts.

Run it with ``python -m bytewax.run dataflows.air_quality:flow`` (configured by
``EDGEWATCH_*`` variables, see :mod:`dataflows.settings`) or ``edgewatch run``.

The flow::

    input ─► parse ─┬─► key by sensor ─► impute ─► score (HST) ─► threshold ─┬─► to_alert ─► alerts
                    │                                                        └─► metrics
                    └─► invalid ─► dead letters + metrics

With ``max_rate_per_sensor`` set, a per-sensor rate limit (:mod:`operators.limits`) sits
between parse and key; the readings it refuses join the invalid stream, as do those the
impute step's order guard refuses (``reject_stale``: a reading not later than its
sensor's last one, such as a message a restarted broker sends again).

The input is the simulator, a file, the PurpleAir API or an MQTT broker
(``EDGEWATCH_SOURCE=mqtt``, ``EDGEWATCH_MQTT_URL``, ``EDGEWATCH_MQTT_TOPICS``, …); alerts
and dead letters go to JSON lines and, with MQTT, to ``alerts/<sensor_id>`` and
``deadletter/air_quality`` (see :mod:`dataflows.outputs`). For a busy broker run
``python -m bytewax.run dataflows.air_quality:flow -s 1``: MQTT messages are
acknowledged when their epoch completes, and Bytewax's default epoch is 10 s.

In ``per-sensor`` mode every sensor has its own model (what a fleet needs); in ``fleet``
mode one model spans all sensors (for a cross-sectional snapshot such as the PurpleAir
``/v1/sensors`` response). ``flow`` is built on first access, from the environment.
"""

from __future__ import annotations

from collections.abc import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from dataflows.fleet_node import fleet_scoring
from dataflows.inputs import read_keyed_input
from dataflows.monitoring import lazy_flow
from dataflows.outputs import add_outputs, add_scored_output
from dataflows.settings import Settings
from models.halfspace import HalfSpaceTrees
from operators.alert import to_alert
from operators.impute import impute
from operators.keyed import key_batched
from operators.parse import REASONS
from operators.records import Alert, RawMessage, Reading, Scored
from operators.score import score
from operators.threshold import threshold
from sinks.memory import CallbackSink
from sinks.metrics import (
    ScoreMetricsSink,
    inference_timer,
    prepare_flow,
    set_model_info,
)

__all__ = ["FLOW_NAME", "build_flow", "hst_factory", "hst_params"]

FLOW_NAME = "air_quality"
FLEET_KEY = "fleet"


def hst_factory(settings: Settings) -> Callable[[], HalfSpaceTrees]:
    """A builder of fresh Half-Space Trees as the settings describe."""

    def new() -> HalfSpaceTrees:
        return HalfSpaceTrees(
            n_trees=settings.hst_trees,
            height=settings.hst_height,
            window_size=settings.hst_window,
            limits=settings.hst_limits,
            seed=settings.hst_seed,
            features=settings.hst_features,
        )

    return new


def build_flow(
    settings: Settings,
    *,
    source: Source[RawMessage] | None = None,
    on_alerts: Callable[[list[Alert]], None] | None = None,
    on_scored: Callable[[list[tuple[str, Scored]]], None] | None = None,
) -> Dataflow:
    """Build the air-quality dataflow.

    Args:
        settings: Source, model, threshold and output settings.
        source: Read from this instead of the source the settings name.
        on_alerts: Also hand every batch of alerts to this callable (the CLI uses it).
        on_scored: Also hand every batch of ``(key, Scored)`` to this callable.

    Returns:
        The dataflow, ready for ``bytewax.run``.
    """
    idle = settings.idle_timeout
    flow = Dataflow(FLOW_NAME)
    by_sensor = settings.impute_scope == "sensor"
    parsed = read_keyed_input(flow, settings, FLOW_NAME, _key(by_sensor), source)
    filled = impute("impute", parsed.oks, settings.impute_fields, idle, settings.reject_stale)
    imputed, invalid = filled.oks, op.merge("invalid_all", parsed.errs, filled.errs)
    if by_sensor != (settings.mode == "per-sensor"):
        unkeyed = op.map("unkey", imputed, _value)
        imputed = key_batched("rekey", unkeyed, _key(settings.mode == "per-sensor"))
    timer = inference_timer(FLOW_NAME, "hst")
    models = fleet_scoring(settings, FLOW_NAME, hst_factory(settings), imputed)  # fleet learning
    new, restore = models or (hst_factory(settings), None)
    scored = score("score", imputed, "hst", settings.hst_features, new, idle, timer, restore)
    judged = threshold("threshold", scored, settings.threshold)
    alerts = to_alert("to_alert", judged, FLOW_NAME)

    add_outputs(settings, FLOW_NAME, alerts, invalid)
    add_scored_output(settings, judged)
    prepare_flow(FLOW_NAME, detectors=["hst"], reasons=REASONS, fields=settings.impute_fields)
    set_model_info(FLOW_NAME, "hst", hst_params(settings))
    op.output("score_metrics", judged, ScoreMetricsSink(FLOW_NAME, settings.idle_timeout_s))
    if on_alerts is not None:
        op.output("alerts_cb", alerts, CallbackSink(on_alerts))
    if on_scored is not None:
        op.output("scored_cb", judged, CallbackSink(on_scored))
    return flow


def hst_params(s: Settings) -> str:
    """The Half-Space Trees parameters as one line (``edgewatch_model_info``'s params).

    >>> hst_params(Settings.load(env={}))
    'n_trees=10 height=8 window_size=72 seed=11 features=pm1.0_cf_1 limits=pm1.0_cf_1:0:1200 \
threshold=0.7 mode=per-sensor'
    """
    limits = ",".join(f"{k}:{lo:g}:{hi:g}" for k, (lo, hi) in s.hst_limits.items())
    return (f"n_trees={s.hst_trees} height={s.hst_height} window_size={s.hst_window} "
            f"seed={s.hst_seed} features={','.join(s.hst_features)} limits={limits} "
            f"threshold={s.threshold:g} mode={s.mode}")  # fmt: skip


def _key(by_sensor: bool) -> Callable[[Reading], str]:
    return _sensor_key if by_sensor else _fleet_key


def _sensor_key(r: Reading) -> str:
    return r.sensor_id


def _fleet_key(_: Reading) -> str:
    return FLEET_KEY


def _value(kv: tuple[str, Reading]) -> Reading:
    return kv[1]


__getattr__ = lazy_flow(__name__, build_flow)
