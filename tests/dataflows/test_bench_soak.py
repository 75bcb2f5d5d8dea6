from __future__ import annotations

import orjson
import pytest

from dataflows.bench_soak import ChurnSource, levelled_off, rss_mb
from dataflows.cli import main


def test_soak_prints_a_json_line_with_the_rss_curve(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--soak", "300", "--seconds", "2", "--active", "50", "--idle-timeout",
            "0.5", "--batch-size", "100", "--json"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    result = orjson.loads(lines[0])
    assert set(result) == {
        "soak", "sensors", "sensors_seen", "active", "seconds", "idle_timeout_s", "events",
        "scored", "rss_mb", "rss_start_mb", "rss_peak_mb", "rss_end_mb",
        "last_third_slope_mb_per_min", "levelled_off",
    }  # fmt: skip
    assert result["sensors"] == 300 and 0 < result["sensors_seen"] <= 300
    assert result["scored"] == result["events"] > 0  # every churned reading is scored
    assert len(result["rss_mb"]) >= 2 and all(mb > 0 for _, mb in result["rss_mb"])
    assert isinstance(result["levelled_off"], bool)


def test_churn_source_stops_and_slides_over_every_sensor() -> None:
    src = ChurnSource(sensors=1000, seconds=0.3, active=10, batch_size=50)
    part = src.build_part("in", "churn", None)
    ids: set[str] = set()
    with pytest.raises(StopIteration):
        while True:
            ids.update(orjson.loads(p)["sensor_id"] for _, p, _ in part.next_batch())  # type: ignore[arg-type]
    assert src.events > 0 and src.events % 50 == 0
    assert len(ids) > 10 and src.high_water <= 1000 and rss_mb() > 0


def test_levelled_off_tolerates_a_plateau_not_a_ramp() -> None:
    assert levelled_off([(0.0, 50.0)]) == (True, 0.0)
    assert levelled_off([(t, 200.0 + (t % 2)) for t in range(60)])[0]
    assert not levelled_off([(t, 200.0 + 2 * t) for t in range(60)])[0]
