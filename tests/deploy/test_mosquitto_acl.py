"""The compose broker's ACL on a real mosquitto: a sensor may publish only its own topic."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from dataflows.local_broker import wait_until
from tests.deploy.conftest import deploy_broker


class Client:
    """A v5 paho client that records PUBACK reason codes and received messages."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.acks: dict[int, str] = {}
        self.got: list[tuple[str, bytes]] = []
        self.granted: list[int] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.granted.extend(r.value for r in rcs)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(10), f"{user} did not connect"

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode,
                    p: Properties | None) -> None:  # fmt: skip
        self.acks[mid] = str(rc) if rc.is_failure else "ok"

    def publish(self, topic: str, payload: bytes) -> str:
        """Publish at QoS 1: "ok", or the reason the broker refused it."""
        mid = self.c.publish(topic, payload, qos=1).mid
        wait_until(lambda: mid in self.acks, 10, f"PUBACK for {topic}")
        return self.acks[mid]

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        wait_until(lambda: self.granted, 10, f"SUBACK for {topic}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_sensors_publish_only_their_own_topic(mosquitto_binaries: str, tmp_path: Path) -> None:
    users = {"edge": "svc-pw", "s1": "s1-pw", "s2": "s2-pw"}
    with deploy_broker(mosquitto_binaries, tmp_path, users) as port:
        flow, s1 = Client(port, "edge", "svc-pw"), Client(port, "s1", "s1-pw")
        try:
            flow.subscribe("sensors/+/readings")
            assert s1.publish("sensors/s1/readings", b"mine") == "ok"
            assert s1.publish("sensors/s2/readings", b"spoofed") == "Not authorized"
            assert s1.publish("alerts/s1", b"fake alert") == "Not authorized"
            assert flow.publish("alerts/s1", b"alert") == "ok"
            assert flow.publish("deadletter/air_quality", b"dead") == "ok"
            s1.subscribe("alerts/s1")
            assert flow.publish("alerts/s1", b"alert 2") == "ok"
            wait_until(lambda: s1.got, 10, "s1's own alert")
            wait_until(lambda: flow.got, 10, "the reading")
            assert flow.got == [("sensors/s1/readings", b"mine")]  # the spoof never arrived
            assert s1.got == [("alerts/s1", b"alert 2")]
        finally:
            flow.close()
            s1.close()
