"""Turn one raw message (or a batch) into :class:`Reading` records or :class:`Invalid` ones.

Plain functions, no Bytewax: the operators built on them are in :mod:`operators.parse`.

Accepted payloads (bytes holding JSON, or an already-decoded mapping):

* a generic reading ``{"sensor_id": "a1", "ts": "2024-04-01T00:00:00Z", "values": {...}}``
  (``ts`` may be ISO-8601 or epoch seconds / milliseconds);
* a PurpleAir sensor row: the ``/v1/sensors`` ``fields`` zipped with one ``data`` row
  (``sensor_index`` is the id, ``last_seen`` or ``data_time_stamp`` the event time);
* a whole PurpleAir ``/v1/sensors`` response (``fields`` + ``data``): one reading per row;
* PurpleAir single-sensor JSON ``{"data_time_stamp": ..., "sensor": {...}}``;
* a JSON array of any of the above.

Values keep their JSON number type (an ``int`` stays an ``int``); ``null`` is ``None``.

Everything else becomes an :class:`Invalid` with one reason from :data:`REASONS`; nothing
raises. For an MQTT topic ``.../sensors/<id>/readings`` the topic names the sensor, and a
payload that names another sensor is refused (``sensor_id_mismatch``).

>>> from operators.records import Reading
>>> r = parse_message("t", b'{"sensor_id": "a1", "ts": 1711929600, "values": {"pm": 3}}', 0.0)
>>> [(x.sensor_id, x.ts.isoformat(), x.values) for x in r]
[('a1', '2024-04-01T00:00:00+00:00', {'pm': 3})]
>>> [x.reason for x in parse_message("t", b'{"sensor_id": "a1"', 0.0)]
['malformed_json']
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from operators.records import Invalid, RawMessage, Reading

__all__ = [
    "DUPLICATE_READING",
    "OUT_OF_ORDER",
    "RATE_LIMITED",
    "REASONS",
    "ParseLimits",
    "parse_many",
    "parse_message",
    "topic_sensor",
]

PAYLOAD_TOO_LARGE = "payload_too_large"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_FORMAT = "unknown_format"
MISSING_SENSOR_ID = "missing_sensor_id"
BAD_SENSOR_ID = "bad_sensor_id"
SENSOR_ID_MISMATCH = "sensor_id_mismatch"
MISSING_TIMESTAMP = "missing_timestamp"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
MISSING_VALUES = "missing_values"
TOO_MANY_VALUES = "too_many_values"
NON_NUMERIC_VALUE = "non_numeric_value"
NON_FINITE_VALUE = "non_finite_value"
MALFORMED_ROW = "malformed_row"
RATE_LIMITED = "rate_limited"  # given by operators.limits, after parsing
DUPLICATE_READING = "duplicate_reading"  # given by operators.impute's order guard
OUT_OF_ORDER = "out_of_order"  # likewise
REASONS = (
    PAYLOAD_TOO_LARGE,
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    UNKNOWN_FORMAT,
    MISSING_SENSOR_ID,
    BAD_SENSOR_ID,
    SENSOR_ID_MISMATCH,
    MISSING_TIMESTAMP,
    BAD_TIMESTAMP,
    FUTURE_TIMESTAMP,
    MISSING_VALUES,
    TOO_MANY_VALUES,
    NON_NUMERIC_VALUE,
    NON_FINITE_VALUE,
    MALFORMED_ROW,
    RATE_LIMITED,
    DUPLICATE_READING,
    OUT_OF_ORDER,
)
"""Every reason an :class:`Invalid` can carry (a fixed set: it is a metric label)."""

# PurpleAir row keys that are identity, time or text metadata rather than measurements.
_PA_META = frozenset(
    {"sensor_index", "last_seen", "data_time_stamp", "time_stamp", "date_created",
     "last_modified", "name", "model", "hardware", "firmware_version", "firmware_upgrade",
     "private", "location_type", "led_brightness", "channel_state", "channel_flags",
     "channel_flags_manual", "channel_flags_auto", "confidence", "confidence_manual",
     "confidence_auto", "latitude", "longitude", "altitude", "position_rating",
     "icon", "primary_id_a", "primary_key_a", "secondary_id_a", "secondary_key_a",
     "primary_id_b", "primary_key_b", "secondary_id_b", "secondary_key_b"}
)  # fmt: skip
_EPOCH_MS_CUTOFF = 1e11  # epoch numbers above this are milliseconds
_MIN_TS = datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()
_MAX_TS = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()
_BAD_ID_CHARS = frozenset("/+#\x00")
_UTC = timezone.utc
_NUMBER_TYPES = frozenset({int, float})
_CACHE_SIZE = 65_536
_SID_CACHE: dict[str | int, str] = {}  # raw id -> validated id (valid ids only)
_SHORT = reprlib.Repr()  # bounded depth and length: safe for any decoded JSON
_SHORT.maxstring = _SHORT.maxother = 40
_UNSEEN: Any = object()
_TS_CACHE: list[tuple[Any, float, datetime]] = [(None, 0.0, datetime(2000, 1, 1, tzinfo=_UTC))]


@dataclass(frozen=True)
class ParseLimits:
    """Limits that protect the flow from hostile or broken input.

    Attributes:
        max_payload_bytes: Larger byte payloads are refused before decoding.
        max_values: Most measurement fields one reading may carry.
        max_future_s: How far past its receive time an event time may lie.
        max_sensor_id_len: Longest accepted sensor id.
        max_array_items: Most readings one JSON array or PurpleAir response may carry.
    """

    max_payload_bytes: int = 256 * 1024
    max_values: int = 64
    max_future_s: float = 300.0
    max_sensor_id_len: int = 128
    max_array_items: int = 100_000


DEFAULT_LIMITS = ParseLimits()


class _Bad(Exception):
    """Internal: carries a reason and detail out of the nested checks."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_message(
    origin: str,
    payload: bytes | Mapping[str, Any],
    received_at: float,
    limits: ParseLimits = DEFAULT_LIMITS,
) -> list[Reading | Invalid]:
    """Parse one raw message into readings and invalid records (never raises)."""
    raw: bytes | dict[str, Any]
    if isinstance(payload, (bytes, bytearray, memoryview)):
        raw = payload if type(payload) is bytes else bytes(payload)
        if len(raw) > limits.max_payload_bytes:
            detail = f"{len(raw)} bytes > limit {limits.max_payload_bytes}"
            return [Invalid(PAYLOAD_TOO_LARGE, detail, raw, origin, received_at)]
        try:
            obj: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return [Invalid(_json_reason(raw), str(exc), raw, origin, received_at)]
    else:
        raw = obj = payload if isinstance(payload, dict) else dict(payload)
    topic_id = topic_sensor(origin) if origin.endswith("/readings") else None
    if type(obj) is list:
        if not obj or len(obj) > limits.max_array_items:  # nothing vanishes without a trace
            reason, detail = (
                (PAYLOAD_TOO_LARGE, f"{len(obj)} items > limit {limits.max_array_items}")
                if obj
                else (NOT_AN_OBJECT, "empty JSON array: no reading")
            )
            return [Invalid(reason, detail, raw, origin, received_at)]
        return [_one(item, _Item(item, raw), origin, received_at, topic_id, limits) for item in obj]
    if type(obj) is dict and "fields" in obj and "data" in obj:
        return _response(obj, raw, origin, received_at, topic_id, limits)
    return [_one(obj, raw, origin, received_at, topic_id, limits, raw is not obj)]


