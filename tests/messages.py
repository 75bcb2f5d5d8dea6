"""Hostile and well-formed MQTT messages, each with the outcome ``parse`` must give.

Every family is a function ``(rng, now) -> Message``; ``rng`` is a ``random.Random``
(hypothesis's ``st.randoms()`` in the parse tests, a seeded one for the MQTT fuzz test),
so the same families drive both. ``expected`` is ``"ok"`` or an ``Invalid`` reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

__all__ = ["BAD", "FAMILIES", "GOOD", "Message", "in_order", "mixed"]

_PRINTABLE = "abcXYZ09_-.:é中文🙂Ωжאבשׁ\u0301ß∑"  # noqa: RUF001 - unicode on purpose
_UNPRINTABLE = "\u200b\u2028\u00ad"  # valid in MQTT topics (mosquitto drops C0/C1 ones)


class Message(NamedTuple):
    """One MQTT message and what parsing it must give."""

    topic: str
    payload: bytes
    expected: str


def _sid(rng: random.Random) -> str:
    return "".join(rng.choice(_PRINTABLE) for _ in range(rng.randint(1, 12)))


def _ts(rng: random.Random, now: float) -> Any:
    secs = now - rng.uniform(0, 30 * 86_400) + rng.choice((0.0, 60.0))  # out of order
    kind = rng.randrange(3)
    if kind == 0:
        return round(secs, rng.randint(0, 3))
    if kind == 1:
        return int(secs * 1000)
    return orjson.Fragment(b'"' + _iso(secs).encode() + b'"')


def _iso(secs: float) -> str:
    from datetime import datetime, timezone  # noqa: PLC0415

    return datetime.fromtimestamp(secs, timezone.utc).isoformat().replace("+00:00", "Z")


def _values(rng: random.Random) -> dict[str, Any]:
    values: dict[str, Any] = {"pm1.0_cf_1": round(rng.uniform(0, 1500), 2)}
    for _ in range(rng.randint(0, 5)):
        values[_sid(rng)] = rng.choice(
            (None, rng.randint(-(10**18), 10**18), rng.uniform(-1e300, 1e300), 5e-324)
        )
    return values


def good_reading(rng: random.Random, now: float) -> Message:
    """A generic reading from a known or unknown unicode-named sensor."""
    sid = rng.choice(("s1", "s2", "温度", "🙂")) if rng.random() < 0.6 else _sid(rng)
    body: dict[str, Any] = {"ts": _ts(rng, now), "values": _values(rng)}
    if rng.random() < 0.5:
        body["sensor_id"] = sid
    return Message(f"sensors/{sid}/readings", orjson.dumps(body), "ok")


def good_purpleair(rng: random.Random, now: float) -> Message:
    """A PurpleAir row with text metadata."""
    idx = rng.randint(1, 10**6)
    row = {"sensor_index": idx, "last_seen": int(now - rng.uniform(0, 86_400)),
           "pm1.0_cf_1": rng.uniform(0, 50), "name": _sid(rng)}  # fmt: skip
    return Message(f"sensors/{idx}/readings", orjson.dumps(row), "ok")


def _body(rng: random.Random, now: float, **changes: Any) -> bytes:
    return orjson.dumps({"ts": _ts(rng, now), "values": _values(rng)} | changes)


def random_bytes(rng: random.Random, now: float) -> Message:
    """Bytes that are not UTF-8, let alone JSON."""
    junk = b"\xff" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2000)))
    return Message(f"sensors/{_sid(rng)}/readings", junk, "malformed_json")


def deep_json(rng: random.Random, now: float) -> Message:
    """Arrays nested past orjson's limit (1024), up to 100,000 levels."""
    n = rng.choice((1025, 5000, 100_000))
    return Message("sensors/deep/readings", b"[" * n + b"]" * n, "malformed_json")


def deep_value(rng: random.Random, now: float) -> Message:
    """A value nested just under orjson's limit."""
    n = rng.randint(300, 1000)
    deep = orjson.Fragment(b"[" * n + b"]" * n)
    return Message("sensors/deep/readings", _body(rng, now, values={"a": deep}),
                   "non_numeric_value")  # fmt: skip


def huge(rng: random.Random, now: float) -> Message:
    """About 1 MB of otherwise valid JSON."""
    pad = "x" * rng.randint(300_000, 1_000_000)
    return Message("sensors/big/readings", _body(rng, now, note=pad), "payload_too_large")


