"""Connection settings for MQTT brokers and a connect helper with bounded, classified retries.

Public names are re-exported by :mod:`sources.mqtt`; ``sinks.mqtt`` receives a
:class:`MQTTSettings` object from the dataflow instead of importing this module.

Clients are paho clients with one addition for subscribers that must keep up with a
busy broker: with ``on_raw_message`` (see :meth:`MQTTSettings.connect`) incoming QoS 0
and QoS 1 PUBLISH packets skip paho's message objects (see :class:`MQTTClient`).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sources._paho import MQTTClient, RawMessageHandler, no_delay

__all__ = [
    "PASSWORD_ENV",
    "USERNAME_ENV",
    "MQTTClient",
    "MQTTConnectError",
    "MQTTSettings",
    "RawMessageHandler",
    "validate_topic_filter",
]

logger = logging.getLogger("sources.mqtt")

USERNAME_ENV = "EDGEWATCH_MQTT_USERNAME"
"""Environment variable with the user name when neither the URL nor an argument gives one."""
PASSWORD_ENV = "EDGEWATCH_MQTT_PASSWORD"
"""Environment variable with the password when no URL, argument or file gives one."""
# CONNACK reasons that retrying cannot fix: unsupported protocol, client id refused,
# bad user name or password, not authorised, banned, bad authentication method.
_FATAL_CONNACK = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})


class MQTTConnectError(RuntimeError):
    """The broker could not be reached, refused us, or refused the subscription.

    Attributes:
        url: The broker URL, without the password.
        reason: What went wrong (unreachable, refused: …, TLS failure: …).
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"MQTT broker {url}: {reason}")
        self.url, self.reason = url, reason


def validate_topic_filter(topic: str) -> str:
    """Return ``topic`` if it is a valid MQTT topic filter, else raise ``ValueError``.

    >>> validate_topic_filter("sensors/+/readings")
    'sensors/+/readings'
    >>> validate_topic_filter("sensors/#/readings")
    Traceback (most recent call last):
    ...
    ValueError: bad MQTT topic filter 'sensors/#/readings': '#' must be a whole last level
    """
    levels = topic.split("/")
    problem = next(
        (msg for bad, msg in (
            (not topic, "it is empty"),
            ("\0" in topic or len(topic.encode()) > 65535, "NUL or longer than 65535 bytes"),
            (topic.startswith("$share/"), "give the group as shared_group, not in the filter"),
            (any("#" in lv for lv in levels[:-1]) or ("#" in levels[-1] and levels[-1] != "#"),
             "'#' must be a whole last level"),
            (any("+" in lv and lv != "+" for lv in levels), "'+' must be a whole level"),
        ) if bad),
        None,
    )  # fmt: skip
    if problem is not None:
        msg = f"bad MQTT topic filter {topic!r}: {problem}"
        raise ValueError(msg)
    return topic


class _ConnAck:
    """Turns paho's connect/disconnect callbacks into a waitable first outcome."""

    def __init__(self, url: str, on_connected: Callable[[mqtt.Client, bool], None] | None,
                 on_disconnected: Callable[[], None] | None) -> None:  # fmt: skip
        self.url, self.on_connected, self.on_disconnected = url, on_connected, on_disconnected
        self.event = threading.Event()
        self.outcome: ReasonCode | str | None = None
        self.up = False

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                   rc: ReasonCode, properties: Any) -> None:  # fmt: skip
        if rc.is_failure:
            if self.event.is_set():
                logger.error("%s refused the reconnect: %s", self.url, rc)
            self.outcome = rc
            self.event.set()
            return
        logger.info("connected to %s (session present: %s)", self.url, flags.session_present)
        no_delay(client)
        self.outcome, self.up = rc, True
        self.event.set()
        if self.on_connected is not None:
            self.on_connected(client, flags.session_present)

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                      rc: ReasonCode, properties: Any) -> None:  # fmt: skip
        if self.on_disconnected is not None:
            self.on_disconnected()
        if not self.event.is_set():
            self.outcome = f"the broker closed the connection before CONNACK ({rc})"
            self.event.set()
        elif self.up and rc.value != 0:  # 0: our own clean disconnect
            logger.warning("disconnected from %s: %s; reconnecting", self.url, rc)


