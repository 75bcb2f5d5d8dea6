from __future__ import annotations

import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

import models.runtime as rt
from models.runtime import (
    ARTIFACTS,
    ModelIntegrityError,
    ModelMetadata,
    RuntimeMissingError,
    TFLiteModel,
    cached_model,
    interpreter_class,
)

NAMES = ("pump_autoencoder", "smart_meter_lstm", "pump_ensemble_ae")


@pytest.mark.parametrize("name", NAMES)
def test_artifact_reproduces_reference_outputs_with_ai_edge_litert(name: str) -> None:
    assert interpreter_class().__module__.startswith("ai_edge_litert")
    model = TFLiteModel.load(ARTIFACTS / f"{name}.tflite")
    ref = np.load(ARTIFACTS / f"{name}_reference.npz")
    got = model.predict(ref["x"])
    assert got.shape == ref["y"].shape
    assert np.abs(got - ref["y"]).max() <= 1e-5
    # state is reset before every window: the same input twice gives the same output
    np.testing.assert_array_equal(model.predict(ref["x"]), got)
    one_by_one = np.concatenate([model.predict(ref["x"][i : i + 1]) for i in range(len(got))])
    np.testing.assert_allclose(one_by_one, got, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_artifact_is_small_builtin_only_and_described(name: str) -> None:
    path = ARTIFACTS / f"{name}.tflite"
    assert path.stat().st_size < 100_000
    ops = TFLiteModel.load(path).op_names()
    assert not [op for op in ops if op.startswith("Flex") or op in {"CUSTOM", "DELEGATE"}]
    meta = ModelMetadata.read(path.with_suffix(".json"))
    assert meta.sha256 == rt.sha256_file(path)
    assert meta.raw["training_data"]["sha256"]
    assert meta.raw["metrics"] and meta.raw["versions"]["tensorflow"]
    assert meta.threshold > 0 and meta.window > 1 and meta.features and meta.inputs


def test_lstm_uses_the_fused_op() -> None:
    ops = TFLiteModel.load(ARTIFACTS / "smart_meter_lstm.tflite").op_names()
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops
    assert "WHILE" not in ops


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    for suffix in (".tflite", ".json"):
        shutil.copy(ARTIFACTS / f"pump_autoencoder{suffix}", tmp_path / f"m{suffix}")
    data = bytearray((tmp_path / "m.tflite").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "m.tflite").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        TFLiteModel.load(tmp_path / "m.tflite")


def _fake_imports(monkeypatch: pytest.MonkeyPatch, available: set[str]) -> list[str]:
    tried: list[str] = []

    def import_module(name: str) -> types.ModuleType:
        tried.append(name)
        if name not in available:
            raise ImportError(name)
        mod = types.ModuleType(name)
        mod.Interpreter = type("Interpreter", (), {"origin": name})  # type: ignore[attr-defined]
        return mod

    monkeypatch.setattr(rt.importlib, "import_module", import_module)
    return tried


def test_interpreter_fallback_order(monkeypatch: pytest.MonkeyPatch) -> None:
    tried = _fake_imports(monkeypatch, {"tflite_runtime.interpreter", "tensorflow.lite"})
    assert interpreter_class().origin == "tflite_runtime.interpreter"  # type: ignore[attr-defined]
    assert tried == ["ai_edge_litert.interpreter", "tflite_runtime.interpreter"]
    tried = _fake_imports(monkeypatch, {"tensorflow.lite"})
    assert interpreter_class().origin == "tensorflow.lite"  # type: ignore[attr-defined]
    assert tried == list(rt.INTERPRETER_MODULES)


def test_no_interpreter_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_imports(monkeypatch, set())
    with pytest.raises(RuntimeMissingError, match="pip install ai-edge-litert"):
        interpreter_class()


def test_cached_model_is_shared_and_thread_count_configurable() -> None:
    a, b = cached_model("pump_autoencoder"), cached_model("pump_autoencoder")
    assert a is b
    assert cached_model("pump_autoencoder", num_threads=2) is not a
    assert pickle.loads(pickle.dumps(a.metadata)) == a.metadata
