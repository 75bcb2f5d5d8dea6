"""``edgewatch evaluate --dataset skab`` and ``score --detector ensemble`` as a user runs them."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from dataflows.evaluate_skab import read_skab_file
from models.runtime import ARTIFACTS, ModelMetadata
from tests.dataflows.test_cli import DATA, edgewatch, needs_data


@needs_data
def test_evaluate_prints_a_table_and_figures_computed_from_the_labels(tmp_path: Path) -> None:
    for name in ("0.csv", "1.csv"):
        shutil.copy(DATA / "skab" / "valve1" / name, tmp_path / name)
    done = edgewatch("evaluate", "--dataset", "skab", str(tmp_path), "--train-rows", "400")
    lines = done.stdout.strip().splitlines()
    report = orjson.loads(lines[-1])
    assert "2-of-3 *" in done.stdout and "[2/2]" in done.stderr
    labels = np.concatenate([read_skab_file(tmp_path / n)[1][400:] for n in ("0.csv", "1.csv")])
    assert report["scored_rows"] == len(labels)
    assert set(report["results"]) == {"hst", "mahalanobis", "autoencoder",
                                      "1-of-3", "2-of-3", "3-of-3"}  # fmt: skip
    for r in report["results"].values():
        assert r["tp"] + r["fn"] == labels.sum() and r["fp"] + r["tn"] == (~labels).sum()
        assert abs(r["f1"] - 2 * r["tp"] / (2 * r["tp"] + r["fp"] + r["fn"])) < 1e-4
        assert abs(r["far"] - 100 * r["fp"] / (r["fp"] + r["tn"])) < 0.01
        assert abs(r["mar"] - 100 * r["fn"] / (r["fn"] + r["tp"])) < 0.01
    votes = [report["results"][f"{k}-of-3"]["tp"] for k in (1, 2, 3)]
    assert votes == sorted(votes, reverse=True)
    assert "Temperature" not in report["channels"] and report["state_bytes_per_sensor"] > 0


@needs_data
def test_evaluate_plot_writes_one_png_per_file(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    shutil.copy(DATA / "skab" / "valve1" / "3.csv", tmp_path / "3.csv")
    done = edgewatch("evaluate", "--dataset", "skab", str(tmp_path), "--plot",
                     str(tmp_path / "plots"))  # fmt: skip
    assert orjson.loads(done.stdout.strip().splitlines()[-1])["files"] == 1
    png = (tmp_path / "plots" / "3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # four panels drawn


def test_score_ensemble_on_a_univariate_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(10.0, 1.0, 800)
    values[600:650] += 8.0
    src = tmp_path / "series.csv"
    src.write_text(
        "timestamp,value\n"
        + "".join(f"2024-01-01T00:{i // 60:02d}:{i % 60:02d},{v}\n" for i, v in enumerate(values))
    )
    out = tmp_path / "scores.csv"
    done = edgewatch("score", str(src), "--format", "nab", "--detector", "ensemble",
                     "--train-rows", "300", "-o", str(out))  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    flags = np.array([int(r["is_anomaly"]) for r in rows])
    assert len(rows) == 800 and not flags[:300].any() and flags[615:650].all()
    assert "value" in done.stderr


@needs_data
def test_evaluate_with_the_tflite_member_and_adaptive_thresholds(tmp_path: Path) -> None:
    shutil.copy(DATA / "skab" / "valve1" / "1.csv", tmp_path / "1.csv")
    runs = {}
    for extra in ([], ["--autoencoder", "numpy", "--threshold", "adaptive", "--context",
                       "season,hour"], ["--threshold", "fixed", "--ae-steps", "0"],
                  ["--train-rows", "300"]):  # fmt: skip
        done = edgewatch("evaluate", "--dataset", "skab", str(tmp_path), *extra)
        runs[" ".join(extra)] = (orjson.loads(done.stdout.strip().splitlines()[-1]), done.stderr)
    (plain, _), (numpy_, _), (fixed, _), (short, said) = runs.values()
    sha = ModelMetadata.read(ARTIFACTS / "pump_ensemble_ae.json").sha256[:12]
    assert plain["model_version"] == f"pump-ensemble-1+ae:tflite:{sha}:ft600"
    assert plain["threshold"] == "prefix"
    assert numpy_["model_version"] == "pump-ensemble-1+ae:numpy"
    assert (numpy_["threshold"], numpy_["context"]) == ("adaptive", ["season", "hour"])
    assert (fixed["threshold"], fixed["context"]) == ("fixed", ["season", "hour"])
    assert fixed["model_version"].endswith(":ft0")
    assert plain["results"]["autoencoder"] != fixed["results"]["autoencoder"]
    assert plain["results"]["mahalanobis"] != fixed["results"]["mahalanobis"]  # x0.95 in March
    # the shipped model was trained for 400-row prefixes: 300 falls back to numpy, said so
    assert short["model_version"] == "pump-ensemble-1+ae:numpy" and "prefix 400" in said
    bad = edgewatch("evaluate", "--dataset", "skab", str(tmp_path), "--autoencoder", "tflite",
                    "--tflite-model", str(tmp_path / "none.tflite"), check=False)  # fmt: skip
    assert bad.returncode == 2 and "none.json" in bad.stderr
