"""Broker signals from a real mosquitto: its log file and its ``$SYS`` tree, in Bytewax flows.

The broker has a password file, an ACL, ``log_dest file``, ``log_type all``, the default
epoch timestamps and ``sys_interval 1``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.testing import TestingSink, run_main

from sources.broker_log import BrokerEvent, BrokerLogSource, BrokerStats
from sources.broker_sys import BrokerSysSource
from sources.mqtt import MQTTSettings
from tests.integration.broker import (
    PASSWORD,
    USER,
    Broker,
    FlowRunner,
    mqtt_client,
    publish,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACL = "user edge\ntopic readwrite sensors/#\ntopic read $SYS/#\n"


@pytest.fixture
def signal_broker(mosquitto: str, tmp_path: Path) -> Iterator[Broker]:
    """A broker whose log and ``$SYS`` tree have everything the sources read."""
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    extra = (f"acl_file {acl}\nlog_type all\nlog_timestamp true\n"
             "connection_messages true\nsys_interval 1\n")  # fmt: skip
    b = Broker(mosquitto, tmp_path / "broker", extra=extra)
    b.start()
    yield b
    b.stop()


def flow_of(source: FixedPartitionedSource[Any, Any], out: list[Any]) -> Dataflow:
    flow = Dataflow("broker_signals_test")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    return flow


def raw_connect(port: int, client_id: str, password: str) -> tuple[str, bytes]:
    """An MQTT 3.1.1 CONNECT from a plain socket: (our address, the CONNACK)."""

    def s(text: str) -> bytes:
        return len(text).to_bytes(2, "big") + text.encode()

    body = s("MQTT") + bytes([4, 0xC2, 0, 60]) + s(client_id) + s(USER) + s(password)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        host, local_port = sock.getsockname()[:2]
        sock.sendall(bytes([0x10, len(body)]) + body)
        return f"{host}:{local_port}", sock.recv(4)


def test_wrong_passwords_and_garbage_are_followed_live(signal_broker: Broker) -> None:
    # Broker.start's readiness probe: connected and closed, logged as it
    signal_broker.wait_for_log(r"Client <unknown> closed its connection\.")
    src = BrokerLogSource(signal_broker.log, idle_stop_s=2.0, poll_s=0.05)
    out: list[BrokerEvent] = []
    runner = FlowRunner(flow_of(src, out), epoch_s=0.1)
    wait_until(lambda: src.stats.files == 1, 10, "the follower to open the log")

    intruder = [raw_connect(signal_broker.port, "intruder-1", "wrong") for _ in range(5)]
    assert {connack for _, connack in intruder} == {b"\x20\x02\x00\x05"}  # not authorised
    with socket.create_connection(("127.0.0.1", signal_broker.port), timeout=5) as sock:
        garbage_from = "{}:{}".format(*sock.getsockname()[:2])
        sock.sendall(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n")
        signal_broker.wait_for_log(r"disconnected due to protocol error\.")
    runner.wait(20)

    refused = [e for e in out if e.kind == "auth_failure"]
    assert [(e.client_id, e.address, e.detail) for e in refused] == [
        ("", address, "not authorised") for address, _ in intruder
    ]
    # mosquitto 2.0.11 refuses bad credentials before it keeps the client id: it is in
    # no log line, and the address from "New connection from" is what identifies them
    assert "intruder-1" not in signal_broker.log_text()
    assert [(e.kind, e.address, e.detail) for e in out if e.kind != "auth_failure"] == [
        ("protocol_error", garbage_from, "protocol error")
    ]
    assert all(abs(e.ts - time.time()) < 60 for e in out)
    assert src.stats.ignored >= 6  # the "New connection" and CONNACK lines


def test_acl_denied_publish_names_client_topic_and_address(signal_broker: Broker) -> None:
    client = mqtt_client(signal_broker, "acl-probe")
    address = "{}:{}".format(*client.socket().getsockname()[:2])  # type: ignore[union-attr]
    client.publish("secret/cmd", b"open", qos=1).wait_for_publish(5)
    client.publish("sensors/acl-probe/readings", b"{}", qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    signal_broker.wait_for_log(r"Client acl-probe disconnected\.")

    out: list[BrokerEvent] = []
    src = BrokerLogSource(signal_broker.log, from_start=True, idle_stop_s=0.3, poll_s=0.05)
    run_main(flow_of(src, out))
    assert [(e.kind, e.address, e.detail) for e in out if e.client_id == "acl-probe"] == [
        ("connect", address, USER),
        ("acl_denied", address, "secret/cmd"),
        ("disconnect", address, "disconnected"),
    ]
    assert PASSWORD not in signal_broker.log_text()


def test_sys_samples_count_clients_and_follow_a_publish_burst(signal_broker: Broker) -> None:
    settings = MQTTSettings.from_url(signal_broker.url())
    out: list[BrokerStats] = []
    runner = FlowRunner(flow_of(BrokerSysSource(settings, max_samples=4), out), epoch_s=0.1)
    wait_until(lambda: len(out) >= 1, 10, "the retained $SYS sample")
    extra = [mqtt_client(signal_broker, f"extra-{i}") for i in range(3)]
    try:
        wait_until(lambda: out[-1].values["clients_connected"] == 4, 10, "4 clients in $SYS")
        before = len(out)
        publish(signal_broker, [("sensors/burst/readings", b"x" * 20)] * 3000)
        runner.wait(20)
    finally:
        for c in extra:
            c.disconnect()
            c.loop_stop()

    assert "messages_received_per_s" not in out[0].values  # nothing to difference yet
    crowded, burst = out[before - 1], out[before:]
    assert crowded.values["clients_connected"] == 4  # the sampler and the 3 others
    assert crowded.values["messages_received_per_s"] < 50  # their CONNECTs, SUBSCRIBE, pings
    assert max(s.values["messages_received_per_s"] for s in burst) > 500  # 3000 in 2-4 s
    assert max(s.values["bytes_received_per_s"] for s in burst) > 10_000
    assert {"messages_sent_per_s", "bytes_sent_per_s", "publish_dropped_per_s",
            "clients_total"} <= set(crowded.values)  # fmt: skip
    # mosquitto 2.0.11 publishes every sys_interval + 1 seconds (a strict comparison)
    assert all(b.ts - a.ts > 0.5 for a, b in zip(out[1:], out[2:], strict=False))
