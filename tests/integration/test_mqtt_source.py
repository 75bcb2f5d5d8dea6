from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, run_main

from operators.parse import parse_message
from sources.mqtt import MQTTConnectError, MQTTSettings, MQTTSource, validate_topic_filter
from tests.integration.broker import Broker, FlowRunner, free_port, publish, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
Message = tuple[str, bytes, float]


def readings(n: int, sensors: int = 7, start: int = 0) -> list[tuple[str, bytes]]:
    """``n`` distinct reading messages spread over ``sensors`` topics."""
    return [
        (f"sensors/s{i % sensors}/readings",
         orjson.dumps({"ts": 1711929600 + i, "values": {"pm1.0_cf_1": float(i)}}))
        for i in range(start, start + n)
    ]  # fmt: skip


def subscribed(broker: Broker, client_id: str, count: int = 1) -> None:
    """Wait until the broker logged ``count`` subscriptions by ``client_id``."""
    broker.wait_for_log(rf"\n{client_id} [012] \S*sensors/\+/readings", count)


class FlowThread(FlowRunner):
    """A Bytewax dataflow ``source -> [sink]`` run by ``run_main`` in a thread."""

    def __init__(self, source: MQTTSource, sink: DynamicSink[Message] | None = None,
                 epoch_s: float = 0.05) -> None:  # fmt: skip
        self.out: list[Message] = []
        flow = Dataflow("mqtt_source_test")
        op.output("out", op.input("in", flow, source), sink or TestingSink(self.out))
        super().__init__(flow, epoch_s)

    def join(self, timeout: float) -> list[Message]:
        self.wait(timeout)
        return self.out


def settings(broker: Broker, **options: object) -> MQTTSettings:
    return MQTTSettings.from_url(broker.url(), **options)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_qos1_readings_arrive_in_a_dataflow(broker: Broker, protocol: str) -> None:
    source = MQTTSource(settings=settings(broker, protocol=protocol), client_id=f"a-{protocol}",
                        max_messages=300, idle_stop_s=10)  # fmt: skip
    flow = FlowThread(source)
    subscribed(broker, f"a-{protocol}")
    sent, t0 = readings(300), time.time()
    publish(broker, sent)
    out = flow.join(20)
    assert [(topic, payload) for topic, payload, _ in out] == sent
    assert all(t0 - 0.5 <= at <= time.time() for _, _, at in out)
    parsed = [r for m in out for r in parse_message(*m)]
    assert [r.sensor_id for r in parsed] == [f"s{i % 7}" for i in range(300)]
    stats = source.stats["mqtt"]
    assert (stats.received, stats.emitted, stats.acked, stats.connects) == (300, 300, 300, 1)


class _AckCheckPartition(StatelessSinkPartition[Message]):
    def __init__(self, source: MQTTSource, seen: list[tuple[int, int]]) -> None:
        self.source, self.seen, self.written = source, seen, 0

    def write_batch(self, items: list[Message]) -> None:
        self.seen.append((self.written, self.source.stats["mqtt"].acked))
        time.sleep(0.02)  # a slow sink: several epochs go by
        self.written += len(items)


class _AckCheckSink(DynamicSink[Message]):
    def __init__(self, source: MQTTSource) -> None:
        self.source, self.seen = source, list[tuple[int, int]]()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AckCheckPartition:
        return _AckCheckPartition(self.source, self.seen)


def test_nothing_is_acknowledged_before_its_output_is_written(broker: Broker) -> None:
    source = MQTTSource(settings=settings(broker), client_id="ack", max_batch=20,
                        max_messages=400, idle_stop_s=10)  # fmt: skip
    sink = _AckCheckSink(source)
    flow = FlowThread(source, sink, epoch_s=0.03)
    subscribed(broker, "ack")
    publish(broker, readings(400))
    flow.join(30)
    assert len(sink.seen) >= 10
    assert all(acked <= written for written, acked in sink.seen), sink.seen
    assert any(acked > 0 for _, acked in sink.seen)  # acks do flow while the flow runs
    assert source.stats["mqtt"].acked == 400


