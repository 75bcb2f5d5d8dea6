"""``edgewatch bench --mqtt``: the air-quality flow behind a real MQTT broker.

By default a private mosquitto is started (:class:`~dataflows.local_broker.LocalBroker`:
auth, persistence, raised queue limits, a free 127.0.0.1 port); ``--broker URL`` uses
another one (never point it at a broker with the default ``max_queued_messages 1000``:
mosquitto silently drops QoS 0 bursts beyond it). Each phase uses its own topic prefix
``bench/<run>/<phase>/`` so phases never see each other's messages or sessions.

Phases, each with a fresh publisher process (:mod:`dataflows.bench_mqtt_load`):

* **ceiling** (QoS 0 and QoS 1): a bare subscriber — the same client the flow's source
  uses (paho with the lean PUBLISH path, manual acks, the same Receive Maximum) with
  nothing behind it — drains ``--events`` messages published as fast as the broker
  takes them. This is the transport's ceiling on this machine; flow figures are also
  given as a fraction of it. ``--baseline`` adds a stock paho ``on_message``
  subscriber for comparison.
* **flow** (QoS 0 and QoS 1): the real air-quality flow (one Bytewax worker, run by
  ``bytewax.run.cli_main`` like ``edgewatch run``, MQTT source, alerts published to
  ``alerts/<sensor_id>`` at QoS 1) takes the same load. Throughput is messages scored
  divided by the time from the first publish to the last scored batch; loss is
  published minus scored.
* **latency**: QoS 1 at ``--rate`` msgs/s for ``--duration`` seconds, paced; an alert
  recorder process (not a thread: it would share the GIL with the flow and add its
  waits to the figures) notes when each alert arrives. Latency is receive time minus
  the alert's ``ts``, the publish time the publisher wrote into the reading.

The flow's settings (``epoch_interval_s``, ``mqtt_queue_size``, ``mqtt_protocol``, …)
come from ``EDGEWATCH_*`` variables and ``EDGEWATCH_CONFIG`` as for ``edgewatch run``,
so a deployment's configuration can be measured; the header and the JSON name them.
The last line printed is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import orjson
from bytewax.inputs import Source
from bytewax.run import cli_main

from dataflows.air_quality import FLOW_NAME, build_flow
from dataflows.bench_mqtt_load import LoadSpec, publish_load, record_alerts
from dataflows.inputs import mqtt_source
from dataflows.local_broker import LocalBroker, find_binary, wait_until
from dataflows.settings import Settings
from operators.records import RawMessage, Scored
from sources.mqtt import MQTTSettings

__all__ = ["mqtt_bench_command"]

_IDLE_S = 3.0  # a phase ends this long after the last message when some were lost
_CEILING_ACKS = 500  # the bare subscriber acknowledges QoS 1 messages in bulks this big
_Say = Callable[[str], Any]


@dataclasses.dataclass(frozen=True)
class _Target:
    url: str
    host: str
    port: int
    username: str | None
    password: str | None
    label: str
    root: str  # topic prefix of this run
    external: bool = False  # --broker: someone else's broker

    def spec(self, phase: str, args: argparse.Namespace, qos: int, n: int, rate: float = 0.0
             ) -> LoadSpec:  # fmt: skip
        return LoadSpec(self.host, self.port, self.username, self.password,
                        self.prefix(phase), n, args.sensors, qos, rate)  # fmt: skip

    def prefix(self, phase: str) -> str:
        return f"{self.root}{phase}/"


@contextmanager
def _target(args: argparse.Namespace) -> Iterator[_Target]:
    root = f"bench/{os.getpid()}-{int(time.time())}/"
    if args.broker:
        parts = urllib.parse.urlsplit(args.broker)
        if parts.scheme != "mqtt" or not parts.hostname:
            msg = f"--broker must be mqtt://[user:password@]host[:port], got {args.broker!r}"
            raise SystemExit(msg)
        password = urllib.parse.unquote(parts.password) if parts.password else None
        yield _Target(args.broker, parts.hostname, parts.port or 1883,
                      urllib.parse.unquote(parts.username) if parts.username else None,
                      password or os.environ.get("EDGEWATCH_MQTT_PASSWORD"),
                      f"broker {parts.hostname}:{parts.port or 1883}", root,
                      external=True)  # fmt: skip
        return
    with tempfile.TemporaryDirectory(prefix="edgewatch-bench-") as tmp:
        broker = LocalBroker(Path(tmp))
        broker.start()
        try:
            yield _Target(broker.url(), "127.0.0.1", broker.port, broker.username,
                          broker.password, f"private {_mosquitto_version()} on "
                          f"127.0.0.1:{broker.port}", root)  # fmt: skip
        finally:
            broker.stop()


def _mosquitto_version() -> str:
    binary = find_binary("mosquitto") or "mosquitto"
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].replace(" version", "") if first else "mosquitto"


def _spawn(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, theirs), daemon=True)
    proc.start()
    if not ours.poll(30) or (said := ours.recv()) != "ready":
        proc.kill()
        msg = f"{getattr(target, '__name__', target)} did not start"
        raise RuntimeError(msg)
    del said
    return proc, ours


def _finish(proc: Any, conn: Connection, timeout: float = 120.0) -> Any:
    try:
        if not conn.poll(timeout):
            msg = "a load process did not report back"
            raise RuntimeError(msg)
        return conn.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def _rate(count: int, start: float, end: float) -> float:
    return count / (end - start) if end > start else 0.0


def _ceiling(t: _Target, args: argparse.Namespace, qos: int, stock: bool = False) -> dict[str, Any]:
    """A bare subscriber drains ``--events`` messages published at full speed."""
    phase = f"ceiling-q{qos}{'-paho' if stock else ''}"
    got, last, subscribed = [0], [0.0], threading.Event()
    clients: list[Any] = []
    unacked: list[int] = []

    def on_raw(topic: str, payload: bytes, mid: int, q: int) -> None:
        got[0] += 1
        last[0] = time.time()
        if q:  # acknowledged in bulk, as the source does
            unacked.append(mid)
            if len(unacked) >= _CEILING_ACKS:
                clients[0].ack_many(unacked)
                unacked.clear()

    def setup(client: Any) -> None:
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = on_message

    def on_message(client: Any, userdata: Any, m: Any) -> None:  # stock paho, one ack each
        got[0] += 1
        last[0] = time.time()
        if m.qos:
            client.ack(m.mid, m.qos)

    flow_settings = Settings.load()  # the same protocol and window as the flow's source
    settings = MQTTSettings.from_url(t.url, password=t.password,
                                     protocol=flow_settings.mqtt_protocol)  # fmt: skip
    queue_size = flow_settings.mqtt_queue_size
    client = settings.connect(f"edgewatch-bench-{os.getpid()}-{phase}", persistent=False,
                              manual_ack=True, receive_maximum=queue_size, setup=setup,
                              on_raw_message=None if stock else on_raw)  # fmt: skip
    clients.append(client)
    try:
        client.subscribe(f"{t.prefix(phase)}sensors/+/readings", qos)
        if not subscribed.wait(10):
            msg = "no SUBACK for the ceiling subscriber"
            raise RuntimeError(msg)
        proc, conn = _spawn(publish_load, t.spec(phase, args, qos, args.events))
        conn.send("go")
        pub = _finish(proc, conn)
        _wait_quiet(lambda: got[0], args.events)
    finally:
        client.disconnect()
        client.loop_stop()
    return {"sent": pub["sent"], "received": got[0], "lost": pub["sent"] - got[0],
            "publish_msgs_per_s": _rate(pub["sent"], pub["start"], pub["end"]),
            "msgs_per_s": _rate(got[0], pub["start"], last[0])}  # fmt: skip


def _wait_quiet(count: Callable[[], int], expected: int) -> None:
    """Wait until ``expected`` arrived, or nothing more arrived for a while."""
    seen, since = -1, time.monotonic()
    while count() < expected and time.monotonic() - since < _IDLE_S:
        if count() != seen:
            seen, since = count(), time.monotonic()
        time.sleep(0.02)


class _Scored:
    """``on_scored`` callback: counts scored readings, notes the time of the last batch."""

    def __init__(self) -> None:
        self.count, self.last = 0, 0.0

    def __call__(self, batch: list[tuple[str, Scored]]) -> None:
        self.count += sum(len(s.readings) for _, s in batch)
        self.last = time.time()


def _flow(t: _Target, args: argparse.Namespace, qos: int, n: int, rate: float = 0.0,
          progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """The air-quality flow reads ``n`` messages through the broker and publishes alerts."""
    phase = f"flow-q{qos}" + (f"-{rate:g}" if rate else "")
    settings = Settings.load(source="mqtt", mqtt_url=t.url, mqtt_prefix=t.prefix(phase),
                             mqtt_qos=qos, mqtt_outputs="on", mqtt_node="bench",
                             mqtt_client_id=f"edgewatch-bench-{os.getpid()}-{phase}",
                             mqtt_session_expiry_s=60, mqtt_idle_stop_s=_IDLE_S,
                             alerts_path="", deadletter_path="",
                             batch_size=args.batch_size)  # fmt: skip
    source = dataclasses.replace(mqtt_source(settings, FLOW_NAME), max_messages=n)
    scored, alerts = _Scored(), [0]
    flow = build_flow(settings, source=cast("Source[RawMessage]", source), on_scored=scored,
                      on_alerts=lambda b: alerts.__setitem__(0, alerts[0] + len(b)))  # fmt: skip
    rec, rec_conn = _spawn(record_alerts, (t.host, t.port, t.username, t.password),
                           f"{t.prefix(phase)}alerts/#")  # fmt: skip
    pub, pub_conn = _spawn(publish_load, t.spec(phase, args, qos, n, rate))
    report: dict[str, Any] = {}
    ended = threading.Event()

    def control() -> None:  # start publishing once the flow's subscription is live
        stats = source.stats
        wait_until(lambda: ended.is_set() or any(s.subscribed for s in stats.values()),
                   120, "the flow's subscription")  # fmt: skip
        if not ended.is_set():
            pub_conn.send("go")
            report.update(_finish(pub, pub_conn))

    controller = threading.Thread(target=control, daemon=True)
    controller.start()
    ticker = threading.Thread(target=_progress, args=(phase, scored, n, ended), daemon=True)
    if progress:
        ticker.start()
    try:
        epoch = timedelta(seconds=settings.epoch_interval_s)
        cast(Callable[..., None], cli_main)(flow, workers_per_process=1, epoch_interval=epoch)
    finally:
        ended.set()
        if progress:
            ticker.join(2)
        controller.join(10)
        rec_conn.send("stop")
        received = _finish(rec, rec_conn)
        pub.kill()
        if t.external:
            _clear_retained(t, f"{t.prefix(phase)}status/bench")
    if "sent" not in report:
        msg = "the publisher did not finish (see the log above)"
        raise RuntimeError(msg)
    stats = next(iter(source.stats.values()))
    out = {"sent": report["sent"], "scored": scored.count, "lost": report["sent"] - scored.count,
           "publish_msgs_per_s": _rate(report["sent"], report["start"], report["end"]),
           "msgs_per_s": _rate(scored.count, report["start"], scored.last),
           "alerts": alerts[0], "alerts_received": len(received),
           "queue_full_waits": stats.queue_full_waits}  # fmt: skip
    return out | _latency(received)


def _clear_retained(t: _Target, topic: str) -> None:
    """Delete the retained status message the flow's alert sink left on a shared broker."""
    client = MQTTSettings.from_url(t.url, password=t.password).connect(
        f"edgewatch-bench-{os.getpid()}-clear", persistent=False
    )
    try:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _latency(received: list[tuple[float, bytes]]) -> dict[str, Any]:
    if not received:
        return {}
    total, inside = [], []
    for at, payload in received:
        alert = orjson.loads(payload)
        ts = datetime.fromisoformat(alert["ts"]).timestamp()
        total.append((at - ts) * 1000)
        inside.append((datetime.fromisoformat(alert["detected_at"]).timestamp() - ts) * 1000)
    total.sort()
    inside.sort()

    def q(xs: list[float], p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2)

    return {"p50_ms": q(total, 0.5), "p99_ms": q(total, 0.99), "max_ms": round(total[-1], 2),
            "detect_p50_ms": q(inside, 0.5), "detect_p99_ms": q(inside, 0.99)}  # fmt: skip


