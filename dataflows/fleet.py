"""Fleet aggregator: merge the nodes' model summaries per group and publish the fleet's.

Run it next to the broker with ``python -m bytewax.run dataflows.fleet:flow -s 1``
(configured by ``EDGEWATCH_*`` variables, the same as the nodes'): it reads every node's
retained summary on ``<prefix>models/<flow>/+`` for the air-quality flow (HST masses) and
the pump flow (pump moments and score sketches) — retained messages arrive on subscribe,
so a restart picks them all up — keeps the last one of each node per flow and group,
and on every change publishes, retained:

- ``<prefix>models/<flow>/fleet/<group>``: the merged summary (:func:`models.fleet.merge`),
  which nodes use as the prior of new sensors;
- ``<prefix>models/<flow>/fleet/<group>/drift``: JSON with each node's count, windows
  (pumps), creation time and drift against the merged summary
  (:func:`models.fleet.drift`: Jensen-Shannon divergence of HST mass distributions, 0..1;
  Bhattacharyya distance of pump feature Gaussians), so a node whose sensors age
  differently from its peers stands out; ``edgewatch fleet status`` prints it.

A node's summary is dropped ``fleet_expiry_s`` after the node made it (its
``created_at``): a node that is down keeps its contribution until then. A summary that
is oversized, malformed, corrupted, of another model version, kind, group (with
``fleet_sync_group`` set; empty: every group) or other parameters (a fingerprint other
than the one the ``hst_*`` or pump ensemble settings give), or names another flow or
node than its topic, is a dead letter with the :class:`~models.summaries.SummaryError`
reason (dead-letter file, ``<prefix>deadletter/fleet``) and counted in
``edgewatch_invalid_total{flow="fleet", reason}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic

from dataflows.air_quality import FLOW_NAME as AIR_QUALITY
from dataflows.air_quality import hst_factory
from dataflows.inputs import mqtt_settings, mqtt_source
from dataflows.monitoring import instrument_source, lazy_flow
from dataflows.outputs import add_outputs
from dataflows.pump import FLOW_NAME as PUMP
from dataflows.pump import ensemble_config
from dataflows.settings import Settings
from models.fleet import drift, merge
from models.pump_fleet import pump_template
from models.summaries import MALFORMED, MISMATCH, REASONS, Summary, SummaryError, decode, encode
from operators.fleet_sync import hst_template
from operators.records import Alert, Invalid, RawMessage
from sinks.memory import CallbackSink
from sinks.metrics import count_fleet, prepare_flow
from sinks.mqtt import KeyedPayload, MQTTSink

__all__ = ["FLOWS", "FLOW_NAME", "NodeSummary", "build_flow", "check_summary"]

FLOW_NAME = "fleet"
FLOWS = (AIR_QUALITY, PUMP)
"""The flows whose summaries the aggregator merges."""
_BAD_LEVEL = frozenset("/+#\0")


@dataclasses.dataclass(frozen=True)
class NodeSummary:
    """A node's checked summary (``summary`` ``None``: withdrawn); ``group``: ``flow/group``."""

    node: str
    group: str
    data: bytes
    summary: Summary | None


def check_summary(
    message: RawMessage, prefix: str, templates: Mapping[str, Summary], group: str = ""
) -> NodeSummary | Invalid:
    """The summary a message on ``<prefix>models/<flow>/<node>`` carries, or why not.

    ``templates``: what each flow's summaries must match, by flow.
    """
    topic, payload, received_at = message
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    levels = topic.removeprefix(prefix).split("/")
    node, template = levels[-1], templates.get(levels[1] if len(levels) == 3 else "")
    try:
        if template is None:
            raise SummaryError(MISMATCH, f"no fleet learning for topic {topic!r}")
        if not data:
            raise SummaryError(MALFORMED, "an empty payload names no group")
        s = decode(data, expect_kind=template.kind, expect_version=template.model_version,
                   expect_group=group or None)  # fmt: skip
        if not s.group or len(s.group) > 128 or set(s.group) & _BAD_LEVEL:
            raise SummaryError(MALFORMED, f"group {s.group!r} cannot name a topic level")
        expected = (("flow", s.flow, template.flow), ("node", s.node, node),
                    ("fingerprint", s.fingerprint, template.fingerprint))  # fmt: skip
        for what, got, want in expected:
            if got != want:
                raise SummaryError(MISMATCH, f"{what} is {got!r}, expected {want!r}")
    except SummaryError as error:
        return Invalid(error.reason, error.detail, data, topic, received_at)
    return NodeSummary(node, f"{s.flow}/{s.group}", data, s)


_Merged = tuple[bytes, dict[str, Any]]  # the fleet summary, the drift document
_Update = tuple[str, str, bytes, bytes]  # flow, group, fleet summary, drift JSON


