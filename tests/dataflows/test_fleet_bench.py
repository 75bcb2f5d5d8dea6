"""``edgewatch fleet bench``: the air-quality and the pump tables, and their JSON."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson

from dataflows import cli
from dataflows.evaluate_skab import SKAB_CHANNELS
from dataflows.fleet_status import fleet_command


def bench(*args: str) -> tuple[list[str], dict[str, object]]:
    out = io.StringIO()
    assert fleet_command(cli._parser().parse_args(["fleet", "bench", *args]), out) == 0
    lines = out.getvalue().splitlines()
    return lines, orjson.loads(lines[-1])


def test_air_quality_bench_scores_joining_sensors_with_and_without_the_prior() -> None:
    lines, result = bench("--sensors", "12", "--days", "1", "--new", "8")
    assert lines[1].startswith("new sensors, first 100 readings, fleet prior")
    prior, none = result["new_with_prior"], result["new_without_prior"]
    assert isinstance(prior, dict) and isinstance(none, dict)
    assert prior["labelled"] == none["labelled"] > 0  # the same readings, twice
    assert prior["recall"] > none["recall"] and prior["episode_recall"] == 1.0
    assert 0 < int(str(result["summary_bytes"])) <= 65_536


def skab_file(path: Path, seed: int, fault: int = 560, rows: int = 700) -> None:
    """A SKAB-shaped file: correlated noise around a pump's own level, a fault at ``fault``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)) @ np.random.default_rng(0).normal(size=(8, 8)) * 0.1
    x += rng.uniform(0, 5, 8)
    x[fault:, 7] -= 3.0  # the flow drops
    head = ";".join(["datetime", *SKAB_CHANNELS, "anomaly", "changepoint"])
    body = [";".join([f"2020-03-09 10:{i // 60:02d}:{i % 60:02d}", *map(str, row),
                      str(float(i >= fault)), "0.0"]) for i, row in enumerate(x)]  # fmt: skip
    path.write_text("\n".join([head, *body]) + "\n")


def test_pump_bench_runs_folds_over_skab_files(tmp_path: Path) -> None:
    for i in range(4):
        skab_file(tmp_path / f"{i}.csv", i)
    lines, result = bench("--flow", "pump", "--skab", str(tmp_path), "--folds", "2",
                          "--nodes", "2")  # fmt: skip
    assert lines[1].startswith("joining pumps, first 100 readings, fleet prior")
    prior, none, warm = result["with"], result["without"], result["warm"]
    assert isinstance(prior, dict) and isinstance(none, dict) and isinstance(warm, dict)
    assert prior["labelled"] == none["labelled"] > 0 and none["recall"] == 0.0
    assert prior["recall"] > 0.5  # a clear fault, caught before the 400-row prefix ends
    assert result["pumps"] == 4 and 0 < int(str(result["fleet_bytes"])) <= 65_536


def test_pump_bench_on_simulated_pumps_scores_joining_pumps_twice() -> None:
    lines, result = bench("--flow", "pump", "--source", "sim", "--sensors", "3", "--new", "2",
                          "--nodes", "2")  # fmt: skip
    assert lines[1].startswith("joining pumps, first 100 readings, fleet prior")
    assert len(lines) == 7  # header, three rows, by kind, sizes, JSON: no "same readings" row
    assert lines[4].startswith("recall by kind, fleet prior: spike")
    prior, none, warm = result["with"], result["without"], result["warm"]
    assert isinstance(prior, dict) and isinstance(none, dict) and isinstance(warm, dict)
    assert prior["labelled"] == none["labelled"] == 24  # 12 % of 2 x 100, the same readings
    assert none["recall"] == none["false_alarm_rate"] == 0.0  # no verdict before the prefix
    assert prior["episodes"] == none["episodes"] > 0 and none["episode_recall"] == 0.0
    by_kind = result["with_by_kind"]
    assert isinstance(by_kind, dict) and set(by_kind) == {"spike", "drift", "cavitation"}
    assert warm["normal"] > 0 and result["source"] == "sim" and result["pumps"] == 5
    assert 0 < int(str(result["fleet_bytes"])) <= 65_536