def _progress(phase: str, scored: _Scored, n: int, done: threading.Event) -> None:
    """Progress on stderr while a flow phase runs."""
    while not done.wait(1.0):
        sys.stderr.write(f"\r  {phase}: {scored.count:,} / {n:,} scored…")
    sys.stderr.write("\r" + " " * 60 + "\r")


def mqtt_bench_command(args: argparse.Namespace) -> int:
    """Run the MQTT benchmark phases and print a table; the last line is one JSON object."""
    say: _Say = (lambda _: None) if args.json else sys.stdout.write
    progress = not args.json and sys.stderr.isatty()
    qos_levels = sorted(set(args.qos))
    settings = Settings.load()
    result: dict[str, Any] = {"mode": "mqtt", "events": args.events, "sensors": args.sensors,
                              "workers": 1, "batch_size": args.batch_size,
                              "epoch_interval_s": settings.epoch_interval_s,
                              "mqtt_queue_size": settings.mqtt_queue_size,
                              "protocol": settings.mqtt_protocol}  # fmt: skip
    with _target(args) as t:
        result["broker"] = t.label
        say(f"edgewatch bench --mqtt: {t.label}, MQTT v{settings.mqtt_protocol}, "
            f"{args.sensors} sensors, 1 worker, {os.cpu_count()} CPUs\n"
            f"  {'phase':<22}{'sent':>10}{'scored':>10}{'lost':>7}{'msgs/s':>10}"
            f"{'publish/s':>11}{'vs ceiling':>12}\n")  # fmt: skip
        for qos in qos_levels:
            ceiling = _ceiling(t, args, qos)
            _row(say, f"ceiling QoS {qos}", ceiling, ceiling["received"], None)
            result |= {f"ceiling_qos{qos}_{k}": _round(v) for k, v in ceiling.items()}
            if args.baseline:
                paho = _ceiling(t, args, qos, stock=True)
                _row(say, f"stock paho QoS {qos}", paho, paho["received"], ceiling)
                result[f"paho_qos{qos}_msgs_per_s"] = _round(paho["msgs_per_s"])
            flow = _flow(t, args, qos, args.events, progress=progress)
            _row(say, f"flow QoS {qos}", flow, flow["scored"], ceiling)
            result |= {f"qos{qos}_{k}": _round(v) for k, v in flow.items() if not k.endswith("_ms")}
            result[f"qos{qos}_vs_ceiling"] = round(flow["msgs_per_s"] / ceiling["msgs_per_s"], 3)
        if args.rate > 0:
            n = int(args.rate * args.duration)
            lat = _flow(t, args, 1, n, args.rate, progress)
            _row(say, f"flow QoS 1 @ {args.rate:,.0f}/s", lat, lat["scored"], None)
            result |= {"latency_rate": args.rate, "latency_qos": 1}
            result |= {f"latency_{k}": _round(v) for k, v in lat.items()}
            say(f"  publish→alert latency at {args.rate:,.0f} msgs/s over "
                f"{lat['alerts_received']:,} alerts: p50 {lat.get('p50_ms')} ms, "
                f"p99 {lat.get('p99_ms')} ms, max {lat.get('max_ms')} ms "
                f"(publish→detected p50 {lat.get('detect_p50_ms')} ms, "
                f"p99 {lat.get('detect_p99_ms')} ms)\n")  # fmt: skip
    if "ceiling_qos0_msgs_per_s" in result:
        result["ceiling_msgs_per_s"] = result["ceiling_qos0_msgs_per_s"]
    result |= {"cpus": os.cpu_count(), "python": platform.python_version(),
               "bytewax": version("bytewax"), "paho_mqtt": version("paho-mqtt")}  # fmt: skip
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


def _row(say: _Say, name: str, r: dict[str, Any], got: int, ceiling: dict[str, Any] | None) -> None:
    ratio = f"{r['msgs_per_s'] / ceiling['msgs_per_s']:.2f}" if ceiling else ""
    say(f"  {name:<22}{r['sent']:>10,}{got:>10,}{r['lost']:>7,}{r['msgs_per_s']:>10,.0f}"
        f"{r['publish_msgs_per_s']:>11,.0f}{ratio:>12}\n")  # fmt: skip


def _round(v: Any) -> Any:
    return round(v, 1) if isinstance(v, float) else v
