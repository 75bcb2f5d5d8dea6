from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from operators.records import Alert, alert_id
from sinks.audit import AuditSink

T0 = datetime(2024, 4, 1, tzinfo=timezone.utc)


def alerts(n: int, detector: str = "hst") -> list[Alert]:
    out = []
    for i in range(n):
        ts = T0 + timedelta(seconds=i)
        out.append(Alert(alert_id("f", f"s{i % 7}", detector, ts), f"s{i % 7}", "f", detector,
                         0.9, 0.7, ts, ts, {"pm": float(i)}, votes={detector: 0.9}))  # fmt: skip
    return out


def run(items: list[Any], sink: AuditSink, batch_size: int = 10) -> None:
    flow = Dataflow("audit_test")
    op.output("audit", op.input("in", flow, TestingSource(items, batch_size=batch_size)), sink)
    run_main(flow)


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_lines_hold_the_alert_and_its_audit_fields(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "audit.jsonl"
    items = alerts(3) + alerts(1, "lstm")
    sink = AuditSink(target, delivered_to=["mqtt", "jsonl"], model_versions={"hst": "hst-1"})
    run(items, sink)
    got = lines(target)
    assert [g["alert_id"] for g in got] == [a.alert_id for a in items]
    first = got[0]
    assert (first["score"], first["threshold"], first["votes"]) == (0.9, 0.7, {"hst": 0.9})
    assert first["model_version"] == "hst-1" and got[-1]["model_version"] is None
    assert first["delivered_to"] == ["mqtt", "jsonl"]
    assert datetime.fromisoformat(first["audited_at"]).tzinfo is not None
    assert {k: v for k, v in first.items() if k not in ("model_version", "delivered_to",
            "audited_at")} == orjson.loads(items[0].to_json())  # fmt: skip


def test_a_model_version_on_the_alert_wins(tmp_path: Path) -> None:
    class Versioned:
        detector = "ae"
        model_version = "ae-7"

        def to_dict(self) -> dict[str, Any]:
            return {"alert_id": "x"}

    target = tmp_path / "audit.jsonl"
    run([Versioned()], AuditSink(target, delivered_to=[], model_versions={"ae": "ae-1"}))
    assert lines(target)[0]["model_version"] == "ae-7"


def test_rotation_at_the_size_limit_keeps_n_backups_and_loses_nothing(tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    items = alerts(500)
    sink = AuditSink(target, delivered_to=["mqtt"], max_bytes=4000, backups=3)
    run(items[:200], sink, batch_size=7)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    files = [target, *(tmp_path / f"audit.jsonl.{i}" for i in (1, 2, 3))]
    assert all(p.stat().st_size <= 4000 for p in files)
    longest = max(len(line) + 1 for p in files for line in p.read_bytes().splitlines())
    assert all(p.stat().st_size > 4000 - longest for p in files[1:])  # full before rotating
    # the newest lines are in audit.jsonl, the oldest kept in .3, in order, none missing
    kept = [g["alert_id"] for p in reversed(files) for g in lines(p)]
    assert kept == [a.alert_id for a in items[200 - len(kept) : 200]]
    # with enough backups nothing is lost across rotations (and appends resume the size)
    big = tmp_path / "big" / "audit.jsonl"
    sink = AuditSink(big, delivered_to=["mqtt"], max_bytes=4000, backups=100)
    run(items[:250], sink, batch_size=7)
    run(items[250:], sink, batch_size=64)
    backups = sorted(big.parent.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    every = [*backups, big]
    assert len(backups) > 10
    assert [g["alert_id"] for p in every for g in lines(p)] == [a.alert_id for a in items]
    assert all(p.stat().st_size <= 4000 for p in every)


def test_a_line_longer_than_the_limit_gets_a_file_of_its_own(tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    run(alerts(3), AuditSink(target, delivered_to=[], max_bytes=10, backups=5))
    assert [len(lines(p)) for p in sorted(tmp_path.iterdir())] == [1, 1, 1]


def test_files_are_private(tmp_path: Path) -> None:
    target = tmp_path / "logs" / "audit.jsonl"
    target.parent.mkdir()
    target.write_bytes(b"")
    target.chmod(0o644)  # an existing, too-open file is tightened
    run(alerts(60), AuditSink(target, delivered_to=[], max_bytes=2000, backups=2))
    files = list(target.parent.iterdir())
    assert len(files) == 3
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
    fresh = tmp_path / "fresh" / "audit.jsonl"
    run(alerts(1), AuditSink(fresh, delivered_to=[]))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="backups"):
        AuditSink("a.jsonl", delivered_to=[], backups=0)