def parse_many(
    batch: list[RawMessage], limits: ParseLimits = DEFAULT_LIMITS
) -> list[Reading | Invalid]:
    """Parse a batch of raw messages: :func:`parse_message` over each, in order.

    The common case, bytes holding one JSON object that is a reading, takes one Python
    call instead of four; anything else goes through :func:`parse_message`.
    """
    out: list[Reading | Invalid] = []
    append, loads, most = out.append, orjson.loads, limits.max_payload_bytes
    topics: dict[str, str | None] = {}
    for origin, payload, received_at in batch:
        if type(payload) is bytes and len(payload) <= most:
            try:
                obj = loads(payload)
            except orjson.JSONDecodeError:
                obj = None
            if type(obj) is dict and "fields" not in obj:
                topic_id = topics.get(origin, _UNSEEN)
                if topic_id is _UNSEEN:
                    topic_id = topics[origin] = topic_sensor(origin)
                append(_one(obj, payload, origin, received_at, topic_id, limits, True))
                continue
        out.extend(parse_message(origin, payload, received_at, limits))
    return out


def _one(
    obj: Any,
    raw: Any,
    origin: str,
    received_at: float,
    topic_id: str | None,
    limits: ParseLimits,
    owned: bool = False,
) -> Reading | Invalid:
    """One reading from one object; ``owned``: parse decoded it and may change it."""
    try:
        if type(obj) is not dict:
            detail = f"top-level JSON is {type(obj).__name__}, expected an object"
            raise _Bad(NOT_AN_OBJECT, detail)
        if "values" in obj or "sensor_id" in obj:
            sid = _sensor_id(obj.get("sensor_id"), topic_id, limits)
            ts = _timestamp(obj.get("ts"), received_at, limits)
            values = _values(obj.get("values"), limits)
        elif "sensor_index" in obj:
            sid = _sensor_id(obj["sensor_index"], topic_id, limits)
            stamp = obj.get("last_seen") or obj.get("data_time_stamp") or obj.get("time_stamp")
            ts = _timestamp(stamp, received_at, limits)
            values = _values(obj, limits, _PA_META, owned)
        elif isinstance(obj.get("sensor"), dict):  # single-sensor JSON
            row = {**obj["sensor"], "data_time_stamp": obj.get("data_time_stamp")}
            return _one(row, raw, origin, received_at, topic_id, limits, owned=True)
        elif "_malformed_row" in obj:
            raise _Bad(MALFORMED_ROW, "PurpleAir data row does not match its fields")
        else:
            detail = "expected a sensor_id/values reading or a PurpleAir sensor object"
            raise _Bad(UNKNOWN_FORMAT, detail)
    except _Bad as bad:
        payload = raw.payload() if type(raw) is _Item else raw
        return Invalid(bad.reason, bad.detail, payload, origin, received_at)
    return Reading(sid, ts, values, origin, (), received_at)