def test_broker_restart_mid_stream_loses_nothing(broker: Broker) -> None:
    source = MQTTSource(settings=settings(broker), client_id="restart", idle_stop_s=4)
    flow = FlowThread(source, epoch_s=0.2)
    subscribed(broker, "restart")
    first, second = readings(300), readings(300, start=300)
    publish(broker, first)
    wait_until(lambda: source.stats["mqtt"].emitted >= 50, 10, "the first messages")
    broker.restart()  # SIGTERM: mosquitto saves sessions and in-flight messages
    publish(broker, second)
    out = flow.join(30)
    payloads = [payload for _, payload, _ in out]
    assert set(payloads) == {payload for _, payload in first + second}
    assert len(payloads) >= 600
    stats = source.stats["mqtt"]
    assert stats.reconnects >= 1 and stats.acked >= 600 - stats.ack_skipped


FLOW_SCRIPT = """
import sys, time
from datetime import timedelta
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from sinks.jsonl import JSONLinesSink
from sources.mqtt import MQTTSettings, MQTTSource

url, out, client_id, group, process_id, idle, delay = sys.argv[1:]
source = MQTTSource(settings=MQTTSettings.from_url(url), client_id=client_id,
                    shared_group=group or None, process_id=process_id, idle_stop_s=float(idle),
                    max_batch=20)
flow = Dataflow("mqtt_process")
payloads = op.map("payload", op.input("in", flow, source),
                  lambda m: time.sleep(float(delay)) or m[1])
op.output("out", payloads, JSONLinesSink(out))
run_main(flow, epoch_interval=timedelta(milliseconds=100))
"""


