from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.autoencoder import AutoencoderDetector, pump_features
from models.lstm import LSTMDetector
from models.runtime import cached_model
from models.train import SKAB, meter_windows, read_skab
from sources.smart_meter_sim import SmartMeterConfig, SmartMeterSimulator

pytestmark = pytest.mark.skipif(not SKAB.is_dir(), reason="needs ../shared/data/skab")


@pytest.fixture(scope="module")
def pump_raw() -> np.ndarray:
    raw, _ = read_skab(SKAB / "anomaly-free" / "anomaly-free.csv")
    return raw[-1500:]


def test_pump_features_match_a_direct_computation(pump_raw: np.ndarray) -> None:
    f = pump_features(pump_raw, window=10, slope_window=5)
    i = 100
    vib = pump_raw[i - 9 : i + 1, 0]
    slope = np.polyfit(np.arange(5), pump_raw[i - 4 : i + 1, 2], 1)[0]
    expect = [vib.mean(), vib.std(ddof=1), abs(pump_raw[i, 1] - pump_raw[i - 1, 1]), slope]
    np.testing.assert_allclose(f[i], expect, rtol=1e-9, atol=1e-12)
    assert np.isnan(f[:9, :2]).all() and not np.isnan(f[9:]).any()


def test_autoencoder_flags_injected_vibration_fault(pump_raw: np.ndarray) -> None:
    det = AutoencoderDetector(cached_model("pump_autoencoder"))
    raw = pump_raw.copy()
    raw[1000:1050, 0] += np.tile([0.05, -0.05], 25)  # the pump starts to shake
    s = det.score_learn_many(raw)
    assert (s[:9] == 0).all() and ((s >= 0) & (s <= 1)).all()
    assert (s[20:1000] > 0.5).mean() < 0.15  # about the 5 % the threshold allows
    assert (s[1010:1050] > 0.5).all()


def test_autoencoder_batches_and_pickle_round_trip(pump_raw: np.ndarray) -> None:
    model = cached_model("pump_autoencoder")
    whole = AutoencoderDetector(model, calibrate=200).score_learn_many(pump_raw)
    det = AutoencoderDetector(model, calibrate=200)
    parts = [det.score_learn_many(pump_raw[:150])]
    blob = pickle.dumps(det)
    det = pickle.loads(blob)
    parts += [det.score_learn_many(pump_raw[i : i + 97]) for i in range(150, 1500, 97)]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-6, atol=1e-7)
    assert (whole[:209] == 0).all()
    done = AutoencoderDetector(model)
    done.score_learn_many(pump_raw[:50])
    assert len(pickle.dumps(done)) < 1000


@pytest.fixture(scope="module")
def household() -> tuple[np.ndarray, np.ndarray]:
    cfg = SmartMeterConfig(households=1, duration_s=3 * 86_400, seed=99)
    return SmartMeterSimulator(cfg).household(0)


def test_lstm_scores_labelled_anomalies_above_normal_windows(
    household: tuple[np.ndarray, np.ndarray],
) -> None:
    power, labels = household
    det = LSTMDetector(cached_model("smart_meter_lstm"))
    s = det.score_learn_many(power)
    assert (s[:199] == 0).all()
    _, y = meter_windows(power, labels, 200, 1)
    window_scores = s[199:]  # the window ending at reading i + 199 starts at i
    anomalous, normal = window_scores[y == 1], window_scores[y == 0]
    assert anomalous.size > 100 and normal.size > 1000
    assert (anomalous > 0.5).mean() > 0.7
    assert (normal > 0.5).mean() < 0.2


def test_lstm_batches_and_pickle_round_trip(household: tuple[np.ndarray, np.ndarray]) -> None:
    power = household[0][:700]
    model = cached_model("smart_meter_lstm")
    whole = LSTMDetector(model).score_learn_many(power)
    det = LSTMDetector(model)
    parts = [det.score_learn_many(power[:120])]
    det = pickle.loads(pickle.dumps(det))
    parts += [det.score_learn_many(power[i : i + 61]) for i in range(120, 700, 61)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    assert len(pickle.dumps(det)) < 2500
