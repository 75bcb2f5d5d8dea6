"""Federated averaging of the pump autoencoder: scaler, order independence, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from models import federated
from models.autoencoder import pump_features
from models.runtime import TFLiteModel

pytest.importorskip("tf_keras", reason="needs the train extra")
from models.train import SKAB, read_skab  # noqa: E402

VALVE = SKAB / "valve1"
pytestmark = pytest.mark.skipif(not VALVE.is_dir(), reason="needs ../shared/data/skab")


def files(n: int = 4) -> list[Path]:
    return sorted(VALVE.glob("*.csv"), key=lambda p: int(p.stem))[:n]


def test_nodes_split_the_files_and_the_scaler_is_the_pooled_one() -> None:
    nodes = federated.node_data(files(5), 2)
    assert [n.files for n in nodes] == [("0.csv", "2.csv", "4.csv"), ("1.csv", "3.csv")]
    pooled = []
    for path in files(5):
        feats = pump_features(read_skab(path)[0][:400])
        feats = feats[~np.isnan(feats).any(axis=1)]
        pooled.append(feats[: int(round(len(feats) * 0.85))])
    union = np.concatenate(pooled)
    mean, scale = federated.scaler(nodes)
    np.testing.assert_allclose(mean, union.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(scale, union.std(axis=0), rtol=1e-9)
    reversed_mean, _ = federated.scaler(nodes[::-1])
    np.testing.assert_allclose(reversed_mean, mean, rtol=1e-12)


def test_averaging_weighs_by_count_in_any_order() -> None:
    rng = np.random.default_rng(0)
    updates = [([rng.normal(size=(4, 8)), rng.normal(size=8)], n) for n in (300, 100, 600)]
    whole = federated.average(updates)
    np.testing.assert_allclose(whole[1], sum(w[1] * n for w, n in updates) / 1000, rtol=1e-6)
    for order in ([2, 0, 1], [1, 2, 0]):
        for a, b in zip(federated.average([updates[i] for i in order]), whole, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(120)
def test_training_does_not_depend_on_the_order_nodes_report_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kwargs = {"nodes": 2, "rounds": 2, "local_epochs": 1, "export": False}
    forward = federated.train_federated(tmp_path, files(), **kwargs)  # type: ignore[arg-type]
    split = federated.node_data
    monkeypatch.setattr(federated, "node_data", lambda *a, **k: split(*a, **k)[::-1])
    backward = federated.train_federated(tmp_path, files(), **kwargs)  # type: ignore[arg-type]
    for a, b in zip(forward["weights"], backward["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # the weights are the same; the threshold is the 95th percentile of a merged KLL sketch,
    # whose compactions draw random bits: it agrees within the sketch's rank error (1.3 %
    # of ranks, a few % of value this far in the tail), not bit for bit
    assert forward["threshold"] == pytest.approx(backward["threshold"], rel=0.1)
    assert forward["metrics"]["threshold_rank_error"] < 0.02
    losses = forward["metrics"]["train_mse_by_round"]
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.timeout(120)
def test_edgewatch_train_federated_exports_a_tflite_model(tmp_path: Path) -> None:
    from dataflows import cli  # noqa: PLC0415

    args = ["train", "pump-autoencoder", "--federated", "--nodes", "3", "--rounds", "1",
            "--epochs", "1", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(args) == 0
    path = tmp_path / f"{federated.NAME}.tflite"
    model = TFLiteModel.load(path)
    ref = np.load(tmp_path / f"{federated.NAME}_reference.npz")
    assert np.abs(model.predict(ref["x"]) - ref["y"]).max() <= 1e-5
    assert model.op_names() == {"FULLY_CONNECTED"}
    meta = orjson.loads(path.with_suffix(".json").read_bytes())
    assert meta["threshold"] > 0 and meta["federated"]["rounds"] == 1
    assert sum(n["rows"] for n in meta["federated"]["nodes"].values()) > 3000
    assert len(meta["training_data"]["files"]) == 16
