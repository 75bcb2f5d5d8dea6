from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from operators.parse import parse_message
from operators.records import Invalid, Reading
from sources.purpleair import (
    API_KEY_ENV,
    DEFAULT_FIELDS,
    PurpleAirAPIError,
    PurpleAirAPISource,
    PurpleAirSnapshotSource,
    rows_from_response,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SNAPSHOT = DATA / "purpleair" / "data.json"
KEY = "test-read-key"
FIELDS = ["sensor_index", "last_seen", "pm1.0_cf_1"]


def body(stamp: int, *rows: list[Any]) -> dict[str, Any]:
    return {"api_version": "V1.0.12", "time_stamp": stamp + 5, "data_time_stamp": stamp,
            "fields": FIELDS, "data": list(rows)}  # fmt: skip


def error(name: str, description: str) -> dict[str, Any]:
    return {"api_version": "V1.0.12", "time_stamp": 1, "error": name, "description": description}


Reply = tuple[int, dict[str, Any], dict[str, str]]


class FakePurpleAir:
    """A real HTTP server on 127.0.0.1 answering /v1/sensors from a script of replies."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.requests: list[tuple[float, dict[str, str], str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append((time.monotonic(), params, self.headers.get("X-API-Key")))
                headers: dict[str, str] = {}
                if url.path != "/v1/sensors":
                    status, obj, headers = 404, error("NotFoundError", url.path), {}
                elif self.headers.get("X-API-Key") != KEY:
                    status, obj, headers = 403, error("ApiKeyMissingError", "no key"), {}
                elif fake.replies:
                    status, obj, headers = fake.replies.pop(0)
                else:
                    status, obj, headers = 200, body(9_999_999_999), {}
                data = json.dumps(obj).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    servers: list[FakePurpleAir] = []

    def start(*replies: Reply) -> FakePurpleAir:
        fake = FakePurpleAir(list(replies))
        fake.thread.start()
        servers.append(fake)
        return fake

    yield start
    for fake in servers:
        fake.server.shutdown()
        fake.server.server_close()


def api(url: str, **kw: Any) -> PurpleAirAPISource:
    defaults = {"poll_interval_s": 0.05, "backoff_base_s": 0.01, "timeout_s": 5.0}
    return PurpleAirAPISource(base_url=url, allow_fast_poll_for_tests=True, **{**defaults, **kw})


def collect(source: PurpleAirAPISource, resume: int | None = None, timeout: float = 10.0) -> Any:
    """Poll the partition until it ends (max_polls) or the timeout; rows and final snapshot."""
    part = source.build_part("pa", "purpleair-api", resume)
    out: list[tuple[str, dict[str, Any], float]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                out.extend(part.next_batch())
            except StopIteration:
                return out, part.snapshot()
            time.sleep(0.005)
        msg = f"no end within {timeout} s; got {len(out)} rows"
        raise TimeoutError(msg)
    finally:
        part.close()


def test_rows_from_response_zips_and_marks_malformed_rows() -> None:
    resp = body(100, [1, 90, 2.5], [2, None, None], [3, 4])
    assert list(rows_from_response(resp)) == [
        {"sensor_index": 1, "last_seen": 90, "pm1.0_cf_1": 2.5, "data_time_stamp": 100},
        {"sensor_index": 2, "last_seen": None, "pm1.0_cf_1": None, "data_time_stamp": 100},
        {"_malformed_row": [3, 4], "fields": FIELDS},
    ]
    single = {"data_time_stamp": 1, "sensor": {"sensor_index": 9}}
    assert list(rows_from_response(single)) == [single]


@pytest.mark.skipif(not SNAPSHOT.is_file(), reason=f"shared data not present: {SNAPSHOT}")
def test_snapshot_file_yields_every_row_and_resumes() -> None:
    source = PurpleAirSnapshotSource(SNAPSHOT, batch_size=1000)
    (name,) = source.list_parts()
    part = source.build_part("pa", name, None)
    head = [m for _ in range(3) for m in part.next_batch()]
    assert part.snapshot() == 3000
    part = source.build_part("pa", name, part.snapshot())
    tail: list[tuple[str, dict[str, Any], float]] = []
    while True:
        try:
            tail.extend(part.next_batch())
        except StopIteration:
            break
    rows = [row for _, row, _ in head + tail]
    assert len(rows) == 25_552 and part.snapshot() == 25_552
    assert {origin for origin, _, _ in head + tail} == {"purpleair"}
    raw = orjson.loads(SNAPSHOT.read_bytes())
    assert rows[3000] == {
        **dict(zip(raw["fields"], raw["data"][3000], strict=True)),
        "data_time_stamp": 1712793665,
    }
    by_id = {r["sensor_index"]: r for r in rows}
    assert by_id[182] == {
        "sensor_index": 182, "date_created": 1470082168, "rssi": -67, "uptime": 18173,
        "latitude": 49.160076, "longitude": -123.74227, "humidity": 43, "temperature": 63,
        "pressure": 1021.33, "pm1.0": 0.9, "pm2.5_alt": 1.9, "pm10.0": 1.7, "pm1.0_cf_1": 0.9,
        "pm2.5_atm": 1.4, "pm2.5_cf_1": 1.4, "pm10.0_cf_1": 1.7, "data_time_stamp": 1712793665,
    }  # fmt: skip
    assert by_id[53]["humidity"] is None
    parsed = parse_message(*head[1])
    assert isinstance(parsed[0], Reading) and parsed[0].sensor_id == str(rows[1]["sensor_index"])


def test_snapshot_file_passes_malformed_rows_on(tmp_path: Path) -> None:
    path = tmp_path / "resp.json"
    path.write_bytes(orjson.dumps(body(1712000000, [1, 1712000000, 3.0], [2])))
    part = PurpleAirSnapshotSource(path).build_part("pa", f"purpleair:{path}", None)
    (ok, bad) = part.next_batch()
    assert ok[1]["pm1.0_cf_1"] == 3.0
    assert bad[1] == {"_malformed_row": [2], "fields": FIELDS}
    (invalid,) = parse_message(*bad)
    assert isinstance(invalid, Invalid) and invalid.reason == "malformed_row"
    with pytest.raises(FileNotFoundError, match="not found"):
        PurpleAirSnapshotSource(tmp_path / "missing.json")


def test_api_rows_delivered_with_modified_since_fields_and_key(serve: Any) -> None:
    fake = serve(
        (200, body(1712000000, [1, 1711999990, 2.5], [2, 1711999980, None]), {}),
        (200, body(1712000120, [1, 1712000110, 3.5]), {}),
    )
    source = api(fake.url, max_polls=2, bbox=(-125.0, 50.0, -120.0, 45.0), location_type=0)
    out, snapshot = collect(source)
    assert [(o, r["sensor_index"], r["data_time_stamp"]) for o, r, _ in out] == [
        ("purpleair-api", 1, 1712000000),
        ("purpleair-api", 2, 1712000000),
        ("purpleair-api", 1, 1712000120),
    ]
    assert snapshot == 1712000120
    (_, first, key1), (_, second, key2) = fake.requests
    assert key1 == key2 == KEY
    assert "modified_since" not in first and second["modified_since"] == "1712000000"
    assert first["fields"] == ",".join(DEFAULT_FIELDS)
    assert (first["nwlng"], first["selat"], first["location_type"]) == ("-125.0", "45.0", "0")


def test_api_resume_sends_stored_modified_since(serve: Any, tmp_path: Path) -> None:
    fake = serve((200, body(1712000500), {}))
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    source = api(fake.url, max_polls=1, fields=("pm2.5_atm",), api_key_file=key_file)
    out, snapshot = collect(source, resume=1712000400)
    assert out == [] and snapshot == 1712000500
    assert fake.requests[0][1] == {"fields": "pm2.5_atm", "modified_since": "1712000400"}


def test_api_bad_key_is_fatal_and_named(serve: Any) -> None:
    fake = serve((401, error("InvalidApiKeyError", "The API key is invalid."), {}))
    with pytest.raises(PurpleAirAPIError, match="InvalidApiKeyError") as info:
        collect(api(fake.url, max_polls=3))
    assert info.value.status == 401 and not info.value.retryable
    assert "check the API read key" in str(info.value) and "is invalid" in str(info.value)
    assert len(fake.requests) == 1


def test_api_retries_500_then_delivers(serve: Any) -> None:
    fake = serve(
        (500, error("InternalServerError", "oops"), {}),
        (503, {"not": "purpleair"}, {}),
        (200, body(1712000000, [7, 1712000000, 1.0]), {}),
    )
    out, _ = collect(api(fake.url, max_polls=1))
    assert [r["sensor_index"] for _, r, _ in out] == [7]
    assert len(fake.requests) == 3


def test_api_honours_retry_after_on_429(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake = serve(
        (429, error("RateLimitExceededError", "slow down"), {"Retry-After": "1"}),
        (200, body(1712000000, [7, 1712000000, 1.0]), {}),
    )
    out, _ = collect(api(fake.url, max_polls=1))
    assert len(out) == 1
    (t0, _, _), (t1, _, _) = fake.requests
    assert 0.9 <= t1 - t0 < 3.0  # the backoff alone would be ~0.01 s
    (warning,) = [r for r in caplog.records if r.name == "sources.purpleair"]
    assert warning.levelname == "WARNING"
    assert "HTTP 429 RateLimitExceededError: slow down" in warning.getMessage()


def test_api_network_errors_are_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{closed.server_address[1]}"
    closed.server_close()  # nothing listens there any more
    with pytest.raises(TimeoutError):
        collect(api(url, max_polls=1), timeout=0.3)
    retries = [r.getMessage() for r in caplog.records if r.name == "sources.purpleair"]
    assert len(retries) >= 3 and all("network error" in m for m in retries)


def test_api_runs_in_a_bytewax_dataflow(serve: Any) -> None:
    fake = serve(
        (200, body(1712000000, [1, 1712000000, 2.5]), {}),
        (200, body(1712000120, [1, 1712000120, 3.5]), {}),
    )
    out: list[tuple[str, dict[str, Any], float]] = []
    flow = Dataflow("pa_api_test")
    op.output("out", op.input("in", flow, api(fake.url, max_polls=2)), TestingSink(out))
    run_main(flow)
    assert [r["pm1.0_cf_1"] for _, r, _ in out] == [2.5, 3.5]
    readings = [x for m in out for x in parse_message(*m)]
    assert [r.ts.timestamp() for r in readings] == [1712000000, 1712000120]  # type: ignore[union-attr]


def test_api_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=API_KEY_ENV):
        PurpleAirAPISource()
    monkeypatch.setenv(API_KEY_ENV, KEY)
    with pytest.raises(ValueError, match="at least 60"):
        PurpleAirAPISource(poll_interval_s=5)
    assert PurpleAirAPISource().url(None).startswith("https://api.purpleair.com/v1/sensors?fields=")