@dataclass(frozen=True, kw_only=True)
class MQTTSettings:
    """How to reach an MQTT broker. Nothing connects until :meth:`connect`.

    Credentials come from the arguments (or the URL), then ``password_file``, then the
    environment variables :data:`USERNAME_ENV` / :data:`PASSWORD_ENV`, read at connect
    time. ``mqtts://`` verifies the server against ``ca_file`` (or the system store).

    >>> s = MQTTSettings.from_url("mqtts://edge:p%40ss@broker.local", keepalive_s=30)
    >>> s.url, s.port, s.password, s.keepalive_s
    ('mqtts://edge@broker.local:8883', 8883, 'p@ss', 30)

    Attributes:
        host: Broker host name or address.
        port: Broker port (``None``: 1883, or 8883 with TLS).
        tls: Use TLS.
        username: User name.
        password: Password.
        password_file: File holding the password (read at connect time).
        ca_file: CA certificates to verify the broker with (PEM).
        cert_file: Client certificate (PEM), for brokers that require one.
        key_file: The client certificate's key (PEM).
        tls_insecure: Skip the host name check (tests only; the chain is still verified).
        protocol: ``"5"`` (MQTT v5) or ``"3.1.1"``.
        keepalive_s: Keepalive interval.
        session_expiry_s: How long the broker keeps a persistent v5 session.
        reconnect_min_s: First reconnect delay (paho doubles it up to the maximum).
        reconnect_max_s: Longest reconnect delay.
        connect_timeout_s: How long the first connection may keep retrying.
    """

    host: str = "127.0.0.1"
    port: int | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | Path | None = None
    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    tls_insecure: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 60
    session_expiry_s: int = 86_400
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.port is None:
            object.__setattr__(self, "port", 8883 if self.tls else 1883)
        problems = [
            (bool(self.host), "host is empty"),
            (self.protocol in ("5", "3.1.1"), f"protocol {self.protocol!r} is not '5' or '3.1.1'"),
            (0 < (self.port or 0) < 65536, f"port {self.port} out of range"),
            ((self.cert_file is None) == (self.key_file is None), "give cert_file with key_file"),
            (self.tls or self.ca_file is self.cert_file is None, "TLS files need mqtts:// (tls)"),
            (0 < self.reconnect_min_s <= self.reconnect_max_s, "need 0 < reconnect_min_s <= max"),
            (self.connect_timeout_s > 0 and self.keepalive_s > 0, "timeouts must be positive"),
        ]  # fmt: skip
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MQTTSettings:
        """Settings from ``mqtt[s]://[user[:password]@]host[:port]``; ``options`` win."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            msg = f"broker URL must look like mqtt[s]://[user:password@]host[:port], got {url!r}"
            raise ValueError(msg)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            msg = f"broker URL {url!r} must not have a path, query or fragment"
            raise ValueError(msg)
        unquote = urllib.parse.unquote
        values: dict[str, Any] = {
            "host": parts.hostname,
            "port": parts.port,  # raises ValueError for a bad port
            "tls": parts.scheme == "mqtts",
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password is not None else None,
        }
        return cls(**(values | options))

    @property
    def url(self) -> str:
        """The broker URL without the password, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"

    def _credentials(self) -> tuple[str | None, str | None]:
        username = self.username or os.environ.get(USERNAME_ENV) or None
        password = self.password
        if password is None and self.password_file is not None:
            password = Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        if password is None:
            password = os.environ.get(PASSWORD_ENV) or None
        return username, password

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=None if self.ca_file is None else str(self.ca_file))
        if self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx

    def _client(self, client_id: str, persistent: bool, manual_ack: bool) -> MQTTClient:
        v5 = self.protocol == "5"
        client = MQTTClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else not persistent,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=manual_ack,
        )
        client.enable_logger(logging.getLogger("sources.mqtt.paho"))
        client.connect_timeout = min(self.connect_timeout_s, 5.0)  # one TCP/TLS attempt
        username, password = self._credentials()
        if username is not None or password is not None:
            client.username_pw_set(username, password)
        if self.tls:
            client.tls_set_context(self._tls_context())
        client.reconnect_delay_set(round(max(self.reconnect_min_s, 1)), round(self.reconnect_max_s))
        return client

    def connect(
        self,
        client_id: str,
        *,
        persistent: bool,
        setup: Callable[[mqtt.Client], None] | None = None,
        on_connected: Callable[[mqtt.Client, bool], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        on_raw_message: RawMessageHandler | None = None,
    ) -> MQTTClient:
        """Connect a new client and start its network thread (which then reconnects).

        Args:
            client_id: The MQTT client id.
            persistent: Ask for a persistent session (kept ``session_expiry_s`` on v5).
            setup: Called with the client before it connects (will, callbacks).
            on_connected: Called in the network thread on every successful
                (re)connect with ``(client, session_present)``: subscribe here.
            on_disconnected: Called in the network thread when a connection ends.
            manual_ack: Acknowledge received messages only through ``client.ack``.
            receive_maximum: v5 receive maximum (unacknowledged messages in flight).
            on_raw_message: Takes incoming QoS 0/1 messages as ``(topic, payload,
                packet id, qos)`` instead of ``on_message`` (a much cheaper path; QoS 2
                messages still go to ``on_message``).

        Returns:
            The connected client, its loop running.

        Raises:
            MQTTConnectError: Bad credentials or a TLS failure (at once), or no
                connection within ``connect_timeout_s``.
        """
        client = self._client(client_id, persistent, manual_ack)
        client.on_raw_message = on_raw_message
        if setup is not None:
            setup(client)
        props = None
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session_expiry_s if persistent else 0
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
        waiter = _ConnAck(self.url, on_connected, on_disconnected)
        client.on_connect, client.on_disconnect = waiter.on_connect, waiter.on_disconnect
        deadline, delay = time.monotonic() + self.connect_timeout_s, self.reconnect_min_s
        while (reason := self._attempt(client, waiter, props, persistent, deadline)) is not None:
            pause = min(delay, deadline - time.monotonic())
            if pause <= 0:
                msg = f"{reason}; gave up after {self.connect_timeout_s:g} s"
                raise MQTTConnectError(self.url, msg)
            logger.warning("cannot connect to %s: %s; retrying in %.1f s", self.url, reason, pause)
            time.sleep(pause)
            delay = min(delay * 2, self.reconnect_max_s)
        return client

    def _attempt(self, client: mqtt.Client, waiter: _ConnAck, props: Properties | None,
                 persistent: bool, deadline: float) -> str | None:  # fmt: skip
        waiter.event.clear()
        try:
            if props is None:
                client.connect(self.host, self.port or 1883, self.keepalive_s)
            else:
                client.connect(self.host, self.port or 1883, self.keepalive_s,
                               clean_start=not persistent, properties=props)  # fmt: skip
        except ssl.SSLError as exc:  # certificate or protocol problems: retrying will not help
            raise MQTTConnectError(self.url, f"TLS failure: {exc}") from exc
        except OSError as exc:
            return f"unreachable ({exc})"
        client.loop_start()
        waiter.event.wait(max(deadline - time.monotonic(), 0.0))
        outcome = waiter.outcome
        if isinstance(outcome, ReasonCode) and not outcome.is_failure:
            return None
        client.loop_stop()
        client.disconnect()
        if isinstance(outcome, ReasonCode) and outcome.value in _FATAL_CONNACK:
            hint = f"check the user name and password (URL, password_file, {PASSWORD_ENV})"
            raise MQTTConnectError(self.url, f"connection refused: {outcome}; {hint}")
        return str(outcome) if outcome is not None else "no CONNACK before the deadline"
