"""PumpEnsemble on real SKAB rows: batch splits, training prefix, votes, feedback, state."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from dataflows.evaluate_skab import SKAB_CHANNELS, read_skab_file
from models.ensemble import DETECTORS, EnsembleConfig, EnsembleScores, PumpEnsemble, check_member
from models.ensemble_ae import TFLiteAutoencoder
from models.pump_detectors import SKAB_PUMP_CHANNELS
from models.runtime import ARTIFACTS, ModelMetadata
from tests.dataflows.test_cli import DATA, needs_data

CONFIG = EnsembleConfig(channels=SKAB_CHANNELS, train_rows=200, epochs=100)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    x, _ = read_skab_file(DATA / "skab" / "valve1" / "1.csv")
    return x[:700]


def _run(ens: PumpEnsemble, x: np.ndarray, cuts: list[int]) -> EnsembleScores:
    edges = [0, *cuts, len(x)]
    parts = [ens.process(x[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fields = EnsembleScores.__annotations__
    return EnsembleScores(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def _same(a: EnsembleScores, b: EnsembleScores) -> None:
    for f in EnsembleScores.__annotations__:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@needs_data
def test_results_do_not_depend_on_the_batch_split(rows: np.ndarray) -> None:
    whole = PumpEnsemble(CONFIG).process(rows)
    rng = np.random.default_rng(3)
    cuts = sorted(rng.choice(np.arange(1, len(rows)), 40, replace=False).tolist())
    _same(whole, _run(PumpEnsemble(CONFIG), rows, cuts))
    _same(whole, _run(PumpEnsemble(CONFIG), rows, list(range(1, len(rows)))))
    assert whole.votes[200:].any() and not whole.votes[200:].all()


@needs_data
def test_training_prefix_gets_no_verdicts_and_votes_follow_flags(rows: np.ndarray) -> None:
    for k in (1, 2, 3):
        out = PumpEnsemble(EnsembleConfig(SKAB_CHANNELS, k=k, train_rows=200, epochs=100))
        res = out.process(rows)
        assert res.training[:200].all() and not res.training[200:].any()
        assert np.isnan(res.scores[:200]).all() and np.isnan(res.thresholds[:200]).all()
        assert not res.flags[:200].any() and not res.alerts[:200].any()
        assert np.isfinite(res.scores[200:]).all()
        np.testing.assert_array_equal(res.flags, res.scores > res.thresholds)
        np.testing.assert_array_equal(res.votes, res.flags.sum(axis=1))
        np.testing.assert_array_equal(res.alerts, res.votes >= k)


@needs_data
def test_feedback_moves_thresholds_within_bounds(rows: np.ndarray) -> None:
    ens = PumpEnsemble(CONFIG)
    base = ens.process(rows[:300]).thresholds[-1]
    ens.feedback("false_positive")
    np.testing.assert_allclose(ens.process(rows[300:301]).thresholds[0], base * 1.1)
    for _ in range(50):
        ens.feedback("false_positive")
    np.testing.assert_allclose(ens.process(rows[301:302]).thresholds[0], base * 4.0)
    for _ in range(100):
        ens.feedback("true_positive")
    np.testing.assert_allclose(ens.process(rows[302:303]).thresholds[0], base * 0.5)
    with pytest.raises(ValueError, match="label"):
        ens.feedback("maybe")


@needs_data
@pytest.mark.parametrize("at", [150, 450])
def test_pickle_round_trip_continues_identically(rows: np.ndarray, at: int) -> None:
    ens = PumpEnsemble(CONFIG)
    ens.process(rows[:at])
    ens.feedback("false_positive")
    blob = pickle.dumps(ens, protocol=pickle.HIGHEST_PROTOCOL)
    copy = pickle.loads(blob)  # noqa: S301 - our own bytes
    _same(ens.process(rows[at:]), copy.process(rows[at:]))
    assert len(blob) < (30_000 if at < 200 else 8_000)
    assert PumpEnsemble.from_state(ens.state()).model_version == "pump-ensemble-1+ae:numpy"


def test_univariate_runs_all_three_detectors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 1))
    x[500:540] += 6.0
    res = PumpEnsemble(EnsembleConfig(channels=("value",), train_rows=300)).process(x)
    assert res.scores.shape == (600, len(DETECTORS))
    assert res.flags[515:540].all(axis=0).all()
    assert res.alerts[515:540].all() and res.alerts[300:480].mean() < 0.1


def test_bad_config_and_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="k must"):
        EnsembleConfig(channels=("a",), k=4)
    with pytest.raises(ValueError, match="max_drift"):
        EnsembleConfig(channels=("a",), autoencoder="tflite", max_drift=1.0)
    with pytest.raises(ValueError, match="threshold must"):
        EnsembleConfig(channels=("a",), threshold="hourly")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        PumpEnsemble(EnsembleConfig(channels=("a",))).process(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="trained for channels"):
        check_member(EnsembleConfig(channels=("a",), autoencoder="tflite"))
    check_member(TFLITE)


# -- the shared TFLite autoencoder member ------------------------------------------

TFLITE = EnsembleConfig(channels=SKAB_PUMP_CHANNELS, train_rows=400, autoencoder="tflite")


@pytest.fixture(scope="module")
def pump_rows() -> np.ndarray:
    x, _ = read_skab_file(DATA / "skab" / "valve1" / "1.csv")
    return x[:, [SKAB_CHANNELS.index(c) for c in SKAB_PUMP_CHANNELS]]


@needs_data
@pytest.mark.parametrize("steps", [600, 0])
def test_tflite_member_fine_tunes_scores_batches_and_pickles_small(
    pump_rows: np.ndarray, steps: int
) -> None:
    cfg = dataclasses.replace(TFLITE, epochs=steps)
    whole = PumpEnsemble(cfg).process(pump_rows)
    ens = PumpEnsemble(cfg)
    split = _run(ens, pump_rows, [150, 400, 401, 650, 900])
    np.testing.assert_array_equal(whole.flags, split.flags)
    np.testing.assert_array_equal(whole.scores, split.scores)  # rows are batch-free in TFLite too
    ae = whole.scores[400:, 2]
    assert np.isfinite(ae).all() and (ae > 0).all()
    assert whole.flags[400:, 2].any() and not whole.flags[400:, 2].all()
    blob = pickle.dumps(ens, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"pump_ensemble_ae.tflite" in blob and len(blob) < 8_000  # no interpreter
    copy = pickle.loads(blob)  # noqa: S301 - our own bytes
    _same(ens.process(pump_rows[-50:]), copy.process(pump_rows[-50:]))
    sha = ModelMetadata.read(ARTIFACTS / "pump_ensemble_ae.json").sha256
    assert ens.model_version == f"pump-ensemble-1+ae:tflite:{sha[:12]}:ft{steps}"
    params = ens.state()["fit"]["ae"]["params"]
    if steps:  # fine-tuned on this pump: 98 float32 weights, not the shipped ones
        assert sum(p.size for p in params.values()) == 98
        assert all(p.dtype == np.float32 for p in params.values())
        other = PumpEnsemble(cfg)
        other.process(pump_rows[::-1].copy()[:450])
        assert not np.array_equal(other.state()["fit"]["ae"]["params"]["w0"], params["w0"])
    else:
        assert params is None


@needs_data
def test_tflite_fine_tuning_lowers_the_prefix_error_and_shares_one_interpreter(
    pump_rows: np.ndarray,
) -> None:
    z = (pump_rows[:400] - pump_rows[:400].mean(0)) / pump_rows[:400].std(0)
    shipped = TFLiteAutoencoder(steps=0).fit(z)
    tuned = TFLiteAutoencoder(steps=300).fit(z)
    assert tuned.score_many(z).mean() < 0.95 * shipped.score_many(z).mean()  # 3.79 vs 4.11
    # interleaved scoring restores each member's weights into the shared interpreter
    a, b = tuned.score_many(z[:7]), shipped.score_many(z[:7])
    np.testing.assert_array_equal(tuned.score_many(z[:7]), a)
    np.testing.assert_array_equal(shipped.score_many(z[:7]), b)
    assert not np.array_equal(a, b)
    copy = TFLiteAutoencoder.from_state(pickle.loads(pickle.dumps(tuned.state())))  # noqa: S301
    np.testing.assert_array_equal(copy.score_many(z), tuned.score_many(z))


# -- adaptive and fixed thresholds -----------------------------------------------------


def _hours(n: int, start: int = 0) -> list[tuple[int]]:
    return [((start + i // 60) % 24,) for i in range(n)]  # one row a minute


@needs_data
def test_adaptive_thresholds_move_per_context_batch_free_and_round_trip(rows: np.ndarray) -> None:
    cfg = dataclasses.replace(CONFIG, threshold="adaptive", threshold_min_count=20)
    ctx = _hours(len(rows))
    whole = PumpEnsemble(cfg).process(rows, ctx)
    ens = PumpEnsemble(cfg)
    edges = [0, 37, 200, 201, 333, 480, 481, 600, len(rows)]
    parts = [ens.process(rows[a:b], ctx[a:b]) for a, b in zip(edges, edges[1:], strict=False)]
    joined = EnsembleScores(*(np.concatenate([getattr(p, f) for p in parts])
                              for f in EnsembleScores.__annotations__))  # fmt: skip
    _same(whole, joined)
    thr = whole.thresholds[200:]
    assert len(np.unique(thr[:, 1])) > 50  # learned row by row, not fixed at the prefix's
    np.testing.assert_array_equal(whole.flags, whole.scores > whole.thresholds)
    # the thresholds are part of the state: a pickled ensemble continues identically
    ens = PumpEnsemble(cfg)
    ens.process(rows[:450], ctx[:450])
    copy = pickle.loads(pickle.dumps(ens, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301
    _same(ens.process(rows[450:], ctx[450:]), copy.process(rows[450:], ctx[450:]))


@needs_data
def test_fixed_factors_scale_the_prefix_thresholds(rows: np.ndarray) -> None:
    base = PumpEnsemble(CONFIG).process(rows).thresholds[200:]
    cfg = dataclasses.replace(CONFIG, threshold="fixed", threshold_factors=(("winter", 0.95),
                              (8, 1.1)))  # fmt: skip
    ctx = [("winter", 8 if i % 2 else 3) for i in range(len(rows))]
    fixed = PumpEnsemble(cfg).process(rows, ctx).thresholds[200:]
    factor = np.where(np.arange(200, len(rows)) % 2, 0.95 * 1.1, 0.95)
    np.testing.assert_allclose(fixed[:, 1], base[:, 1] * factor)
    np.testing.assert_allclose(fixed[:, 2], base[:, 2] * factor)
