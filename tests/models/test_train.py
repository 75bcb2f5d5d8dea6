from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
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


@pytest.mark.skipif(not SKAB.is_dir(), reason="needs ../shared/data/skab")
@pytest.mark.timeout(120)
def test_retraining_with_feedback_learns_confirmed_false_positives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pump flow's audit log + operators' labels → edgewatch train pump-ensemble-ae."""
    from bytewax.testing import run_main  # noqa: PLC0415

    from dataflows.cli import _parser  # noqa: PLC0415
    from dataflows.pump import build_flow  # noqa: PLC0415
    from dataflows.settings import Settings  # noqa: PLC0415
    from models.train_ensemble import train_ensemble_ae, train_ensemble_command  # noqa: PLC0415

    valve = SKAB / "valve1" / "1.csv"
    audit = tmp_path / "audit.jsonl"
    run_main(
        build_flow(
            Settings.load(
                env={},
                source="skab",
                source_path=(str(valve),),
                alerts_path="",
                audit_path=str(audit),
                metrics_addr="",
            )
        )
    )
    alerts = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    assert len(alerts) > 20 and {a["sensor_id"] for a in alerts} == {"1"}
    labels = [{"alert_id": a["alert_id"], "label": "false_positive"} for a in alerts[3:]]
    labels += [{"alert_id": a["alert_id"], "label": "true_positive"} for a in alerts[:3]]
    labels += [{"alert_id": "f" * 24, "label": "false_positive"}, {"label": "maybe"}]
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_bytes(b"\n".join(orjson.dumps(x) for x in labels))

    argv = ["train", "pump-ensemble-ae", "--epochs", "300", "--out", str(tmp_path / "m"),
            "--prefixes", str(valve), "--feedback", str(audit), str(feedback)]  # fmt: skip
    assert train_ensemble_command(_parser().parse_args(argv)) == 0
    meta = orjson.loads((tmp_path / "m" / "pump_ensemble_ae.json").read_bytes())
    assert meta["feedback"]["records"] == len(labels)
    assert meta["feedback"]["used"] == {"false_positive": len(alerts) - 3, "true_positive": 0}
    assert meta["feedback"]["ignored"] == {"not_in_training_data": 3, "alert_not_found": 1,
                                           "bad_label": 1}  # fmt: skip
    assert meta["metrics"]["feedback_rows"] == 10 * (len(alerts) - 3)
    assert meta["training_data"]["prefix_sensors"] == ["1"] and meta["label_free"]
    model = reproduces(tmp_path / "m" / "pump_ensemble_ae.tflite")
    assert not [op for op in model.op_names() if op.startswith("Flex") or op == "CUSTOM"]
    assert set(model.interpreter.get_signature_list()) == {"infer", "train", "save", "restore"}
    err = capsys.readouterr().err
    assert f"used {len(alerts) - 3} false positive rows" in err and "ignored 5" in err

    # the confirmed-normal rows are reconstructed better than by the same training without them
    without = train_ensemble_ae(None, prefixes=[valve], feedback=[audit, feedback], epochs=300,
                                feedback_weight=0)["metrics"]["feedback_error"]  # fmt: skip
    assert meta["metrics"]["feedback_error"] < 0.8 * without  # 7.3 vs 12.5 here


@pytest.mark.skipif(not SKAB.is_dir(), reason="needs ../shared/data/skab")
@pytest.mark.timeout(120)
def test_tflite_fine_tuning_is_the_numpy_autoencoders_training(tmp_path: Path) -> None:
    """Shipped with its seeded initial weights (0 pretraining steps), the TFLite member
    fine-tuned by the interpreter scores as the numpy autoencoder trained from them."""
    from models.ensemble_ae import TFLiteAutoencoder  # noqa: PLC0415
    from models.pump_detectors import DenseAutoencoder  # noqa: PLC0415
    from models.train_ensemble import train_ensemble_ae  # noqa: PLC0415

    train_ensemble_ae(tmp_path, epochs=0)
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 6))
    z[:, 1] = 0.8 * z[:, 0] + 0.2 * z[:, 1]
    tflite = TFLiteAutoencoder(tmp_path / "pump_ensemble_ae.tflite", steps=600).fit(z)
    dense = DenseAutoencoder(seed=0, epochs=600).fit(z)
    np.testing.assert_allclose(tflite.score_many(z), dense.score_many(z), rtol=1e-3)
    untrained = TFLiteAutoencoder(tmp_path / "pump_ensemble_ae.tflite", steps=0).fit(z)
    assert untrained.score_many(z).mean() > 2 * tflite.score_many(z).mean()