def non_finite(rng: random.Random, now: float) -> Message:
    """NaN, infinities and numbers beyond float range."""
    lit = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1" + b"0" * 400))
    body = _body(rng, now, values={"pm1.0_cf_1": orjson.Fragment(lit)})
    return Message("sensors/nf/readings", body, "non_finite_value")


_WRONG: list[tuple[dict[str, Any], str]] = [
    ({"values": "12"}, "missing_values"),
    ({"values": {}}, "missing_values"),
    ({"values": {"pm": "3"}}, "non_numeric_value"),
    ({"values": {"pm": True}}, "non_numeric_value"),
    ({"values": {"pm": {"x": 1}}}, "non_numeric_value"),
    ({"values": {f"f{i}": i for i in range(100)}}, "too_many_values"),
    ({"ts": [1]}, "bad_timestamp"),
    ({"ts": "yesterday"}, "bad_timestamp"),
    ({"ts": 5}, "bad_timestamp"),
    ({"ts": 1e15}, "bad_timestamp"),  # milliseconds in the year 33658
    ({"ts": None}, "missing_timestamp"),
    ({"sensor_id": ["s"]}, "bad_sensor_id"),
    ({"sensor_id": True}, "bad_sensor_id"),
    ({"sensor_id": "wt\x07"}, "bad_sensor_id"),
    ({"sensor_id": "other"}, "sensor_id_mismatch"),
]


def wrong_types(rng: random.Random, now: float) -> Message:
    """Fields of the wrong type or out of range."""
    change, reason = rng.choice(_WRONG)
    return Message("sensors/wt/readings", _body(rng, now, **change), reason)


def not_a_reading(rng: random.Random, now: float) -> Message:
    """Valid JSON that is no reading at all."""
    payload, reason = rng.choice(
        ((b"42", "not_an_object"), (b'"hi"', "not_an_object"), (b"null", "not_an_object"),
         (b"[]", "not_an_object"), (b'{"foo": 1}', "unknown_format"))
    )  # fmt: skip
    return Message(f"sensors/{_sid(rng)}/readings", payload, reason)


def future(rng: random.Random, now: float) -> Message:
    """Event times from one hour to ten years ahead."""
    ts = now + rng.uniform(3600, 10 * 365 * 86_400)
    return Message("sensors/ft/readings", _body(rng, now, ts=ts), "future_timestamp")


def bad_topic_id(rng: random.Random, now: float) -> Message:
    """A topic naming an unprintable or overlong sensor id."""
    sid = _sid(rng) + rng.choice(_UNPRINTABLE) if rng.random() < 0.5 else "L" * 200
    return Message(f"sensors/{sid}/readings", _body(rng, now), "bad_sensor_id")


GOOD: list[Callable[[random.Random, float], Message]] = [good_reading, good_purpleair]
BAD: list[Callable[[random.Random, float], Message]] = [
    random_bytes, deep_json, deep_value, huge, non_finite, wrong_types, not_a_reading,
    future, bad_topic_id,
]  # fmt: skip
FAMILIES = GOOD + BAD


def mixed(seed: int, n: int, now: float, bad_share: float = 0.3) -> list[Message]:
    """``n`` messages, about ``bad_share`` of them bad, the same for the same seed."""
    rng = random.Random(seed)
    return [rng.choice(BAD if rng.random() < bad_share else GOOD)(rng, now) for _ in range(n)]


def in_order(messages: list[Message], now: float) -> list[Message]:
    """The same messages, each good one not later than its sensor's last made stale.

    A flow with the order guard (``reject_stale``) refuses a reading whose event time is
    not after its sensor's last accepted one: ``duplicate_reading`` for the same time,
    ``out_of_order`` for an earlier one. This tells which, in publishing order.
    """
    from operators.parse import parse_message  # noqa: PLC0415
    from operators.records import Reading  # noqa: PLC0415

    last: dict[str, Any] = {}
    out: list[Message] = []
    for m in messages:
        reading = parse_message(m.topic, m.payload, now)[0] if m.expected == "ok" else None
        if not isinstance(reading, Reading):
            out.append(m)
            continue
        prev = last.get(reading.sensor_id)
        if prev is not None and reading.ts <= prev:
            reason = "duplicate_reading" if reading.ts == prev else "out_of_order"
            out.append(m._replace(expected=reason))
        else:
            last[reading.sensor_id] = reading.ts
            out.append(m)
    return out
