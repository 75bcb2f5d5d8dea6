from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from models.lstm import LSTMDetector
from models.runtime import cached_model
from operators.records import Reading, Scored
from operators.tflite_score import autoencoder, lstm
from sources.smart_meter_sim import SmartMeterConfig, SmartMeterSimulator

T0 = datetime(2024, 4, 1, tzinfo=timezone.utc)


def run(readings: list[Reading], which: str) -> dict[str, np.ndarray]:
    flow = Dataflow("t")
    keyed = op.key_on(
        "key", op.input("in", flow, TestingSource(readings, 50)), lambda r: r.sensor_id
    )
    scored = (lstm if which == "lstm" else autoencoder)("score", keyed)
    got: list[tuple[str, Scored]] = []
    op.output("out", scored, TestingSink(got))
    run_main(flow)
    out: dict[str, list[float]] = {}
    for key, s in got:
        assert s.detector == which
        out.setdefault(key, []).extend(s.scores.tolist())
    return {k: np.array(v) for k, v in out.items()}


def test_lstm_operator_scores_each_meter_like_its_own_detector() -> None:
    sim = SmartMeterSimulator(SmartMeterConfig(households=2, duration_s=2 * 86_400, seed=3))
    readings = [
        Reading(p["sensor_id"], T0 + timedelta(seconds=p["ts"] - 1711929600),
                {"power_kw": p["power_kw"]}, "sim")
        for p in sim.payloads()
    ][:1200]  # fmt: skip
    got = run(readings, "lstm")
    for h in range(2):
        power = np.array([r.values["power_kw"] for r in readings if r.sensor_id == f"meter-{h}"])
        want = LSTMDetector(cached_model("smart_meter_lstm")).score_learn_many(power)
        np.testing.assert_allclose(got[f"meter-{h}"], want, atol=1e-6)


def test_autoencoder_operator_flags_a_shaking_pump() -> None:
    rng = np.random.default_rng(1)
    readings = []
    for i in range(600):
        vib = 0.212 + 0.001 * rng.standard_normal() + (0.05 * (-1) ** i if i >= 500 else 0.0)
        values = {"Accelerometer1RMS": vib, "Temperature": 89.5 + 0.01 * i, "Pressure": 0.11}
        readings.append(Reading("pump-1", T0 + timedelta(seconds=i), values, "t"))
    s = run(readings, "autoencoder")["pump-1"]
    assert len(s) == 600
    assert (s[510:] > 0.5).all()
    assert (s[20:500] > 0.5).mean() < 0.2
