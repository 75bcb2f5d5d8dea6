"""A paho client with a lean receive path for busy subscribers, and TCP_NODELAY.

Used by :mod:`sources._mqtt_client`; it extends paho 2.x internals (pinned in
``pyproject.toml``), and the source's integration tests run it on MQTT v5 and v3.1.1.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import LogLevel, MQTTErrorCode

__all__ = ["MQTTClient", "RawMessageHandler", "no_delay"]

_PUBACK_WORD = 0x4002 << 16  # PUBACK header, remaining length 2; the packet id below
RawMessageHandler = Callable[[str, bytes, int, int], None]
"""Takes ``(topic, payload, packet id, qos)`` of an incoming QoS 0/1 PUBLISH, in the
network thread. An invalid UTF-8 topic arrives with U+FFFD replacements."""


class MQTTClient(mqtt.Client):
    """paho's client; with ``on_raw_message`` set, a lean path for QoS 0/1 PUBLISH packets.

    For every incoming PUBLISH paho builds an ``MQTTMessage`` (with an
    ``MQTTMessageInfo`` and its ``Condition``, and on MQTT v5 a ``Properties`` object that
    costs more than all the rest), logs it, and looks its callbacks up under two locks:
    15-35 µs of Python per message, more than the whole air-quality dataflow spends on
    it. Here a QoS 0 or 1 packet is decoded in place (topic, packet id, payload; v5
    properties skipped: subscribers here use none and announce no topic aliases, so the
    topic is always present) and handed to ``on_raw_message``. QoS 1 is acknowledged as
    paho would (at once, or by ``ack()`` with ``manual_ack``); QoS 2 and malformed
    packets take paho's own path. This overrides paho 2.x's private ``_handle_publish``
    and reads its ``_in_packet``; the source's tests run it on v5 and v3.1.1.
    """

    on_raw_message: RawMessageHandler | None = None
    raw_dup: bool = False
    """The DUP flag of the PUBLISH being handed to ``on_raw_message`` (read it there):
    set when the broker sends the message again, e.g. after a reconnect."""

    def ack_many(self, mids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``): their PUBACKs in one write.

        ``ack()`` queues one packet per message and wakes the network thread for each
        (a syscall, and one ``send`` per packet there): 30-50 ms of a dataflow worker's
        time for the 5,000 messages of a busy epoch. Here the PUBACKs (v3.1.1 form,
        also valid v5: reason "success", no properties) go out back to back as one
        queued write, which paho sends, or drops on a reconnect, like any packet.
        """
        if mids:
            blob = struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])
            self._packet_queue(mqtt.PUBACK, blob, 0, 0)

    def _easy_log(self, level: LogLevel, fmt: str, *args: Any) -> None:
        # paho's thread may run one more loop after our own disconnect() closed the socket
        # and log that as an error; it is not one.
        if level == LogLevel.MQTT_LOG_ERR and fmt.startswith("Client is not connected"):
            level = LogLevel.MQTT_LOG_DEBUG
        super()._easy_log(level, fmt, *args)

    def _handle_publish(self) -> MQTTErrorCode:
        handler, packet = self.on_raw_message, self._in_packet
        qos = (packet["command"] & 0x06) >> 1
        data = packet["packet"]
        if handler is None or qos == 2 or len(data) < 2:
            return super()._handle_publish()
        pos = 2 + ((data[0] << 8) | data[1])
        topic, mid = data[2:pos], 0
        if qos:
            if pos + 2 > len(data):
                return super()._handle_publish()
            mid, pos = (data[pos] << 8) | data[pos + 1], pos + 2
        if self._protocol == mqtt.MQTTv5:  # skip the properties: a varint length, then them
            length, shift = 0, 0
            while pos < len(data) and shift < 28:
                byte, pos = data[pos], pos + 1
                length, shift = length | (byte & 0x7F) << shift, shift + 7
                if not byte & 0x80:
                    break
            pos += length
        if not topic or pos > len(data):
            return super()._handle_publish()
        self.raw_dup = bool(packet["command"] & 0x08)
        handler(topic.decode("utf-8", "replace"), bytes(data[pos:]), mid, qos)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def no_delay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off: a small packet (a PUBLISH, a PUBACK) goes out at once.

    Otherwise a second small write waits for the TCP acknowledgement of the first, which
    the peer may delay by 40 ms; a sink that waits for PUBACKs would stall that long.
    """
    sock = client.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