class _Item:
    """One item of a JSON array, for its dead letter: the item's JSON, else the array's."""

    __slots__ = ("item", "whole")

    def __init__(self, item: Any, whole: bytes | dict[str, Any]) -> None:
        self.item, self.whole = item, whole

    def payload(self) -> bytes | dict[str, Any]:
        try:
            return orjson.dumps(self.item, default=repr)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
            return self.whole


def _response(
    obj: dict[str, Any],
    whole: bytes | dict[str, Any],
    origin: str,
    received_at: float,
    topic_id: str | None,
    limits: ParseLimits,
) -> list[Reading | Invalid]:
    fields, data = obj["fields"], obj["data"]
    if not isinstance(fields, list) or not isinstance(data, list):
        detail = "fields and data must be lists"
        return [Invalid(UNKNOWN_FORMAT, detail, whole, origin, received_at)]
    if len(data) > limits.max_array_items:
        detail = f"{len(data)} rows > limit {limits.max_array_items}"
        return [Invalid(PAYLOAD_TOO_LARGE, detail, whole, origin, received_at)]
    stamp = obj.get("data_time_stamp")
    out: list[Reading | Invalid] = []
    for row in data:
        if not isinstance(row, list) or len(row) != len(fields):
            row_obj: dict[str, Any] = {"_malformed_row": row, "fields": fields}
        else:
            row_obj = dict(zip(fields, row, strict=True))
            row_obj.setdefault("data_time_stamp", stamp)
        out.append(_one(row_obj, _Item(row_obj, whole), origin, received_at, topic_id, limits))
    return out


def _sensor_id(value: Any, topic_id: str | None, limits: ParseLimits) -> str:
    sid = _SID_CACHE.get(value) if type(value) in (str, int) else None
    if sid is not None:
        if topic_id is not None and sid != topic_id:
            msg = f"payload names {sid!r}, topic names {topic_id!r}"
            raise _Bad(SENSOR_ID_MISMATCH, msg)
        return sid
    if value is None:  # the topic's id is checked like a payload's
        if topic_id is None:
            raise _Bad(MISSING_SENSOR_ID, "no sensor_id in the payload or the topic")
        value = topic_id
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(BAD_SENSOR_ID, f"sensor id must be a string, got {type(value).__name__}")
    sid = str(value)
    if not sid or len(sid) > limits.max_sensor_id_len or not sid.isprintable():
        raise _Bad(BAD_SENSOR_ID, f"sensor id {sid[:40]!r} is empty, too long or unprintable")
    if not _BAD_ID_CHARS.isdisjoint(sid):
        raise _Bad(BAD_SENSOR_ID, f"sensor id {sid[:40]!r} contains / + # or NUL")
    if topic_id is not None and sid != topic_id:
        raise _Bad(SENSOR_ID_MISMATCH, f"payload names {sid!r}, topic names {topic_id!r}")
    if len(_SID_CACHE) >= _CACHE_SIZE:
        _SID_CACHE.clear()
    _SID_CACHE[value] = sid
    return sid


