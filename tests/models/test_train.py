from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.runtime import TFLiteModel

pytest.importorskip("tf_keras", reason="needs the train extra")
from models.train import SKAB, train_pump, train_smart_meter  # noqa: E402


def reproduces(path: Path) -> TFLiteModel:
    model = TFLiteModel.load(path)
    ref = np.load(path.with_name(path.stem + "_reference.npz"))
    assert np.abs(model.predict(ref["x"]) - ref["y"]).max() <= 1e-5
    return model


@pytest.mark.skipif(not SKAB.is_dir(), reason="needs ../shared/data/skab")
def test_pump_training_smoke(tmp_path: Path) -> None:
    meta = train_pump(tmp_path, epochs=2, valve_dir=None)
    model = reproduces(tmp_path / "pump_autoencoder.tflite")
    assert model.metadata.threshold == meta["threshold"] > 0
    assert model.op_names() == {"FULLY_CONNECTED"}
    assert 0 <= meta["metrics"]["heldout_false_alarm_rate"] <= 0.5


def test_smart_meter_training_smoke(tmp_path: Path) -> None:
    meta = train_smart_meter(tmp_path, households=4, days=2, epochs=1)
    model = reproduces(tmp_path / "smart_meter_lstm.tflite")
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in model.op_names()
    assert set(meta["metrics"]["test"]) == {"accuracy", "tpr", "fpr", "f1"}
    assert model.metadata.input_shape == (1, 200, 1)
