"""The smart-meter flow: simulated households through the TFLite LSTM to alerts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from bytewax.testing import run_main

from dataflows.settings import Settings
from dataflows.smart_meter import build_flow, meter_config
from operators.records import Alert
from sources.smart_meter_sim import SmartMeterSimulator

pytestmark = pytest.mark.timeout(60)
HOUSEHOLD_POWER = Path(__file__).resolve().parents[3] / "shared/data/household-power"


def episodes(labels: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of anomalous readings (spikes: each spike)."""
    edges = np.flatnonzero(np.diff(np.r_[0, (labels > 0).astype(int), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def test_alerts_fall_on_the_simulators_injected_anomalies(tmp_path: Path) -> None:
    s = Settings.load(env={}, meter_households=2, meter_duration_s=2 * 86_400, sim_seed=5,
                      alerts_path=str(tmp_path / "alerts.jsonl"), deadletter_path="",
                      metrics_addr="")  # fmt: skip
    alerts: list[Alert] = []
    run_main(build_flow(s, on_alerts=alerts.extend))
    sim = SmartMeterSimulator(meter_config(s))
    t0, step = sim.config.start.timestamp(), sim.config.interval_s
    near, found = 0, 0
    for h in range(2):
        labels = sim.household(h)[1]
        rows = sorted(int(a.ts.timestamp() - t0) // step for a in alerts
                      if a.sensor_id == f"meter-{h}")  # fmt: skip
        flagged = np.zeros(len(labels), dtype=bool)
        flagged[rows] = True
        near += sum(labels[max(0, i - 199) : i + 1].any() for i in rows)  # window holds one
        runs = [(a, b) for a, b in episodes(labels) if b - a > 10]  # hours-long episodes
        found += sum(flagged[a : b + 200].any() for a, b in runs)
        assert runs and all(flagged[a : b + 200].any() for a, b in runs), f"meter-{h}"
    assert near / len(alerts) > 0.7 and found >= 2
    written = [orjson.loads(x) for x in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    assert len(written) == len(alerts) and {a["detector"] for a in written} == {"lstm"}


@pytest.mark.skipif(not HOUSEHOLD_POWER.is_dir(), reason="no household-power data")
def test_household_power_replay_is_read_and_scored(tmp_path: Path) -> None:
    src = next(HOUSEHOLD_POWER.glob("*.csv.gz"))
    head = tmp_path / "head.csv.gz"  # the first 600 minutes, gzip as the original
    import gzip  # noqa: PLC0415

    with gzip.open(src, "rt") as f, gzip.open(head, "wt") as out:
        out.writelines(next(f) for _ in range(601))
    s = Settings.load(env={}, source="household-power", source_path=str(head),
                      alerts_path="", deadletter_path=str(tmp_path / "dead.jsonl"),
                      metrics_addr="")  # fmt: skip
    scored: list[float] = []
    run_main(build_flow(s, on_scored=lambda b: scored.extend(v for _, x in b for v in x.scores)))
    assert len(scored) == 600 and not (tmp_path / "dead.jsonl").exists()
    assert all(v == 0.0 for v in scored[:199]) and 0.0 <= min(scored[199:]) <= max(scored) <= 1.0
