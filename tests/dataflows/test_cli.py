"""The edgewatch command as a user runs it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared data not found at {DATA}")


def edgewatch(
    *args: str, cwd: Path = ROOT, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataflows.cli", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=300,
        check=check,
        env={**os.environ, **(env or {})},
    )


def test_run_defaults_print_alerts_and_summary(tmp_path: Path) -> None:
    out = edgewatch(
        "run",
        "--sensors",
        "10",
        "--duration",
        "12h",
        "--alerts",
        str(tmp_path / "a.jsonl"),
        cwd=tmp_path,
    ).stdout
    assert "Summary" in out and "precision" in out and "events/s" in out
    assert "events      3,600  (3,600 scored, 0 invalid)" in out
    alerts = (tmp_path / "a.jsonl").read_bytes().splitlines()
    assert f"alerts      {len(alerts):,}" in out
    assert not (tmp_path / "deadletter.jsonl").exists()


def test_config_error_exits_2_with_a_reason() -> None:
    done = edgewatch("run", "--source", "jsonl", check=False)
    assert done.returncode == 2 and "needs source_path" in done.stderr


def test_score_nab_one_row_per_input_row(tmp_path: Path) -> None:
    src = tmp_path / "nab.csv"
    rows = [f"2014-04-01 00:{i // 60:02d}:{i % 60:02d},{10 + (i % 5)}" for i in range(600)]
    rows[400] = rows[400].rsplit(",", 1)[0] + ",500"
    rows[10] = rows[10].rsplit(",", 1)[0] + ",oops"
    src.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    out = tmp_path / "scores.csv"
    edgewatch("score", str(src), "--format", "nab", "--detector", "hst", "-o", str(out))
    got = list(csv.DictReader(out.open()))
    assert len(got) == 600 and list(got[0]) == ["timestamp", "anomaly_score", "is_anomaly"]
    assert got[10]["anomaly_score"] == ""  # the bad row keeps its place
    assert got[400]["is_anomaly"] == "1" and float(got[400]["anomaly_score"]) > 0.7
    scores = [float(r["anomaly_score"]) for r in got if r["anomaly_score"]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert got[0]["timestamp"] == "2014-04-01T00:00:00+00:00"


@needs_data
def test_score_skab_ignores_labels(tmp_path: Path) -> None:
    src = DATA / "skab" / "valve1" / "1.csv"
    out = tmp_path / "skab.csv"
    edgewatch("score", str(src), "--format", "skab", "-o", str(out))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == sum(1 for _ in src.open()) - 1
    done = edgewatch(
        "score", str(src), "--format", "skab", "--features", "anomaly", "-o", str(out), check=False
    )
    assert done.returncode == 2 and "not in the input" in done.stderr


@needs_data
def test_score_purpleair_snapshot_fleet_mode(tmp_path: Path) -> None:
    out = tmp_path / "pa.csv"
    done = edgewatch(
        "score",
        str(DATA / "purpleair" / "data.json"),
        "--format",
        "purpleair",
        "--mode",
        "fleet",
        "-o",
        str(out),
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 25_552
    flagged = sum(r["is_anomaly"] == "1" for r in rows)
    assert 0 < flagged < len(rows) * 0.2
    assert "25,552 rows" in done.stderr


def test_bench_prints_json_last_line() -> None:
    done = edgewatch("bench", "--events", "3000", "--sensors", "10", "--baseline")
    last = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert last["events"] == 3000 and last["events_per_s"] > 0
    assert last["alerts_match"] is True and last["speedup"] > 0
    assert set(last["stages_us_per_event"]) >= {"parse", "impute", "score", "bytewax+sinks"}


def test_help_teaches() -> None:
    out = edgewatch("--help").stdout
    assert "edgewatch run" in out and "examples" in out
    assert "--format" in edgewatch("score", "--help").stdout


def test_bad_purpleair_key_stops_with_a_clear_message() -> None:
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = orjson.dumps(
                {
                    "api_version": "V1.0.11",
                    "time_stamp": 1,
                    "error": "InvalidApiKeyError",
                    "description": "The key was not valid.",
                }
            )
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "EDGEWATCH_PURPLEAIR_API_KEY": "wrong",
            "EDGEWATCH_PURPLEAIR_API_URL": f"http://127.0.0.1:{server.server_port}",
        }
        done = edgewatch("run", "--source", "purpleair-api", check=False, env=env)
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert "the flow stopped: PurpleAirAPIError" in done.stderr
    assert "InvalidApiKeyError" in done.stderr and "check the API read key" in done.stderr


def test_ctrl_c_inside_a_step_counts_as_an_interrupt_not_an_error() -> None:
    from bytewax.errors import BytewaxRuntimeError  # noqa: PLC0415

    from dataflows.runner import _interrupt  # noqa: PLC0415

    def wrapped(cause: BaseException) -> BytewaxRuntimeError:
        msg = "in step x"
        try:
            raise BytewaxRuntimeError(msg) from cause
        except BytewaxRuntimeError as exc:
            return exc

    assert _interrupt(wrapped(KeyboardInterrupt()))
    assert not _interrupt(wrapped(ValueError("bad")))
