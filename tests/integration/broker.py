"""Real mosquitto brokers for the integration tests: config, start, stop, restart, TLS.

A :class:`Broker` owns a directory (config, password file, persistence, log) and one
127.0.0.1 port that it keeps across :meth:`Broker.stop` / :meth:`Broker.start`, so a
test can restart the broker under connected clients. :func:`make_certs` makes a CA, a
server certificate for ``127.0.0.1``/``localhost`` and a client certificate with the
``openssl`` command line. The broker itself is the product's
:class:`dataflows.local_broker.LocalBroker` (``find_binary``, ``free_port`` and
``wait_until`` come from there too).
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dataflows.local_broker import LocalBroker, find_binary, free_port, wait_until

__all__ = [
    "FlowRunner",
    "PASSWORD",
    "USER",
    "Broker",
    "Certs",
    "Subscriber",
    "find_binary",
    "free_port",
    "make_certs",
    "publish",
    "mqtt_client",
    "wait_until",
]

USER, PASSWORD = "edge", "s3cret-pw"


@dataclass(frozen=True)
class Certs:
    """PEM files made by :func:`make_certs`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verification against it fails


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    return crt, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, crt, extfile = (d / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    extfile.write_text(ext + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", crt, "-days", "2", "-extfile", extfile)  # fmt: skip
    return crt, key


def make_certs(d: Path) -> Certs:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    ca = _ca(d, "edgewatch-test-ca")
    server = _leaf(d, "localhost", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth")  # fmt: skip
    client = _leaf(d, "edge-client", ca, "extendedKeyUsage=clientAuth")
    other, _ = _ca(d, "unrelated-ca")
    return Certs(ca[0], server[0], server[1], client[0], client[1], other)


class Broker(LocalBroker):
    """One mosquitto process with auth, persistence and a file log in ``root``.

    A :class:`~dataflows.local_broker.LocalBroker` with the tests' user and password,
    ``max_queued_messages 100000`` and ``max_inflight_messages 1000``; its files are
    written at construction.

    Args:
        binary: The ``mosquitto`` executable.
        root: A directory for the config, password file, database and log.
        certs: Serve TLS (client certificate required) with these, instead of plain TCP.
        extra: More config lines.
    """

    def __init__(
        self, binary: str, root: Path, certs: Certs | None = None, extra: str = ""
    ) -> None:
        tls = ""
        if certs is not None:
            tls = (f"cafile {certs.ca}\ncertfile {certs.server_cert}\nkeyfile "
                   f"{certs.server_key}\nrequire_certificate true\n")  # fmt: skip
        super().__init__(root, binary=binary, username=USER, password=PASSWORD,
                         max_queued_messages=100_000, max_inflight_messages=1000,
                         tcp_nodelay=False, extra=extra, listener_extra=tls)  # fmt: skip
        self.certs = certs
        self.write_config()

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        """The broker URL with credentials (``mqtts://`` for a TLS broker)."""
        scheme = "mqtts" if self.certs is not None else "mqtt"
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}"

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until the log matches the regex ``pattern`` at least ``count`` times."""
        rx = re.compile(pattern)
        wait_until(lambda: len(rx.findall(self.log_text())) >= count, timeout,
                   f"{count} x {pattern!r} in the mosquitto log")  # fmt: skip


def mqtt_client(broker: Broker, client_id: str = "", persistent: bool = False) -> mqtt.Client:
    """A connected paho v5 client (the tests' own publisher/subscriber), loop running."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(USER, PASSWORD)
    if broker.certs is not None:
        c = broker.certs
        client.tls_set(str(c.ca), str(c.client_cert), str(c.client_key))
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600 if persistent else 0
    client.connect("127.0.0.1", broker.port, clean_start=not persistent, properties=props)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        msg = "test client did not connect"
        raise TimeoutError(msg)
    return client


def publish(broker: Broker, items: Iterable[tuple[str, bytes]], qos: int = 1) -> None:
    """Publish ``(topic, payload)`` items and wait until the broker acknowledged all."""
    client = mqtt_client(broker)
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos), "broker did not ack every publish"
    finally:
        client.disconnect()
        client.loop_stop()


class Subscriber:
    """Collect ``(topic, payload, qos, retain)`` from a subscription, in a paho thread."""

    def __init__(self, broker: Broker, topic: str, client_id: str = "",
                 persistent: bool = False) -> None:  # fmt: skip
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.broker, self.topic, self.client_id = broker, topic, client_id
        self.persistent = persistent
        self.client: mqtt.Client | None = None

    def start(self) -> Subscriber:
        """Connect and subscribe (wait for the SUBACK)."""
        subscribed = threading.Event()

        def on_message(client: mqtt.Client, userdata: object, m: mqtt.MQTTMessage) -> None:
            self.messages.append((m.topic, m.payload, m.qos, bool(m.retain)))

        self.client = client = mqtt_client(self.broker, self.client_id, self.persistent)
        client.on_message = on_message
        client.on_subscribe = lambda *args: subscribed.set()
        client.subscribe(self.topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"
        return self

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, int, bool]]:
        """Wait until ``count`` messages arrived; return them all."""
        wait_until(lambda: len(self.messages) >= count, timeout, f"{count} messages")
        return self.messages

    def stop(self) -> None:
        """Disconnect (a persistent session stays at the broker)."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


class FlowRunner:
    """A Bytewax dataflow run by ``run_main`` in a thread; :meth:`wait` re-raises its error."""

    def __init__(self, flow: Dataflow, epoch_s: float) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(flow, epoch_s), daemon=True)
        self._thread.start()

    def _run(self, flow: Dataflow, epoch_s: float) -> None:
        try:
            run_main(flow, epoch_interval=timedelta(seconds=epoch_s))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def wait(self, timeout: float) -> None:
        """Wait for the flow to end; fail if it is still running, raise what it raised."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"dataflow still running after {timeout} s"
        if self.error is not None:
            raise self.error
