"""Fleet learning on a node, over MQTT: publish the node's summary, receive the fleet's.

With ``fleet_sync_group`` set (and a broker, ``mqtt_url``), :func:`fleet_scoring` gives
the air-quality flow's score step models that contribute to a :class:`FleetNode`
(:mod:`operators.fleet_sync`), and :func:`fleet_pumps` gives the pump flow's ensemble
step pumps that do (:mod:`models.pump_fleet`); each adds a sink whose partitions start
and stop the node, so the flow's lifetime is the node's. Every ``fleet_publish_s``
(and when the flow stops) the node publishes its summary retained, QoS 1, to
``<prefix>models/<flow>/<node>`` (``mqtt_node``, default the host name; at most
:data:`models.summaries.MAX_BYTES`); it subscribes to
``<prefix>models/<flow>/fleet/<group>`` and seeds every sensor it has not seen with the
fleet's prior from then on. A refused fleet summary is logged with its
reason and counted (``edgewatch_fleet_summaries_rejected_total{flow, reason}``); the node
keeps the prior it had.
"""

from __future__ import annotations

import logging
import pickle
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import bytewax.operators as op
import paho.mqtt.client as mqtt
from bytewax.dataflow import Stream
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.inputs import mqtt_settings
from dataflows.settings import ConfigError, Settings
from models.ensemble import EnsembleConfig, PumpEnsemble
from models.halfspace import HalfSpaceTrees
from models.pump_fleet import FleetPump, PumpNode, pump_template
from models.summaries import Summary, SummaryError, encode
from operators.fleet_sync import (
    FleetModel,
    NodeAccumulator,
    PriorStore,
    fleet_factories,
    hst_template,
)
from sinks.metrics import count_fleet

__all__ = ["FleetNode", "fleet_pumps", "fleet_scoring", "node_name"]

logger = logging.getLogger(__name__)


def node_name(settings: Settings) -> str:
    """The node's name in its topic: ``mqtt_node``, else the host name."""
    name = settings.mqtt_node or socket.gethostname()
    if not name or set(name) & set("/+#\0"):
        msg = f"mqtt_node {name!r} cannot name an MQTT topic level"
        raise ConfigError(msg)
    return name


