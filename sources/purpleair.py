"""PurpleAir ``GET /v1/sensors``: a saved response file, and a live API poller.

Both sources yield one message per data row, ``(origin, row, received_at)``, where ``row``
is :func:`rows_from_response`'s dict: the response's ``fields`` zipped with the row, plus
the response's ``data_time_stamp``. A row whose length does not match ``fields`` becomes
``{"_malformed_row": row, "fields": fields}`` so that ``parse`` dead-letters it.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_FIELDS",
    "PurpleAirAPIError",
    "PurpleAirAPISource",
    "PurpleAirSnapshotSource",
    "rows_from_response",
]

logger = logging.getLogger(__name__)

API_KEY_ENV = "EDGEWATCH_PURPLEAIR_API_KEY"
"""Environment variable holding the API read key when no key file is given."""
DEFAULT_FIELDS = ("sensor_index", "date_created", "rssi", "uptime", "latitude", "longitude",
                  "humidity", "temperature", "pressure", "pm1.0", "pm2.5_alt", "pm10.0",
                  "pm1.0_cf_1", "pm2.5_atm", "pm2.5_cf_1", "pm10.0_cf_1")  # fmt: skip
"""The fields of the shipped April 2024 snapshot."""
MIN_POLL_INTERVAL_S = 60.0

PAMessage = tuple[str, dict[str, Any], float]
_IDLE_WAKE = timedelta(seconds=0.25)  # how soon to look at the queue again when it was empty


def rows_from_response(obj: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One dict per data row of a ``/v1/sensors`` response.

    Anything without list ``fields`` and ``data`` (an error body, a single-sensor
    response) is yielded unchanged, for ``parse`` to read or dead-letter.

    >>> resp = {"data_time_stamp": 5, "fields": ["sensor_index", "pm1.0_cf_1"],
    ...         "data": [[1, 2.0], [2, None], [3]]}
    >>> for row in rows_from_response(resp):
    ...     print(row)
    {'sensor_index': 1, 'pm1.0_cf_1': 2.0, 'data_time_stamp': 5}
    {'sensor_index': 2, 'pm1.0_cf_1': None, 'data_time_stamp': 5}
    {'_malformed_row': [3], 'fields': ['sensor_index', 'pm1.0_cf_1']}
    """
    fields, data = obj.get("fields"), obj.get("data")
    if not isinstance(fields, list) or not isinstance(data, list):
        yield dict(obj)
        return
    stamp = obj.get("data_time_stamp")
    for row in data:
        if isinstance(row, list) and len(row) == len(fields):
            out = dict(zip(fields, row, strict=True))
            out.setdefault("data_time_stamp", stamp)
            yield out
        else:
            yield {"_malformed_row": row, "fields": fields}


class _SnapshotPartition(StatefulSourcePartition[PAMessage, int]):
    def __init__(self, path: Path, batch_size: int, start: int) -> None:
        self._path, self._batch_size, self._next = path, batch_size, start
        self._rows: list[dict[str, Any]] | None = None

    def _load(self) -> list[dict[str, Any]]:
        try:
            obj = orjson.loads(self._path.read_bytes())
        except orjson.JSONDecodeError as exc:
            msg = f"{self._path} is not JSON: {exc}"
            raise ValueError(msg) from exc
        if not isinstance(obj, dict):
            msg = f"{self._path} is not a PurpleAir /v1/sensors response (not an object)"
            raise ValueError(msg)
        return list(rows_from_response(obj))

    def next_batch(self) -> list[PAMessage]:
        if self._rows is None:
            self._rows = self._load()
        if self._next >= len(self._rows):
            raise StopIteration
        now = time.time()
        hi = min(self._next + self._batch_size, len(self._rows))
        batch = [("purpleair", row, now) for row in self._rows[self._next : hi]]
        self._next = hi
        return batch

    def snapshot(self) -> int:
        return self._next


