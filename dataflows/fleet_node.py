"""Fleet learning on a node, over MQTT: publish the node's summary, receive the fleet's.

With ``fleet_sync_group`` set (and a broker, ``mqtt_url``), :func:`fleet_scoring` gives
the air-quality flow's score step models that contribute to a :class:`FleetNode`
(:mod:`operators.fleet_sync`) and a sink whose partitions start and stop it, so the
flow's lifetime is the node's. Every ``fleet_publish_s`` (and when the flow stops) the
node publishes its summary retained, QoS 1, to ``<prefix>models/<flow>/<node>``
(``mqtt_node``, default the host name; at most :data:`models.summaries.MAX_BYTES`); it
subscribes to ``<prefix>models/<flow>/fleet/<group>`` and seeds every sensor it has not
seen with the fleet's prior from then on. A refused fleet summary is logged with its
reason and counted (``edgewatch_fleet_summaries_rejected_total{flow, reason}``); the node
keeps the prior it had.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
import paho.mqtt.client as mqtt
from bytewax.dataflow import Stream
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.inputs import mqtt_settings
from dataflows.settings import ConfigError, Settings
from models.halfspace import HalfSpaceTrees
from models.summaries import SummaryError, encode
from operators.fleet_sync import (
    FleetModel,
    NodeAccumulator,
    PriorStore,
    fleet_factories,
    hst_template,
)
from sinks.metrics import count_fleet

__all__ = ["FleetNode", "fleet_scoring", "node_name"]

logger = logging.getLogger(__name__)


def node_name(settings: Settings) -> str:
    """The node's name in its topic: ``mqtt_node``, else the host name."""
    name = settings.mqtt_node or socket.gethostname()
    if not name or set(name) & set("/+#\0"):
        msg = f"mqtt_node {name!r} cannot name an MQTT topic level"
        raise ConfigError(msg)
    return name


class FleetNode:
    """One flow instance's side of fleet learning: accumulator, prior, MQTT client.

    Nothing connects before :meth:`start`; :meth:`stop` publishes a last time.
    """

    def __init__(self, settings: Settings, flow: str, new_model: Callable[[], HalfSpaceTrees]):
        self.settings, self.flow, self.node = settings, flow, node_name(settings)
        group = settings.fleet_sync_group
        template = hst_template(new_model, flow=flow, node=self.node, group=group)
        self.accumulator = NodeAccumulator(template)
        self.prior = PriorStore(template, settings.fleet_prior_gain)
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
        summary, client = self.accumulator.summary(), self._client
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
            fleet = self.prior.offer(bytes(msg.payload))
        except SummaryError as error:
            logger.warning("fleet prior on %s refused: %s", msg.topic, error)
            count_fleet(self.flow, "rejected", error.reason)
            return
        if fleet is None:
            logger.info("fleet prior on %s withdrawn", msg.topic)
        else:
            logger.info("node %s: fleet prior received: group %s, %d windows", self.node,
                        fleet.group, fleet.meta["windows"])  # fmt: skip


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
    node = FleetNode(settings, flow, new_model)
    op.output("fleet_sync", op.flat_map_batch("fleet_sync_none", anchor, _nothing),
              _LifetimeSink(node))  # fmt: skip

    def on_prior() -> None:
        count_fleet(flow, "prior")

    return fleet_factories(new_model, node.accumulator, node.prior, on_prior)