def start_flow_process(
    tmp_path: Path, broker: Broker, name: str, *args: str
) -> subprocess.Popen[bytes]:
    script = tmp_path / "mqtt_flow.py"
    script.write_text(FLOW_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / f"{name}.jsonl"
    with (tmp_path / f"{name}.log").open("ab") as log:
        cmd = [sys.executable, str(script), broker.url(), str(out), *args]
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def finish(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_shared_group_splits_the_stream_between_two_processes(
    broker: Broker, tmp_path: Path
) -> None:
    procs = [start_flow_process(tmp_path, broker, f"p{i}", "shared", "g", f"p{i}", "2", "0")
             for i in range(2)]  # fmt: skip
    try:
        for i in range(2):
            broker.wait_for_log(rf"\nshared-p{i}-w0 1 \$share/g/sensors/\+/readings", timeout=20)
        sent = readings(400)
        publish(broker, sent)
        assert [finish(p, 30) for p in procs] == [0, 0]
    finally:
        for p in procs:
            finish(p, 0.1) if p.poll() is None else None
    got = [lines(tmp_path / f"p{i}.jsonl") for i in range(2)]
    assert all(len(g) > 50 for g in got), [len(g) for g in got]
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(payload for _, payload in sent)  # exactly once


def test_kill_9_mid_stream_then_restart_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    proc = start_flow_process(tmp_path, broker, "run1", "crash", "", "", "30", "0.003")
    try:
        subscribed(broker, "crash")
        sent = readings(300)
        publish(broker, sent)
        wait_until(lambda: len(lines(tmp_path / "run1.jsonl")) >= 60, 20, "60 lines written")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        finish(proc, 10)
    first = lines(tmp_path / "run1.jsonl")
    assert len(first) < 300  # it really died mid-stream
    rerun = start_flow_process(tmp_path, broker, "run2", "crash", "", "", "2", "0")
    assert finish(rerun, 30) == 0
    second = lines(tmp_path / "run2.jsonl")
    assert set(first) | set(second) == {payload for _, payload in sent}
    assert len(second) >= 300 - len(first)


def test_wrong_password_fails_fast_and_clearly(broker: Broker) -> None:
    url = broker.url(password="wrong-password")
    t0 = time.monotonic()
    with pytest.raises(
        MQTTConnectError, match="refused.*(Bad user name or password|Not auth)"
    ) as info:
        MQTTSettings.from_url(url).connect("wrong-pw", persistent=False)
    assert time.monotonic() - t0 < 3  # no retry loop (connect_timeout_s is 10)
    assert "wrong-password" not in str(info.value) and f":{broker.port}" in str(info.value)
    source = MQTTSource(settings=MQTTSettings.from_url(url), client_id="wrong-pw")
    flow = Dataflow("wrong_password")
    op.output("out", op.input("in", flow, source), TestingSink([]))
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Bytewax wraps it
        run_main(flow)
    chain, cause = [], raised.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(c, MQTTConnectError) for c in chain)


def test_unreachable_broker_gives_up_after_the_timeout() -> None:
    port = free_port()  # nothing listens here
    t0 = time.monotonic()
    with pytest.raises(MQTTConnectError, match="unreachable.*gave up after 1 s"):
        MQTTSettings.from_url(f"mqtt://edge:pw@127.0.0.1:{port}", connect_timeout_s=1,
                              reconnect_min_s=0.2).connect("nobody", persistent=False)  # fmt: skip
    assert 0.9 < time.monotonic() - t0 < 3


def test_tls_with_client_certificate(tls_broker: Broker) -> None:
    certs = tls_broker.certs
    assert certs is not None
    tls = settings(tls_broker, ca_file=certs.ca, cert_file=certs.client_cert,
                   key_file=certs.client_key)  # fmt: skip
    assert tls.tls and tls.url.startswith("mqtts://")
    source = MQTTSource(settings=tls, client_id="tls", max_messages=20, idle_stop_s=10)
    flow = FlowThread(source)
    subscribed(tls_broker, "tls")
    sent = readings(20)
    publish(tls_broker, sent)
    assert [(t, p) for t, p, _ in flow.join(20)] == sent
    t0 = time.monotonic()
    untrusted = settings(tls_broker, ca_file=certs.other_ca, cert_file=certs.client_cert,
                         key_file=certs.client_key)  # fmt: skip
    with pytest.raises(MQTTConnectError, match="TLS failure.*certificate verify failed"):
        untrusted.connect("tls-bad-ca", persistent=False)
    assert time.monotonic() - t0 < 3


def test_bad_topic_filters_and_options_are_refused_before_connecting(broker: Broker) -> None:
    ok = settings(broker)
    for topic, why in [("sensors/#/readings", "'#' must be a whole last level"),
                       ("sensors/a+/readings", "'\\+' must be a whole level"),
                       ("", "empty"), ("$share/g/sensors/+/readings", "shared_group")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            MQTTSource(settings=ok, topics=(topic,))
    assert validate_topic_filter("sensors/+/#") == "sensors/+/#"
    with pytest.raises(ValueError, match="shared_group"):
        MQTTSource(settings=ok, partitions=2)
    with pytest.raises(ValueError, match="qos"):
        MQTTSource(settings=ok, qos=3)
    for url in ("http://h:1", "mqtt://", "mqtt://h:1/path", "mqtt://h:99999"):
        with pytest.raises(ValueError):  # noqa: PT011
            MQTTSettings.from_url(url)
    assert "New client connected" not in broker.log_text()


def test_a_downgraded_subscription_qos_is_reported(
    mosquitto: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(mosquitto, tmp_path / "b")
    with broker.conf.open("a") as conf:  # a listener setting: after the listener line
        conf.write("\nmax_qos 0\n")
    broker.start()
    try:
        source = MQTTSource(settings=settings(broker), client_id="downgraded", idle_stop_s=1)
        with caplog.at_level("WARNING", logger="sources.mqtt"):
            FlowThread(source).join(20)
        assert source.stats["mqtt"].subscribed == 1
        assert "downgraded: the broker granted QoS 0, not 1: messages may be lost" in caplog.text
    finally:
        broker.stop()