class PurpleAirSnapshotSource(FixedPartitionedSource[PAMessage, int]):
    """Replay a saved ``/v1/sensors`` response file: ``("purpleair", row, received_at)``.

    The file is one JSON document, read whole on the first batch (not at construction).
    Parallelism: one partition. Delivery: exactly-once with recovery — the snapshot is
    the index of the next row, and a resume continues from it.

    Args:
        path: The response file.
        batch_size: Most rows per batch.
    """

    def __init__(self, path: str | Path, batch_size: int = 1000) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        if not self.path.is_file():
            msg = f"PurpleAir snapshot file not found: {self.path}"
            raise FileNotFoundError(msg)

    def list_parts(self) -> list[str]:
        """The one partition, named after the file."""
        return [f"purpleair:{self.path}"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _SnapshotPartition:
        """Build the partition, resuming at row ``resume_state``."""
        return _SnapshotPartition(self.path, self.batch_size, resume_state or 0)


class PurpleAirAPIError(RuntimeError):
    """A failed PurpleAir API request.

    Attributes:
        status: HTTP status, or ``None`` for a network error or an unreadable body.
        error: PurpleAir's error name (``InvalidApiKeyError`` …), or the HTTP reason.
        description: PurpleAir's description of the error.
        retry_after: Seconds the server asked to wait (``Retry-After``), if any.
    """

    def __init__(
        self,
        status: int | None,
        error: str,
        description: str = "",
        retry_after: float | None = None,
    ) -> None:
        hint = f" — check the API read key ({API_KEY_ENV} or the key file)"
        hint = hint if status in (401, 403) else ""
        super().__init__(f"PurpleAir API HTTP {status or '-'} {error}: {description}{hint}")
        self.status, self.error, self.description = status, error, description
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether retrying may help: network errors, 429 and 5xx."""
        return self.status is None or self.status == 429 or self.status >= 500


def _http_error(err: urllib.error.HTTPError) -> PurpleAirAPIError:
    try:
        body = orjson.loads(err.read())
    except (orjson.JSONDecodeError, OSError):
        body = None
    body = body if isinstance(body, dict) else {}
    retry_after = err.headers.get("Retry-After") if err.headers else None
    try:
        wait = max(float(retry_after), 0.0) if retry_after else None
    except ValueError:  # an HTTP date: fall back to the backoff
        wait = None
    error, description = str(body.get("error") or err.reason), str(body.get("description", ""))
    return PurpleAirAPIError(err.code, error, description, wait)


def _fetch(url: str, key: str, timeout: float) -> dict[str, Any]:
    headers = {"X-API-Key": key, "Accept": "application/json", "User-Agent": "edgewatch"}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as r:
            obj = orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        raise _http_error(err) from None
    except OSError as err:  # URLError, timeouts, resets
        raise PurpleAirAPIError(None, "network error", str(err)) from err
    except orjson.JSONDecodeError as err:
        raise PurpleAirAPIError(None, "response is not JSON", str(err)) from err
    if not isinstance(obj, dict):
        raise PurpleAirAPIError(None, "response is not a JSON object")
    return obj


_Poll = tuple[list[dict[str, Any]], int | None]  # the rows of one response, its data_time_stamp


class _APIPartition(StatefulSourcePartition[PAMessage, int | None]):
    def __init__(self, source: PurpleAirAPISource, since: int | None) -> None:
        self._src, self._since = source, since
        self._queue: queue.Queue[_Poll | BaseException] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polls = 0
        self._idle = False

    def _put(self, item: _Poll | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
            except queue.Full:
                continue
            return

    def _run(self, key: str, since: int | None) -> None:
        src, rng = self._src, random.Random()
        attempt, polls, next_poll = 0, 0, time.monotonic()
        while src.max_polls is None or polls < src.max_polls:
            if self._stop.wait(max(next_poll - time.monotonic(), 0.0)):
                return
            started = time.monotonic()
            try:
                obj = _fetch(src.url(since), key, src.timeout_s)
            except PurpleAirAPIError as exc:
                if not exc.retryable:  # hand it to next_batch, which raises it
                    logger.error("%s; polling stopped", exc)
                    self._put(exc)
                    return
                attempt += 1
                backoff = min(src.backoff_cap_s, src.backoff_base_s * 2 ** (attempt - 1))
                wait = exc.retry_after
                delay = min(
                    backoff * (0.5 + rng.random() / 2) if wait is None else wait, src.backoff_cap_s
                )
                logger.warning("%s; retry %d in %.1f s", exc, attempt, delay)
                next_poll = time.monotonic() + delay
                continue
            attempt, polls = 0, polls + 1
            stamp = obj.get("data_time_stamp")
            stamp = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None
            self._put((list(rows_from_response(obj)), stamp))
            since = stamp if stamp is not None else since
            next_poll = started + src.poll_interval_s

    def next_batch(self) -> list[PAMessage]:
        """All rows of the next response, or ``[]`` if none has arrived."""
        if self._thread is None:
            key = self._src.read_key()
            self._thread = threading.Thread(
                target=self._run, args=(key, self._since), name="purpleair-api", daemon=True
            )
            self._thread.start()
        try:
            got = self._queue.get_nowait()
        except queue.Empty:
            if self._src.max_polls is not None and self._polls >= self._src.max_polls:
                raise StopIteration from None
            self._idle = True
            return []
        if isinstance(got, BaseException):
            self._stop.set()
            raise got
        rows, stamp = got
        self._polls, self._idle = self._polls + 1, False
        self._since = stamp if stamp is not None else self._since
        now = time.time()
        return [("purpleair-api", row, now) for row in rows]

    def next_awake(self) -> datetime | None:
        return datetime.now(timezone.utc) + _IDLE_WAKE if self._idle else None

    def snapshot(self) -> int | None:
        return self._since

    def close(self) -> None:
        self._stop.set()


@dataclass(frozen=True, kw_only=True)
class PurpleAirAPISource(FixedPartitionedSource[PAMessage, int | None]):
    """Poll ``GET {base_url}/v1/sensors``: ``("purpleair-api", row, received_at)``.

    A daemon thread, started on the first batch, polls every ``poll_interval_s`` with
    ``modified_since`` set to the previous response's ``data_time_stamp`` (so only
    updated sensors come back) and fills a bounded queue that ``next_batch`` drains
    without blocking, one response per batch. HTTP 429, 5xx and network errors are
    retried with capped exponential backoff and jitter (``Retry-After`` is honoured);
    401/403 and other 4xx stop polling and ``next_batch`` raises
    :class:`PurpleAirAPIError`.

    Parallelism: one partition. Delivery: at-least-once — the snapshot is the
    ``data_time_stamp`` of the last response whose rows were all emitted, so a resume
    polls again from there and may repeat rows.

    Attributes:
        base_url: API root.
        api_key_file: File holding the read key; without it the key comes from the
            environment variable ``api_key_env``.
        api_key_env: Environment variable holding the read key.
        fields: Fields to request.
        location_type: ``0`` outside, ``1`` inside; ``None`` both.
        bbox: ``(nwlng, nwlat, selng, selat)`` bounding box, or ``None``.
        max_age: Only sensors seen in the last ``max_age`` seconds.
        poll_interval_s: Seconds between polls (at least 60).
        timeout_s: HTTP timeout.
        backoff_base_s: First retry delay (before jitter).
        backoff_cap_s: Longest retry delay.
        max_polls: Stop after this many successful polls (``None``: never).
        allow_fast_poll_for_tests: Allow ``poll_interval_s`` below 60 (tests only).
    """

    base_url: str = "https://api.purpleair.com"
    api_key_file: str | Path | None = None
    api_key_env: str = API_KEY_ENV
    fields: tuple[str, ...] = DEFAULT_FIELDS
    location_type: int | None = None
    bbox: tuple[float, float, float, float] | None = None
    max_age: int | None = None
    poll_interval_s: float = 120.0
    timeout_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    max_polls: int | None = None
    allow_fast_poll_for_tests: bool = False

    def __post_init__(self) -> None:
        problems = [
            (self.base_url.startswith(("http://", "https://")), "base_url must be http(s)"),
            (
                self.poll_interval_s >= MIN_POLL_INTERVAL_S or self.allow_fast_poll_for_tests,
                f"poll_interval_s must be at least {MIN_POLL_INTERVAL_S:g} s",
            ),
            (
                self.api_key_file is not None or bool(os.environ.get(self.api_key_env)),
                f"the PurpleAir API needs a read key: set {self.api_key_env} or api_key_file",
            ),
        ]
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)

    def read_key(self) -> str:
        """The API read key, from the key file if one is given, else the environment."""
        if self.api_key_file is not None:
            key = Path(self.api_key_file).read_text(encoding="utf-8").strip()
            where = f"key file {self.api_key_file}"
        else:
            key, where = os.environ.get(self.api_key_env, "").strip(), self.api_key_env
        if not key:
            msg = f"the PurpleAir API read key is empty ({where})"
            raise ValueError(msg)
        return key

    def url(self, modified_since: int | None) -> str:
        """The request URL for one poll."""
        corners = zip(("nwlng", "nwlat", "selng", "selat"), self.bbox or (), strict=False)
        params = {
            "fields": ",".join(self.fields),
            "location_type": self.location_type,
            **dict(corners),
            "max_age": self.max_age,
            "modified_since": modified_since,
        }
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.base_url.rstrip('/')}/v1/sensors?{query}"

    def list_parts(self) -> list[str]:
        """The one partition."""
        return ["purpleair-api"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _APIPartition:
        """Build the partition, resuming from the stored ``modified_since``."""
        return _APIPartition(self, resume_state)