def _timestamp(value: Any, received_at: float, limits: ParseLimits) -> datetime:
    last_value, secs, dt = _TS_CACHE[0]  # fleets share clock ticks: reuse the datetime
    if not (value == last_value and type(value) is type(last_value)):
        secs = _epoch_seconds(value)
        dt = datetime.fromtimestamp(secs, _UTC)
        if type(value) is not str:  # equal strings may still spell different offsets
            _TS_CACHE[0] = (value, secs, dt)
    if received_at and secs > received_at + limits.max_future_s:
        ahead = secs - received_at
        raise _Bad(FUTURE_TIMESTAMP, f"event time is {ahead:.0f} s after receive time")
    return dt


def _epoch_seconds(value: Any) -> float:
    """Epoch seconds of an ISO-8601 string or an epoch number (seconds or milliseconds)."""
    if value is None:
        raise _Bad(MISSING_TIMESTAMP, "no event time (ts, last_seen or data_time_stamp)")
    if type(value) is int or type(value) is float:
        secs = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(secs):
            raise _Bad(BAD_TIMESTAMP, f"timestamp {value!r} is not finite")
        if secs > _EPOCH_MS_CUTOFF:
            secs /= 1000.0
    elif isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            raise _Bad(BAD_TIMESTAMP, f"{value[:40]!r} is not ISO-8601") from None
        secs = (dt if dt.tzinfo else dt.replace(tzinfo=_UTC)).timestamp()
    else:
        raise _Bad(BAD_TIMESTAMP, f"timestamp of type {type(value).__name__}")
    if not _MIN_TS <= secs <= _MAX_TS:
        raise _Bad(BAD_TIMESTAMP, f"timestamp {str(value)[:40]} is outside 2000..9999")
    return secs


def _values(
    value: Any, limits: ParseLimits, skip: frozenset[str] = frozenset(), owned: bool = False
) -> dict[str, float | None]:
    """Numeric fields of ``value`` (``None`` kept), leaving out the ``skip`` keys.

    With ``owned`` the ``skip`` keys are deleted from ``value`` itself instead of copying.
    """
    if type(value) is not dict:
        raise _Bad(MISSING_VALUES, "values must be a non-empty object of numbers")
    vals = value
    if skip:
        vals = value if owned else dict(value)
        for key in skip.intersection(vals):
            del vals[key]
    if not vals:
        raise _Bad(MISSING_VALUES, "values must be a non-empty object of numbers")
    if len(vals) > limits.max_values:
        raise _Bad(TOO_MANY_VALUES, f"{len(vals)} fields > limit {limits.max_values}")
    numbers = vals.values()
    try:  # fast path, all in C: only ints and finite floats
        if _NUMBER_TYPES.issuperset(map(type, numbers)) and all(map(math.isfinite, numbers)):
            return vals
    except OverflowError:  # an int beyond float range
        pass
    return _checked(vals)


def _checked(vals: dict[Any, Any]) -> dict[str, float | None]:
    """The slow path: find the first bad value and say what is wrong with it."""
    out: dict[str, float | None] = {}
    for key, v in vals.items():
        if type(key) is not str:
            raise _Bad(NON_NUMERIC_VALUE, f"field name {str(key)[:40]!r} is not a string")
        if v is None:
            out[key] = None
        elif type(v) is float or type(v) is int:
            try:
                f = float(v)
            except OverflowError:
                f = math.inf
            if not math.isfinite(f):
                raise _Bad(NON_FINITE_VALUE, f"{key[:40]}={str(v)[:40]} is not finite")
            out[key] = v
        else:
            raise _Bad(NON_NUMERIC_VALUE, f"{key[:40]}={_SHORT.repr(v)} is not a number")
    return out


def topic_sensor(origin: str) -> str | None:
    """``.../sensors/<id>/readings`` names the sensor; anything else names none."""
    if origin.endswith("/readings"):
        parts = origin.split("/")
        if len(parts) >= 3 and parts[-3] == "sensors" and parts[-2]:
            return parts[-2]
    return None


def _json_reason(raw: bytes) -> str:
    """Tell NaN/Infinity literals and out-of-range numbers from plain garbage."""
    try:
        json.loads(raw, parse_constant=_reject_constant, parse_float=_finite, parse_int=_finite)
    except _Bad:
        return NON_FINITE_VALUE
    except (ValueError, RecursionError):
        return MALFORMED_JSON
    return MALFORMED_JSON


def _reject_constant(name: str) -> float:
    raise _Bad(NON_FINITE_VALUE, name)


def _finite(text: str) -> float:
    """A JSON number's value as a float; one beyond float range (``1e999``) is refused."""
    value = float(text)
    if not math.isfinite(value):
        raise _Bad(NON_FINITE_VALUE, text[:40])
    return value