class FleetNode:
    """One flow instance's side of fleet learning: its summary, the prior, an MQTT client.

    Args:
        settings: Broker, group, node name and publishing period.
        flow: The flow's name (a topic level).
        summarise: The node's summary now (``None``: nothing to publish yet).
        offer: Takes the fleet summary's bytes (raises ``SummaryError`` to refuse them).

    Nothing connects before :meth:`start`; :meth:`stop` publishes a last time.
    """

    def __init__(self, settings: Settings, flow: str, summarise: Callable[[], Summary | None],
                 offer: Callable[[bytes], Summary | None]) -> None:  # fmt: skip
        self.settings, self.flow, self.node = settings, flow, node_name(settings)
        self.summarise, self.offer = summarise, offer
        group = settings.fleet_sync_group
        base = f"{settings.mqtt_prefix}models/{flow}"
        self.topic, self.fleet_topic = f"{base}/{self.node}", f"{base}/fleet/{group}"
        self.published = 0
        self._users = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect, subscribe to the fleet prior, publish periodically (once per process)."""
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            client_id = f"edgewatch-{self.flow}-fleet-{self.node}-{self.settings.mqtt_process_id}"
            self._stop.clear()
            self._client = mqtt_settings(self.settings).connect(
                client_id, persistent=False, setup=self._setup, on_connected=self._subscribe
            )
            self._thread = threading.Thread(target=self._loop, name="fleet-publish", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Publish a last summary and disconnect, when the last user stops."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._client is None:
                return
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.publish()
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def publish(self) -> bool:
        """Publish the node's summary now (and wait for the PUBACK); False if none yet."""
        summary, client = self.summarise(), self._client
        if summary is None or client is None:
            return False
        try:
            data = encode(summary)
        except SummaryError as error:
            logger.error("fleet summary not published: %s", error)
            count_fleet(self.flow, "rejected", error.reason)
            return False
        info = client.publish(self.topic, data, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:  # disconnected: the next period tries again
            logger.warning("fleet summary not published: %s", mqtt.error_string(info.rc))
            return False
        info.wait_for_publish(self.settings.fleet_publish_s + 5)
        self.published += info.is_published()
        count_fleet(self.flow, "published")
        return info.is_published()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.fleet_publish_s):
            self.publish()

    def _setup(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message

    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        client.subscribe(self.fleet_topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            fleet = self.offer(bytes(msg.payload))
        except SummaryError as error:
            logger.warning("fleet prior on %s refused: %s", msg.topic, error)
            count_fleet(self.flow, "rejected", error.reason)
            return
        if fleet is None:
            logger.info("fleet prior on %s withdrawn", msg.topic)
        else:
            logger.info("node %s: fleet prior received: group %s, %d samples", self.node,
                        fleet.group, fleet.count)  # fmt: skip


class _Partition(StatelessSinkPartition[Any]):
    def __init__(self, node: FleetNode) -> None:
        self._node = node
        node.start()

    def write_batch(self, items: list[Any]) -> None:
        """Nothing arrives here: the sink only carries the node's lifetime."""

    def close(self) -> None:
        self._node.stop()


class _LifetimeSink(DynamicSink[Any]):
    """Starts the node when Bytewax builds a partition, stops it when it closes."""

    def __init__(self, node: FleetNode) -> None:
        self.node = node

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self.node)


def _nothing(batch: list[Any]) -> list[Any]:
    return []


def fleet_scoring(
    settings: Settings, flow: str, new_model: Callable[[], HalfSpaceTrees], anchor: Stream[Any]
) -> tuple[Callable[[], FleetModel], Callable[[bytes], FleetModel]] | None:
    """``(new, restore)`` models for the score step, with the node wired to ``anchor``'s flow.

    ``None`` when fleet learning is off (no ``fleet_sync_group``).
    """
    if not settings.fleet_sync_group:
        return None
    template = hst_template(new_model, flow=flow, node=node_name(settings),
                            group=settings.fleet_sync_group)  # fmt: skip
    accumulator = NodeAccumulator(template)
    prior = PriorStore(template, settings.fleet_prior_gain)
    _add_node(FleetNode(settings, flow, accumulator.summary, prior.offer), anchor)
    return fleet_factories(new_model, accumulator, prior, partial(count_fleet, flow, "prior"),
                           settings.threshold)  # fmt: skip


def fleet_pumps(
    settings: Settings, flow: str, config: EnsembleConfig, anchor: Stream[Any]
) -> tuple[Callable[[], PumpEnsemble], Callable[[bytes], PumpEnsemble]] | None:
    """``(new, restore)`` pumps for the ensemble step, the node wired to ``anchor``'s flow.

    A new pump starts from the fleet prior when the node has one; every pump adds its
    normal rows to the node's summary. ``None`` when fleet learning is off.
    """
    if not settings.fleet_sync_group:
        return None
    template = pump_template(config, flow=flow, node=node_name(settings),
                             group=settings.fleet_sync_group)  # fmt: skip
    pumps = PumpNode(template)
    _add_node(FleetNode(settings, flow, pumps.summary, partial(pumps.offer, q=config.q)), anchor)

    def new() -> PumpEnsemble:
        pump = FleetPump(config, pumps.prior)
        if pump.prior is not None:
            count_fleet(flow, "prior")
        pump.node = pumps
        return pump

    def restore(data: bytes) -> PumpEnsemble:
        pump = pickle.loads(data)  # noqa: S301 - our own snapshot
        if isinstance(pump, FleetPump):
            pump.node = pumps
        return pump  # type: ignore[no-any-return]

    return new, restore


def _add_node(node: FleetNode, anchor: Stream[Any]) -> None:
    op.output("fleet_sync", op.flat_map_batch("fleet_sync_none", anchor, _nothing),
              _LifetimeSink(node))  # fmt: skip