class _GroupLogic(StatefulBatchLogic[NodeSummary, _Merged, dict[str, bytes]]):
    """One group's latest summary per node; publishes the merge on every change."""

    def __init__(self, expiry: timedelta, state: dict[str, bytes] | None) -> None:
        self.expiry = expiry
        self.nodes = {node: decode(data) for node, data in (state or {}).items()}
        self.raw = dict(state or {})

    def on_batch(self, values: list[NodeSummary]) -> tuple[Iterable[Any], bool]:
        for v in values:
            if v.summary is not None:
                self.nodes[v.node], self.raw[v.node] = v.summary, v.data
        return self._publish(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out = self._publish()
        return out, StatefulBatchLogic.RETAIN if self.nodes else StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        if not self.nodes:
            return None
        return min(s.created_at for s in self.nodes.values()) + self.expiry

    def snapshot(self) -> dict[str, bytes]:
        return dict(self.raw)

    def _publish(self) -> list[_Merged]:
        now = datetime.now(timezone.utc)
        for node in [n for n, s in self.nodes.items() if s.created_at + self.expiry <= now]:
            del self.nodes[node], self.raw[node]
        if not self.nodes:  # empty retained messages clear the topics
            return [(b"", {})]
        fleet = merge(list(self.nodes.values()))
        doc = {"flow": fleet.flow, "updated_at": now.isoformat(),
               "fleet": _describe(fleet),
               "nodes": {node: {**_describe(s), "drift": round(drift(s, fleet), 6)}
                         for node, s in sorted(self.nodes.items())}}  # fmt: skip
        return [(encode(fleet), doc)]


def _describe(s: Summary) -> dict[str, Any]:
    parts = {"windows": s.meta["windows"]} if "windows" in s.meta else {"pumps": s.meta["pumps"]}
    return {"count": s.count, **parts, "created_at": s.created_at.isoformat()}


def build_flow(
    settings: Settings,
    *,
    source: Source[RawMessage] | None = None,
    on_published: Callable[[list[_Update]], None] | None = None,
) -> Dataflow:
    """The aggregator dataflow (reads ``<prefix>models/<flow>/+`` from the broker)."""
    client_id = settings.mqtt_client_id or "edgewatch-fleet"
    settings = dataclasses.replace(settings, source="mqtt", mqtt_client_id=client_id,
                                   mqtt_topics=tuple(f"models/{f}/+" for f in FLOWS))  # fmt: skip
    templates = {
        AIR_QUALITY: hst_template(hst_factory(settings), flow=AIR_QUALITY, node="*", group=""),
        PUMP: pump_template(ensemble_config(settings), flow=PUMP, node="*", group=""),
    }
    prefix, group = settings.mqtt_prefix, settings.fleet_sync_group
    expiry = timedelta(seconds=settings.fleet_expiry_s)
    flow = Dataflow(FLOW_NAME)
    src: Source[Any] = source or instrument_source(mqtt_source(settings, FLOW_NAME), FLOW_NAME)
    raw: Stream[RawMessage] = op.input("input", flow, src)
    checked = op.map("check", raw, lambda m: check_summary(m, prefix, templates, group))
    valid = op.filter_map("valid", checked, lambda x: x if isinstance(x, NodeSummary) else None)
    invalid = op.filter_map("invalid", checked, lambda x: x if isinstance(x, Invalid) else None)
    keyed = op.key_on("by_group", valid, lambda s: s.group)

    def build(state: dict[str, bytes] | None) -> _GroupLogic:
        return _GroupLogic(expiry, state)

    merged = op.stateful_batch("merge", keyed, build)
    updates = op.map("with_group", merged, _fill_group)
    no_alerts: Stream[Alert] = op.flat_map_batch("no_alerts", invalid, lambda _: [])
    add_outputs(settings, FLOW_NAME, no_alerts, invalid)
    prepare_flow(FLOW_NAME, detectors=[], reasons=sorted(REASONS))
    _publish(settings, updates)
    if on_published is not None:
        op.output("published_cb", updates, CallbackSink(on_published))
    return flow


def _fill_group(item: tuple[str, _Merged]) -> _Update:
    """``(flow, group, fleet summary, drift JSON)``; both empty when no node is left."""
    key, (fleet, doc) = item
    flow, _, group = key.partition("/")
    return flow, group, fleet, orjson.dumps({"group": group, **doc}) if doc else b""


def _publish(settings: Settings, updates: Stream[_Update]) -> None:
    broker = mqtt_settings(settings)
    process = settings.mqtt_process_id or "p"
    for flow in FLOWS:
        mine = op.filter(f"{flow}_updates", updates, partial(_of_flow, flow))
        base = f"models/{flow}/fleet/{{key}}"
        for name, topic, pick in (("fleet", base, _fleet_item),
                                  ("drift", f"{base}/drift", _drift_item)):  # fmt: skip
            sink = MQTTSink(broker, topic=topic, prefix=settings.mqtt_prefix, retain=True,
                            client_id=f"edgewatch-fleet-{flow}-{name}-{process}")  # fmt: skip
            op.output(f"{flow}_{name}_mqtt", op.map(f"{flow}_{name}_item", mine, pick), sink)


def _of_flow(flow: str, u: _Update) -> bool:
    return u[0] == flow


def _fleet_item(u: _Update) -> KeyedPayload:
    count_fleet(FLOW_NAME, "published")
    return u[1], u[2]


def _drift_item(u: _Update) -> KeyedPayload:
    return u[1], u[3]


__getattr__ = lazy_flow(__name__, build_flow)
