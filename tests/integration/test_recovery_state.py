"""How big the recovery state is: bytes per sensor and snapshot time for 10,000 sensors.

The figures are printed (``pytest -s``) and quoted in the README; the assertions only
bound the size, never the time, so a slow machine cannot fail the test.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflows.air_quality import build_flow
from dataflows.runner import recovery_config
from dataflows.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SENSORS = 10_000


def test_state_of_10000_sensors_is_small(tmp_path: Path) -> None:
    """Two readings per sensor, with recovery and without (one epoch: one snapshot)."""
    rec = tmp_path / "recovery"
    settings = Settings.load(env={}, source="simulator", sim_sensors=SENSORS, sim_interval_s=120,
                             sim_duration_s=240, alerts_path="", deadletter_path="",
                             metrics_addr="", recovery_dir=str(rec))  # fmt: skip
    t0 = time.perf_counter()
    run_main(build_flow(settings), epoch_interval=timedelta(hours=1))
    plain = time.perf_counter() - t0
    config = recovery_config(settings)
    t0 = time.perf_counter()
    run_main(build_flow(settings), epoch_interval=timedelta(hours=1), recovery_config=config)
    wall = time.perf_counter() - t0
    empty = tmp_path / "empty"
    recovery_config(Settings.load(env={}, recovery_dir=str(empty)))
    size = sum(p.stat().st_size for p in rec.iterdir())
    base = sum(p.stat().st_size for p in empty.iterdir())
    per_sensor = (size - base) / SENSORS
    sys.stderr.write(f"recovery state: {per_sensor:,.0f} bytes per sensor, "
                     f"{(size - base) / 1e6:.1f} MB for {SENSORS:,} sensors; "
                     f"one snapshot of them ~{wall - plain:.2f} s (flow {wall:.1f} s with "
                     f"recovery, {plain:.1f} s without)\n")  # fmt: skip
    assert per_sensor < 20_000
