"""parse_log_line on lines mosquitto 2.0.11 really wrote, and the log follower on temp files.

Every line constant below was copied from a mosquitto 2.0.11 log (``log_type all``,
``log_dest file``, a password file and an ACL) while real clients connected, used wrong
passwords, published where the ACL forbids, sent garbage, and stopped pinging.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from sources.broker_log import (
    EVENT_KINDS,
    BrokerEvent,
    BrokerLogSource,
    LogPosition,
    parse_log_line,
)
from sources.broker_sys import _Sampler

T = 1795549244.0
# A real log excerpt (mosquitto 2.0.11, default log types plus debug), in order.
REAL_LOG = """\
1795549244: mosquitto version 2.0.11 running
1795549244: New connection from 127.0.0.1:54165 on port 18841.
1795549244: New client connected from 127.0.0.1:54165 as good-1 (p5, c1, k60, u'edge').
1795549244: No will message specified.
1795549244: Sending CONNACK to good-1 (0, 0)
1795549244: Received DISCONNECT from good-1
1795549244: Client good-1 disconnected.
1795549245: New connection from 127.0.0.1:49277 on port 18841.
1795549245: Sending CONNACK to 127.0.0.1 (0, 135)
1795549245: Client <unknown> disconnected, not authorised.
1795549250: New connection from 127.0.0.1:42699 on port 18841.
1795549250: New client connected from 127.0.0.1:42699 as limited-1 (p5, c1, k60, u'limited').
1795549250: Denied PUBLISH from limited-1 (d0, q1, r0, m1, 'secret/cmd', ... (5 bytes))
1795549250: Sending PUBACK to limited-1 (m1, rc135)
1795549251: Client limited-1 disconnected.
1795549253: New connection from 127.0.0.1:35970 on port 18841.
1795549253: Invalid protocol "MQTX" in CONNECT from 127.0.0.1.
1795549253: Client <unknown> disconnected due to protocol error.
1795549262: New connection from 127.0.0.1:56628 on port 18841.
1795549262: New client connected from 127.0.0.1:56628 as sleepy1 (p2, c1, k1, u'edge').
1795549266: Client sleepy1 has exceeded timeout, disconnecting.
"""


def ev(dt: float, kind: str, client_id: str, address: str = "", detail: str = "") -> BrokerEvent:
    return BrokerEvent(T + dt, kind, client_id, address, detail)


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ("1795549244: New client connected from 127.0.0.1:54165 as good-1 (p5, c1, k60, u'edge').",
         ev(0, "connect", "good-1", "127.0.0.1:54165", "edge")),
        ("1795549244: New client connected from 127.0.0.1:36311 as good-2 (p2, c1, k60, u'edge').",
         ev(0, "connect", "good-2", "127.0.0.1:36311", "edge")),
        ("1795549244: Client good-1 disconnected.",
         ev(0, "disconnect", "good-1", "", "disconnected")),
        ("1795549252: Client dropper-1 closed its connection.",
         ev(8, "disconnect", "dropper-1", "", "connection closed")),
        ("1795549262: Client <unknown> closed its connection.",
         ev(18, "disconnect", "", "", "connection closed")),
        ("1795549260: Client twin already connected, closing old connection.",
         ev(16, "disconnect", "twin", "", "taken over")),
        # wrong password (v5 and v3.1.1), unknown user, no credentials: all this one line
        ("1795549245: Client <unknown> disconnected, not authorised.",
         ev(1, "auth_failure", "", "", "not authorised")),
        # garbage, bad protocol name or version, password without user name
        ("1795549253: Client <unknown> disconnected due to protocol error.",
         ev(9, "protocol_error", "", "", "protocol error")),
        # a second CONNECT, a reserved packet type
        ("1795549255: Client proto1 disconnected due to protocol error.",
         ev(11, "protocol_error", "proto1", "", "protocol error")),
        # a SUBSCRIBE without topics, a PUBLISH too short for its topic
        ("1795549267: Client malf1 disconnected due to malformed packet.",
         ev(23, "protocol_error", "malf1", "", "malformed packet")),
        ("1795549266: Client sleepy1 has exceeded timeout, disconnecting.",
         ev(22, "timeout", "sleepy1", "", "keepalive exceeded")),
        ("1795549250: Denied PUBLISH from limited-1 (d0, q1, r0, m1, 'secret/cmd', ... (5 bytes))",
         ev(6, "acl_denied", "limited-1", "", "secret/cmd")),
        ("1795549250: Denied PUBLISH from limited-1 (d0, q0, r0, m0, 'secret/cmd0', ... (1 bytes))",
         ev(6, "acl_denied", "limited-1", "", "secret/cmd0")),
    ],
)  # fmt: skip
def test_real_lines_become_events(line: str, event: BrokerEvent) -> None:
    assert parse_log_line(line) == event
    assert parse_log_line(line + "\n") == event
    assert event.kind in EVENT_KINDS


def test_iso_timestamps_and_lines_without_one() -> None:
    local = time.mktime((2026, 11, 24, 19, 28, 44, 0, 0, -1))  # log_timestamp_format: localtime
    line = "2026-11-24T19:28:44: Client sleepy1 has exceeded timeout, disconnecting."
    assert parse_log_line(line) == BrokerEvent(
        local, "timeout", "sleepy1", "", "keepalive exceeded"
    )
    utc = "2026-11-24T19:28:44+00:00: Client malf2 disconnected due to malformed packet."
    assert parse_log_line(utc) == BrokerEvent(1795548524.0, "protocol_error", "malf2", "",
                                              "malformed packet")  # fmt: skip
    # log_timestamp false: the caller's clock
    bare = "Client <unknown> disconnected, not authorised."
    assert parse_log_line(bare, now=5.0) == BrokerEvent(
        5.0, "auth_failure", "", "", "not authorised"
    )
    assert abs(parse_log_line(bare).ts - time.time()) < 5  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "\x00\xff garbage",
        "1795549244: New connection from 127.0.0.1:54165 on port 18841.",
        "1795549244: Sending CONNACK to 127.0.0.1 (0, 135)",
        '1795549253: Invalid protocol "MQTX" in CONNECT from 127.0.0.1.',
        "1795549255: Bad client proto1 sending multiple CONNECT messages.",
        "1795549268: Protocol error from nouser: password without username, closing connection.",
        "1795549250: limited-1 1 secret/#",
        "1795549244: Client good-1 disconn",  # a line cut short
        "1795549244: Client good-1 disconnected",  # no full stop: not what mosquitto writes
        "1795549244: Denied PUBLISH from x (d0, q1, r0, m1, 'secret/cmd', ... (5 by",
        "notatime: Client a disconnected.",
    ],
)
def test_other_and_junk_lines_are_none(line: str) -> None:
    assert parse_log_line(line) is None


def test_client_ids_cannot_fake_another_kind() -> None:
    # MQTT client ids are arbitrary text; the fixed line endings decide the kind
    line = "1795549244: Client x disconnected, not authorised disconnected."
    assert parse_log_line(line) == ev(0, "disconnect", "x disconnected, not authorised",
                                      "", "disconnected")  # fmt: skip
    odd = "1795549244: New client connected from ::1:5000 as a (b) 'c' (p2, c1, k5)."
    assert parse_log_line(odd) == ev(0, "connect", "a (b) 'c'", "::1:5000", "")


# -- the follower ----------------------------------------------------------------------


def drain(source: BrokerLogSource, resume: LogPosition | None = None,
          calls: int = 50) -> tuple[list[BrokerEvent], LogPosition]:  # fmt: skip
    """Everything the partition emits until it has nothing new."""
    part = source.build_part("log", "broker-log", resume)
    out: list[BrokerEvent] = []
    try:
        for _ in range(calls):
            batch = part.next_batch()
            if not batch:
                break
            out.extend(batch)
        return out, part.snapshot()
    finally:
        part.close()


def line(n: int, who: str = "dev") -> bytes:
    return f"{1795549000 + n}: Client {who}-{n} disconnected.\n".encode()


def ids(events: list[BrokerEvent]) -> list[str]:
    return [e.client_id for e in events]


def test_starts_at_the_end_unless_from_start(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_bytes(line(1) + line(2))
    part = BrokerLogSource(log).build_part("log", "broker-log", None)
    assert part.next_batch() == []
    with log.open("ab") as f:
        f.write(line(3))
    assert ids(part.next_batch()) == ["dev-3"]
    assert ids(drain(BrokerLogSource(log, from_start=True))[0]) == ["dev-1", "dev-2", "dev-3"]


def test_partial_lines_wait_for_their_newline_and_batches_are_bounded(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_bytes(b"")
    src = BrokerLogSource(log, batch_size=2)
    part = src.build_part("log", "broker-log", None)
    assert part.next_batch() == []  # opened (at its end, which is its start)
    with log.open("ab", buffering=0) as f:
        f.write(line(1)[:20])
        assert part.next_batch() == []
        assert part.next_awake() is not None  # at the end: poll later
        assert part.snapshot()[1] == 0
        f.write(line(1)[20:] + b"1795549000: Sending PINGRESP to x\n" + line(2) + line(3))
        f.write(line(4) + line(5))
    assert ids(part.next_batch()) == ["dev-1", "dev-2"]
    assert part.next_awake() is None  # more is waiting: at once
    assert ids(part.next_batch()) == ["dev-3", "dev-4"]
    assert ids(part.next_batch()) == ["dev-5"]
    assert part.snapshot() == (log.stat().st_ino, log.stat().st_size)
    assert (src.stats.lines, src.stats.events, src.stats.ignored) == (6, 5, 1)


def test_an_endless_line_is_counted_and_dropped(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_bytes(b"x" * 100_000 + b"\n" + line(1))
    src = BrokerLogSource(log, from_start=True)
    assert ids(drain(src)[0]) == ["dev-1"]
    assert (src.stats.lines, src.stats.events, src.stats.ignored) == (3, 1, 2)  # 64 KiB + rest


def test_truncation_reads_again_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_bytes(line(1) + line(2))
    src = BrokerLogSource(log, from_start=True)
    part = src.build_part("log", "broker-log", None)
    assert ids(part.next_batch()) == ["dev-1", "dev-2"]
    log.write_bytes(line(3))  # copytruncate, then a new line
    assert ids(part.next_batch()) == ["dev-3"]
    assert src.stats.truncations == 1


def test_rotation_finishes_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    log, old = tmp_path / "m.log", tmp_path / "m.log.1"
    log.write_bytes(b"")
    src = BrokerLogSource(log)
    part = src.build_part("log", "broker-log", None)
    assert part.next_batch() == []
    with log.open("ab", buffering=0) as writer:  # the broker's open file
        writer.write(line(1))
        assert ids(part.next_batch()) == ["dev-1"]
        log.rename(old)
        assert part.next_batch() == []  # moved away, nothing new yet
        log.write_bytes(b"")  # logrotate's create: the broker still writes the old file
        writer.write(line(2) + line(3)[:10])
        assert ids(part.next_batch()) == ["dev-2"]
        writer.write(line(3)[10:])
    log.write_bytes(line(4))  # the broker reopened its log (SIGHUP)
    assert ids(part.next_batch()) == ["dev-3", "dev-4"]
    assert part.snapshot() == (log.stat().st_ino, len(line(4)))
    assert src.stats.files == 2
    part.close()


def test_missing_file_is_waited_for_and_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    part = BrokerLogSource(log).build_part("log", "broker-log", None)
    assert part.next_batch() == []
    assert part.next_awake() is not None
    log.write_bytes(line(1))
    assert ids(part.next_batch()) == ["dev-1"]


def test_resume_goes_on_after_the_snapshot(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_bytes(line(1) + line(2))
    first, snap = drain(BrokerLogSource(log, from_start=True))
    assert ids(first) == ["dev-1", "dev-2"]
    with log.open("ab") as f:
        f.write(line(3))
    assert ids(drain(BrokerLogSource(log), resume=snap)[0]) == ["dev-3"]
    # rotated while the flow was down: the rest of the rotated copy, then the new file
    with log.open("ab") as f:
        f.write(line(4))
    log.rename(tmp_path / "m.log.1")
    log.write_bytes(line(5))
    resumed, snap2 = drain(BrokerLogSource(log), resume=(snap[0], snap[1] + len(line(3))))
    assert ids(resumed) == ["dev-4", "dev-5"]
    assert snap2 == (log.stat().st_ino, len(line(5)))
    # a snapshot of a file that is gone: the current file from its start
    (tmp_path / "m.log.1").unlink()
    assert ids(drain(BrokerLogSource(log), resume=snap)[0]) == ["dev-5"]


def test_addresses_are_filled_in_from_earlier_lines(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text(REAL_LOG)
    events, _ = drain(BrokerLogSource(log, from_start=True))
    assert events == [
        ev(0, "connect", "good-1", "127.0.0.1:54165", "edge"),
        ev(0, "disconnect", "good-1", "127.0.0.1:54165", "disconnected"),
        ev(1, "auth_failure", "", "127.0.0.1:49277", "not authorised"),
        ev(6, "connect", "limited-1", "127.0.0.1:42699", "limited"),
        ev(6, "acl_denied", "limited-1", "127.0.0.1:42699", "secret/cmd"),
        ev(7, "disconnect", "limited-1", "127.0.0.1:42699", "disconnected"),
        ev(9, "protocol_error", "", "127.0.0.1:35970", "protocol error"),
        ev(18, "connect", "sleepy1", "127.0.0.1:56628", "edge"),
        ev(22, "timeout", "sleepy1", "127.0.0.1:56628", "keepalive exceeded"),
    ]


def test_overlapping_unnamed_connections_get_no_guessed_address(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    new = "1795549245: New connection from 10.0.0.{} on port 1883.\n".format
    refused = "1795549245: Client <unknown> disconnected, not authorised.\n"
    named = "1795549245: New client connected from 10.0.0.{} as c (p2, c1, k60).\n".format
    log.write_text(new("1:1") + new("2:2") + refused + named("2:2") + refused
                   + new("3:3") + refused)  # fmt: skip
    events, _ = drain(BrokerLogSource(log, from_start=True))
    assert [(e.kind, e.address) for e in events] == [
        ("auth_failure", ""),  # 1 or 2: unknown
        ("connect", "10.0.0.2:2"),
        ("auth_failure", ""),  # that was 1, already forgotten at the first one
        ("auth_failure", "10.0.0.3:3"),  # the only one again, and sure
    ]


def test_idle_stop_in_a_bytewax_flow(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text(REAL_LOG)
    src = BrokerLogSource(log, from_start=True, idle_stop_s=0.3, poll_s=0.05, batch_size=4)
    out: list[BrokerEvent] = []
    flow = Dataflow("broker_log_test")
    op.output("out", op.input("in", flow, src), TestingSink(out))
    started = time.monotonic()
    run_main(flow)
    assert 0.3 <= time.monotonic() - started < 3
    assert [e.kind for e in out] == ["connect", "disconnect", "auth_failure", "connect",
                                     "acl_denied", "disconnect", "protocol_error", "connect",
                                     "timeout"]  # fmt: skip
    assert (src.stats.lines, src.stats.events) == (REAL_LOG.count("\n"), 9)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BrokerLogSource("x.log", batch_size=0)
    with pytest.raises(ValueError, match="poll_s"):
        BrokerLogSource("x.log", poll_s=0)


# -- broker_sys: folding $SYS values into samples --------------------------------------


def test_sys_samples_rates_from_counter_differences() -> None:
    s = _Sampler()
    updates = [  # (uptime, connected, messages received, bytes received, dropped), at
        ((100, 3, 1000, 50_000, 0), 10.0),
        ((102, 5, 1600, 80_000, 4), 12.3),  # 2 s of broker time, whatever our clock says
        ((103, 5, 1600, 80_000, 4), 13.2),
        ((1, 1, 2, 40, 0), 20.0),  # the broker restarted: no rates
    ]
    names = ("uptime_s", "clients_connected", "messages_received", "bytes_received",
             "publish_dropped")  # fmt: skip
    samples = []
    for values, at in updates:
        for name, v in zip(names, values, strict=True):
            if (done := s.add(name, v, at)) is not None:
                samples.append(done)
    last = s.close()
    assert last is not None
    assert s.close() is None
    samples.append(last)
    assert [x.ts for x in samples] == [10.0, 12.3, 13.2, 20.0]
    assert [x.values for x in samples] == [
        {"clients_connected": 3},
        {"clients_connected": 5, "messages_received_per_s": 300.0,
         "bytes_received_per_s": 15_000.0, "publish_dropped_per_s": 2.0},
        {"clients_connected": 5, "messages_received_per_s": 0.0,
         "bytes_received_per_s": 0.0, "publish_dropped_per_s": 0.0},
        {"clients_connected": 1},
    ]  # fmt: skip


def test_sys_unchanged_topics_keep_their_last_value() -> None:
    s = _Sampler()  # mosquitto publishes only what changed since the last update
    for name, v, at in [("uptime_s", 10, 0.0), ("clients_total", 7, 0.0),
                        ("messages_sent", 40, 0.0), ("uptime_s", 11, 1.0)]:  # fmt: skip
        s.add(name, v, at)
    assert s.close().values == {"clients_total": 7, "messages_sent_per_s": 0.0}  # type: ignore[union-attr]


def test_file_is_not_opened_before_the_first_batch(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_bytes(line(1))
    src = BrokerLogSource(log, from_start=True)
    part = src.build_part("log", "broker-log", None)
    os.unlink(log)  # nothing was opened: the file is simply missing now
    assert part.next_batch() == []
    assert src.stats.files == 0
