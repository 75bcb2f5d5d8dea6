"""The records that flow between edgewatch operators.

Sources yield raw messages (:data:`RawMessage`); the ``parse`` operator turns them into
:class:`Reading` records or :class:`Invalid` ones; scoring produces :class:`Scored`
records and ``to_alert`` turns exceedances into :class:`Alert` records. All records are
frozen, slotted dataclasses with tz-aware UTC datetimes.

>>> from datetime import datetime, timezone
>>> r = Reading("42", datetime(2024, 4, 1, tzinfo=timezone.utc), {"pm1.0_cf_1": 3.5}, "sim")
>>> r.sensor_id, r.values["pm1.0_cf_1"], r.imputed
('42', 3.5, ())
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "ALERT_SCHEMA_VERSION",
    "Alert",
    "Invalid",
    "RawMessage",
    "Reading",
    "Scored",
    "alert_id",
]

RawMessage = tuple[str, bytes | dict[str, Any], float]
"""What every source yields: ``(origin, payload, received_at)``.

``origin`` is where the message came from (an MQTT topic such as
``sensors/<id>/readings``, ``purpleair``, or ``path:line`` for files); ``payload`` is the
undecoded bytes or an already-decoded mapping; ``received_at`` is the receive time in
seconds since the epoch.
"""

ALERT_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor's measurements at one event time.

    Attributes:
        sensor_id: The sensor's id (always a ``str``; PurpleAir indexes are converted).
        ts: Event time, tz-aware UTC.
        values: Field name to value; ``None`` marks a missing value.
        source: Where the reading came from (the raw message's origin).
        imputed: Names of the fields the ``impute`` operator filled in.
        received_at: Receive time in seconds since the epoch (for lag metrics).
    """

    sensor_id: str
    ts: datetime
    values: dict[str, float | None]
    source: str
    imputed: tuple[str, ...] = ()
    received_at: float = 0.0


def _fast_reading_init() -> Any:
    """A ``Reading.__init__`` that writes the slots directly (2x faster than ``frozen``'s).

    A frozen dataclass's generated ``__init__`` goes through ``object.__setattr__`` per
    field; this one calls the slot descriptors, which is what that ends up doing. The
    record stays frozen: assignment after construction still raises.
    """
    setters = [getattr(Reading, f).__set__ for f in Reading.__slots__]
    set_sid, set_ts, set_values, set_source, set_imputed, set_received = setters

    def __init__(  # noqa: N807 - installed as Reading.__init__
        self: Reading,
        sensor_id: str,
        ts: datetime,
        values: dict[str, float | None],
        source: str,
        imputed: tuple[str, ...] = (),
        received_at: float = 0.0,
    ) -> None:
        set_sid(self, sensor_id)
        set_ts(self, ts)
        set_values(self, values)
        set_source(self, source)
        set_imputed(self, imputed)
        set_received(self, received_at)

    return __init__


Reading.__init__ = _fast_reading_init()  # type: ignore[method-assign]


