"""AdaptiveThreshold: quantiles per context, fallbacks, feedback, fixed factors, state."""

from __future__ import annotations

import math
import pickle
from collections.abc import Hashable
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from models.thresholds import AdaptiveThreshold, context_key, day_part, hour_of_day, season

UTC = timezone.utc


def feed(model: AdaptiveThreshold, scores: np.ndarray, context: Hashable, batch: int) -> None:
    for start in range(0, len(scores), batch):
        chunk = scores[start : start + batch]
        model.update_many(chunk, [context] * len(chunk))


def test_quantile_converges_to_true_quantile() -> None:
    rng = np.random.default_rng(0)
    model = AdaptiveThreshold(q=0.95, window=4096)
    feed(model, rng.exponential(size=40_000), "c", batch=100)
    assert model.threshold("c") == pytest.approx(-math.log(0.05), rel=0.05)  # 2.996


def test_threshold_is_np_quantile_of_the_window() -> None:
    rng = np.random.default_rng(4)
    scores = rng.gamma(2.0, size=1_000)
    for q in (0.5, 0.9, 0.99, 1.0):
        model = AdaptiveThreshold(q=q, window=100, min_count=100, learn_limit=1e9)
        feed(model, scores, "c", batch=7)
        window = scores[-100:].astype(np.float32).astype(np.float64)
        assert model.threshold("c") == pytest.approx(np.quantile(window, q), rel=1e-12)


def test_q99_holds_over_a_long_stream_with_self_exclusion() -> None:
    """Learning only scores under the threshold would collapse it; the limit of 2 does not."""
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=60_000)
    model, literal = AdaptiveThreshold(), AdaptiveThreshold(learn_limit=1.0)
    for m in (model, literal):
        feed(m, scores, "c", batch=8)
    assert model.threshold("c") == pytest.approx(-math.log(0.01), rel=0.15)  # 4.6
    assert literal.threshold("c") < 1.5


def test_context_falls_back_to_sensor_then_initial() -> None:
    model = AdaptiveThreshold(q=0.5, min_count=10, window=100, initial=7.0, learn_limit=4.0)
    assert model.thresholds_for(["a", "b"]).tolist() == [7.0, 7.0]
    model.update_many(np.full(6, 1.0), ["a"] * 6)
    assert model.threshold("a") == 7.0  # 6 scores: too few anywhere
    model.update_many(np.full(6, 3.0), ["b"] * 6)
    assert model.thresholds_for(["a", "b", "new"]).tolist() == [2.0, 2.0, 2.0]  # sensor-wide
    model.update_many(np.full(4, 1.0), ["a"] * 4)
    assert model.thresholds_for(["a", "b", "new"]).tolist() == [1.0, 1.0, 1.0]
    model.update_many(np.full(4, 3.0), ["b"] * 4)
    assert model.thresholds_for(["a", "b", "new"]).tolist() == [1.0, 3.0, 2.0]


def test_update_returns_thresholds_before_learning_and_skips_alerts() -> None:
    model = AdaptiveThreshold(q=1.0, min_count=5, window=50)
    first = model.update_many(np.arange(1.0, 6.0), ["c"] * 5)
    assert first.tolist() == [math.inf] * 5  # before the batch: nothing learned
    limits = model.update_many([1.0, 9.0, 10.5, 1000.0, math.nan], ["c"] * 5)
    assert limits.tolist() == [5.0] * 5
    assert model.window_size("c") == 7  # 9 <= 2 * 5 learned; 10.5, 1000 and NaN not
    assert model.threshold("c") == 9.0
    model.update_many([1e6] * 100, ["c"] * 100)  # a burst of alerts moves nothing
    assert model.threshold("c") == 9.0
    model.update_many([2.0, 3.0], ["c"] * 2, is_normal=[False, True])
    assert model.window_size("c") == 8 and model.window_size() == 8


def test_feedback_moves_threshold_within_bounds() -> None:
    model = AdaptiveThreshold(q=0.5, min_count=4, window=16, bounds=(0.5, 4.0))
    model.update_many(np.full(8, 2.0), ["night"] * 8)
    assert model.threshold("night") == 2.0
    model.feedback("false_positive", 2.5, "night")
    assert model.adjustment("night") == pytest.approx(1.1)
    assert model.threshold("night") == pytest.approx(2.2)
    assert model.window_size("night") == 9  # the score was learned as normal
    for _ in range(50):
        model.feedback("false_positive", 100.0, "night")
    assert model.adjustment("night") == 4.0
    for _ in range(100):
        model.feedback("true_positive", 100.0, "night")
    assert model.adjustment("night") == 0.5
    assert model.window_size("night") == 16  # bounded however many scores come
    assert model.adjustment("day") == 1.0
    with pytest.raises(ValueError, match="label"):
        model.feedback("maybe", 1.0, "night")  # type: ignore[arg-type]


def test_true_positive_lowers_threshold() -> None:
    model = AdaptiveThreshold(q=0.5, min_count=4, window=16)
    model.update_many(np.full(8, 2.0), ["c"] * 8)
    model.feedback("true_positive", 3.0, "c")
    assert model.threshold("c") == pytest.approx(2.0 / 1.05)
    assert model.window_size("c") == 8  # an anomaly is not learned


