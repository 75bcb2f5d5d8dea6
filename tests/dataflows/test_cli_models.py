"""``edgewatch score|bench --detector autoencoder|lstm`` as a user runs them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import orjson
import pytest

from sources.smart_meter_sim import SmartMeterConfig, SmartMeterSimulator
from tests.dataflows.test_cli import DATA, edgewatch, needs_data


@needs_data
def test_score_skab_with_the_autoencoder(tmp_path: Path) -> None:
    src = DATA / "skab" / "valve1" / "0.csv"
    out = tmp_path / "scores.csv"
    done = edgewatch("score", str(src), "--format", "skab", "--detector", "autoencoder",
                     "--calibrate", "400", "-o", str(out))  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(src.read_text().splitlines()) - 1
    scores = np.array([float(r["anomaly_score"]) for r in rows])
    assert (scores[:409] == 0).all() and ((scores >= 0) & (scores <= 1)).all()
    assert "above 0.5" in done.stderr


def test_score_meter_jsonl_with_the_lstm(tmp_path: Path) -> None:
    sim = SmartMeterSimulator(SmartMeterConfig(households=2, duration_s=2 * 86_400, seed=9))
    src = tmp_path / "meters.jsonl"
    src.write_bytes(b"\n".join(
        orjson.dumps({"sensor_id": p["sensor_id"], "ts": p["ts"],
                      "values": {"power_kw": p["power_kw"]}})
        for p in sim.payloads()
    ))  # fmt: skip
    out = tmp_path / "scores.csv"
    edgewatch("score", str(src), "--format", "jsonl", "--detector", "lstm", "-o", str(out))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 5760
    flags = [int(r["is_anomaly"]) for r in rows]
    assert 0 < sum(flags) < len(flags) / 2


@pytest.mark.parametrize("detector", ["lstm", "autoencoder"])
def test_bench_detector_prints_json_last_line(detector: str) -> None:
    done = edgewatch("bench", "--detector", detector, "--events", "3000", "--sensors", "10")
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert result["detector"] == detector
    if detector == "lstm":
        assert result["invoke_us_per_window"] > 0 and result["model_batch"] == 1
    else:
        assert result["batched_speedup"] > 1