@dataclass(frozen=True, slots=True, eq=False)
class Scored:
    """One detector's scores for a run of one key's readings, in order (a batch record).

    Scoring is vectorised per batch, so a :class:`Scored` carries the whole batch: the
    readings, a ``float64`` array of scores and, once the ``threshold`` operator has run,
    the per-reading thresholds and a boolean ``flags`` array (``score > threshold``).

    Attributes:
        readings: The scored readings, all of one key, in arrival order.
        detector: Detector name, e.g. ``"hst"``.
        scores: Anomaly scores, one per reading; for HST in ``[0, 1]``, higher is worse.
        thresholds: Per-reading thresholds (``None`` before thresholding).
        flags: Per-reading anomaly decisions (``None`` before thresholding).
    """

    readings: tuple[Reading, ...]
    detector: str
    scores: npt.NDArray[np.float64]
    thresholds: npt.NDArray[np.float64] | None = None
    flags: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.readings)

    def rows(self) -> Iterator[tuple[Reading, float, bool]]:
        """``(reading, score, is_anomaly)`` per reading (``False`` before thresholding)."""
        flags = self.flags.tolist() if self.flags is not None else [False] * len(self)
        return zip(self.readings, self.scores.tolist(), flags, strict=True)


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that could not become a :class:`Reading`.

    Attributes:
        reason: A short fixed reason code (a metric label), e.g. ``"malformed_json"``.
        detail: A human-readable explanation.
        payload: The original payload (possibly truncated for very large ones).
        origin: Where the message came from.
        received_at: Receive time in seconds since the epoch.
    """

    reason: str
    detail: str
    payload: bytes | dict[str, Any]
    origin: str = ""
    received_at: float = 0.0

    def to_json(self, flow: str, max_payload: int = 4096) -> bytes:
        """Serialise for the dead-letter stream (the payload is kept, truncated if huge).

        ``payload`` is the text; when the bytes are not UTF-8, ``payload_base64`` holds
        them exactly.

        >>> Invalid("malformed_json", "line 1", b"{oops", "t").to_json("air_quality")
        b'{"flow":"air_quality","reason":"malformed_json","detail":"line 1","origin":"t",\
"received_at":0.0,"payload":"{oops","payload_bytes":5,"truncated":false}'
        """
        raw = self.payload if isinstance(self.payload, bytes) else _dumps_lenient(self.payload)
        head = raw[:max_payload]
        record = {
            "flow": flow,
            "reason": self.reason,
            "detail": self.detail,
            "origin": self.origin,
            "received_at": self.received_at,
            "payload": head.decode("utf-8", errors="replace"),
            "payload_bytes": len(raw),
            "truncated": len(raw) > max_payload,
        }
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:  # keep the exact bytes too (a cut may split a character)
            record["payload_base64"] = base64.b64encode(head).decode("ascii")
        return orjson.dumps(record)


@dataclass(frozen=True, slots=True)
class Alert:
    """An anomaly alert (JSON schema version 1).

    Attributes:
        alert_id: Deterministic id from flow, sensor, detector and event time, so a replay
            after a crash produces the same id and consumers can dedupe on it.
        sensor_id: The sensor that alerted.
        flow: The dataflow that produced it, e.g. ``"air_quality"``.
        detector: The deciding detector (``"hst"``, or ``"ensemble"`` for votes).
        score: The anomaly score.
        threshold: The threshold the score exceeded.
        ts: Event time of the reading.
        detected_at: Wall-clock time the alert was made.
        values: The reading's values (after imputation).
        votes: Per-detector scores that took part in the decision (an ensemble gives each
            detector's ``{"score", "threshold", "vote"}``).
        severity: ``"warning"`` or ``"critical"``.
        imputed: Fields of the reading that were imputed.
        kind: ``"anomaly"`` (a sensor's readings) or ``"security"`` (a device's behaviour,
            :mod:`dataflows.security`).
        details: What else explains the alert (security: the reason, and each driving
            feature's value, baseline median and scale); in the JSON only when non-empty.
    """

    alert_id: str
    sensor_id: str
    flow: str
    detector: str
    score: float
    threshold: float
    ts: datetime
    detected_at: datetime
    values: dict[str, float | None]
    votes: dict[str, Any] = field(default_factory=dict)
    severity: str = "warning"
    imputed: tuple[str, ...] = ()
    kind: str = "anomaly"
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The alert as a JSON-ready mapping (schema version 1)."""
        doc: dict[str, Any] = {
            "schema": ALERT_SCHEMA_VERSION,
            "kind": self.kind,
            "alert_id": self.alert_id,
            "sensor_id": self.sensor_id,
            "flow": self.flow,
            "detector": self.detector,
            "score": self.score,
            "threshold": self.threshold,
            "ts": self.ts.isoformat(),
            "detected_at": self.detected_at.isoformat(),
            "values": self.values,
            "votes": self.votes,
            "severity": self.severity,
            "imputed": list(self.imputed),
        }
        if self.details:
            doc["details"] = self.details
        return doc

    def to_json(self) -> bytes:
        """Serialise with orjson (one line, no trailing newline)."""
        return orjson.dumps(self.to_dict())


def alert_id(flow: str, sensor_id: str, detector: str, ts: datetime) -> str:
    """Deterministic alert id: the same inputs always give the same 24-hex-digit id.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2024, 4, 1, 12, tzinfo=timezone.utc)
    >>> alert_id("air_quality", "7", "hst", t) == alert_id("air_quality", "7", "hst", t)
    True
    >>> len(alert_id("air_quality", "7", "hst", t))
    24
    """
    key = f"{flow}\x1f{sensor_id}\x1f{detector}\x1f{ts.isoformat()}".encode()
    return hashlib.blake2b(key, digest_size=12).hexdigest()


def _dumps_lenient(obj: dict[str, Any]) -> bytes:
    """JSON for a payload mapping that may hold NaN or odd types (dead-letter only)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS, default=repr)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return repr(obj).encode("utf-8", errors="replace")
    except RecursionError:  # nested deeper than repr goes: keep what identifies it
        return f"<payload nested too deeply to print; keys {list(obj)[:20]!r}>".encode()