def test_fixed_mode_is_the_seed_rule() -> None:
    def seed(time_of_day: int, season_name: str) -> float:
        seasonal_factor = 1.05 if season_name == "summer" else 0.95
        time_factor = 1.1 if time_of_day in [8, 9, 10] else 1.0
        return 0.15 * seasonal_factor * time_factor

    factors: dict[Hashable, float] = {
        s: 1.05 if s == "summer" else 0.95 for s in ("winter", "spring", "summer", "autumn")
    }
    model = AdaptiveThreshold(mode="fixed", initial=0.15, factors={**factors, 8: 1.1, 9: 1.1})
    model.factors[10] = 1.1  # type: ignore[index]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    stamps = [start + timedelta(hours=7 * i) for i in range(300)]
    contexts = [context_key(ts, by=("hour", "season")) for ts in stamps]
    expected = [seed(h, s) for h, s in contexts]  # type: ignore[arg-type]
    np.testing.assert_allclose(model.update_many(np.full(300, 9.0), contexts), expected)
    assert model.window_size() == 0  # fixed mode learns nothing
    day_night = AdaptiveThreshold(mode="fixed", initial=1.0, factors={"night": 0.8, "day": 1.2})
    assert day_night.thresholds_for(["night", "day", "dusk"]).tolist() == [0.8, 1.2, 1.0]
    day_night.feedback("false_positive", 5.0, "night")
    assert day_night.threshold("night") == pytest.approx(0.88)


def test_context_helpers() -> None:
    ts = datetime(2024, 3, 31, 23, 30, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert hour_of_day(ts) == 23 and hour_of_day(ts, plus_two) == 1
    assert season(ts) == "spring" and season(ts, plus_two) == "spring"
    assert season(ts, southern=True) == "autumn"
    assert [season(datetime(2024, m, 1, tzinfo=UTC)) for m in (12, 2, 6, 9, 11)] == [
        "winter", "winter", "summer", "autumn", "autumn"]  # fmt: skip
    assert day_part(ts) == "night" and day_part(ts.replace(hour=7)) == "day"
    assert context_key(ts, "high", by=("daypart", "mode", "hour")) == ("night", "high", 23)
    with pytest.raises(ValueError, match="tz-aware"):
        hour_of_day(datetime(2024, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="unknown context part"):
        context_key(ts, by=("weekday",))


def test_state_round_trip_and_size_for_24_hours() -> None:
    rng = np.random.default_rng(3)
    model = AdaptiveThreshold()
    hours = rng.integers(0, 24, size=30_000).tolist()
    model.update_many(rng.exponential(size=30_000), hours)
    model.feedback("false_positive", 3.0, 5)
    probe = list(range(24)) + [99]
    for restored in (
        pickle.loads(pickle.dumps(model)),
        AdaptiveThreshold.from_state(pickle.loads(pickle.dumps(model.state()))),
    ):
        np.testing.assert_array_equal(restored.thresholds_for(probe), model.thresholds_for(probe))
        more = rng.exponential(size=2_000)
        copy = pickle.loads(pickle.dumps(model))
        restored.update_many(more, hours[:2_000])
        copy.update_many(more, hours[:2_000])
        np.testing.assert_array_equal(restored.thresholds_for(probe), copy.thresholds_for(probe))
    assert all(model.window_size(h) == 512 for h in range(24)) and model.window_size() == 512
    assert 50_000 < model.state_bytes() < 52_000  # 25 windows x 512 float32 + ~0.5 KB
    small = AdaptiveThreshold(window=128)
    small.update_many(rng.exponential(size=30_000), hours)
    assert small.state_bytes() < 13_500
    assert AdaptiveThreshold().state_bytes() < 400


def test_ring_keeps_the_most_recent_scores() -> None:
    model = AdaptiveThreshold(q=1.0, min_count=1, window=4)
    model.update_many([1.0, 2.0, 3.0], ["c"] * 3)
    model.update_many([0.5, 0.25], ["c"] * 2)  # fills, wraps: 2, 3, 0.5, 0.25
    assert model.threshold("c") == 3.0
    model.update_many([0.1, 0.2], ["c"] * 2)  # drops 2 and 3
    assert model.threshold("c") == 0.5
    model.update_many(np.linspace(0.01, 0.09, 9), ["c"] * 9)  # more than the window at once
    assert model.threshold("c") == pytest.approx(0.09)
    assert model.window_size("c") == 4


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "median"}, {"q": 0.0}, {"factor": 0.0}, {"mode": "fixed"}, {"min_count": 0},
     {"window": 10, "min_count": 11}, {"learn_limit": 0.9}, {"fp_step": 0.9},
     {"bounds": (1.2, 4.0)}, {"initial": 0.0}],
)  # fmt: skip
def test_constructor_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must|need"):
        AdaptiveThreshold(**kwargs)  # type: ignore[arg-type]
