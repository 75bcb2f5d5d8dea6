"""The node side of fleet learning: accumulator, prior store, contributing models."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.fleet import merge
from models.fleet_hst import bucket_of
from models.halfspace import HalfSpaceTrees
from models.summaries import SummaryError, encode
from operators.fleet_sync import (
    FleetModel,
    NodeAccumulator,
    PriorStore,
    fleet_factories,
    hst_template,
)


def new() -> HalfSpaceTrees:
    return HalfSpaceTrees(4, 5, 20, {"x": (0.0, 100.0)}, 3, ["x"])


def template(node: str = "n1", group: str = "g") -> object:
    return hst_template(new, flow="air_quality", node=node, group=group)


def warm(acc: NodeAccumulator, rows: int, level: float = 10.0, seed: int = 0) -> FleetModel:
    model = FleetModel(new(), acc.add)
    x = np.random.default_rng(seed).normal(level, 1.0, rows)[:, None]
    for i in range(0, rows, 7):  # batches that straddle window ends
        model.score_learn_many(x[i : i + 7])
    return model


def test_accumulator_sums_each_finished_window_exactly() -> None:
    acc = NodeAccumulator(template())  # type: ignore[arg-type]
    assert acc.summary() is None
    model = warm(acc, 60)  # three windows of 20
    assert acc.windows == 3
    summary = acc.summary()
    assert summary is not None and summary.count == 60 and summary.meta["windows"] == 3
    last = model.model.reference_masses()
    assert last is not None and int(summary.arrays["masses"].sum()) >= int(last.sum())
    assert len(encode(summary)) <= 65_536


def test_accumulator_halves_and_keeps_the_average_within_a_window() -> None:
    acc = NodeAccumulator(template(), max_windows=4)  # type: ignore[arg-type]
    ones = np.full(acc.template.arrays["masses"].shape[1:], 20, dtype=np.int64)
    for i in range(7):
        acc.add(ones, level=5.0 if i % 2 else 50.0)
    summary = acc.summary()
    assert summary is not None and summary.meta["buckets"] == 2
    per_window = summary.arrays["masses"].max(axis=1) / summary.arrays["windows"]
    assert per_window.max() <= 20 and summary.meta["windows"] == summary.arrays["windows"].sum()


def test_each_window_goes_to_the_bucket_of_its_median() -> None:
    levels: list[float] = []
    model = FleetModel(new(), lambda masses, level: levels.append(level))
    x = np.concatenate([np.full(20, 10.0), np.full(20, 40.0), np.full(20, 70.0)])
    x[[3, 25]] = 99.0  # a spike moves no median
    for i in range(0, 60, 7):  # batches that straddle window ends
        model.score_learn_many(x[i : i + 7, None])
    assert levels == [10.0, 40.0, 70.0]
    acc = NodeAccumulator(template())  # type: ignore[arg-type]
    warm(acc, 60, level=10.0)
    warm(acc, 40, level=80.0)
    summary = acc.summary()
    assert summary is not None
    edges = summary.meta["level_edges"]
    expected = [bucket_of(10.0, edges), bucket_of(80.0, edges)]
    assert summary.arrays["buckets"].tolist() == expected
    assert summary.arrays["windows"].tolist() == [3, 2]


def test_fleet_model_pickles_as_the_bare_model() -> None:
    acc = NodeAccumulator(template())  # type: ignore[arg-type]
    model = warm(acc, 30)
    restored = pickle.loads(pickle.dumps(model))
    assert type(restored) is HalfSpaceTrees
    assert pickle.dumps(restored) == pickle.dumps(model.model)
    assert b"fleet_sync" not in pickle.dumps(model)  # snapshots do not need fleet learning


def fleet_bytes(group: str = "g") -> bytes:
    parts = []
    for i in range(3):
        acc = NodeAccumulator(template(f"n{i}", group))  # type: ignore[arg-type]
        warm(acc, 100, seed=i)
        summary = acc.summary()
        assert summary is not None
        parts.append(summary)
    return encode(merge(parts))


def test_a_newcomer_follows_its_clean_level_then_blends_its_first_window() -> None:
    store = PriorStore(template())  # type: ignore[arg-type]
    parts = []
    for i, level in enumerate([10.0, 10.0, 60.0]):
        acc = NodeAccumulator(template(f"n{i}"))  # type: ignore[arg-type]
        warm(acc, 100, level=level, seed=i)
        summary = acc.summary()
        assert summary is not None
        parts.append(summary)
    store.offer(encode(merge(parts)))
    prior = store.prior
    assert prior is not None
    make, _ = fleet_factories(new, NodeAccumulator(template()), store, threshold=0.7)  # type: ignore[arg-type]
    seeded = make()
    young = seeded.newcomer
    assert young is not None
    x = np.random.default_rng(5).normal(60.0, 1.0, 20)[:, None]
    x[5:9] = 10.0  # an episode at the other fleet level, flagged: it does not set the level
    scores = seeded.score_learn_many(x[:10])
    assert young.bucket == prior.bucket(60.0) and scores[5:9].min() > 0.7
    seeded.score_learn_many(x[10:19])
    assert young.bucket == prior.bucket(60.0) and seeded.newcomer is young
    seeded.score_learn_many(x[19:])  # the first own window ends: own and prior, halfway
    masses = seeded.model.reference_masses()
    own = new()
    own.learn_many(x)
    own_masses = own.reference_masses()
    assert seeded.newcomer is None and masses is not None and own_masses is not None
    both = (own_masses + prior.masses(young.bucket).astype(np.int64) + 1) // 2
    light = HalfSpaceTrees(4, 5, 20, {"x": (0.0, 100.0)}, 3, ["x"])
    light.set_reference_masses(both)
    np.testing.assert_array_equal(masses, light.reference_masses())


def test_prior_store_seeds_new_models_that_score_from_the_first_row() -> None:
    store = PriorStore(template())  # type: ignore[arg-type]
    assert store.new_model() is None
    fleet = store.offer(fleet_bytes())
    assert fleet is not None and fleet.meta["windows"] == 15
    assert store.new_model(10.0) is not None
    acc = NodeAccumulator(template())  # type: ignore[arg-type]
    make, restore = fleet_factories(new, acc, store)
    seeded = make()
    scores = seeded.score_learn_many(np.array([[10.0], [90.0]]))
    assert scores[0] < 0.5 < scores[1]  # usual level normal, far off anomalous, at once
    assert new().score_learn_many(np.array([[90.0]]))[0] == 0.0  # without a prior: silent
    assert type(restore(pickle.dumps(seeded)).model) is HalfSpaceTrees
    assert pickle.loads(pickle.dumps(seeded)).__class__ is HalfSpaceTrees
    assert store.offer(b"") is None and store.new_model() is None  # withdrawn


def flip_last(data: bytes) -> bytes:
    """``data`` with its last byte changed (replacing it with a constant left it as it was
    once in 256 summaries, whose bytes vary with their creation time)."""
    return data[:-1] + bytes([data[-1] ^ 0x01])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (lambda: fleet_bytes("other"), "wrong_group"),
        (lambda: flip_last(fleet_bytes()), "bad_checksum"),
        (lambda: b"not a summary", "malformed"),
        (lambda: b"x" * 70_000, "too_large"),
    ],
)
def test_prior_store_refuses_with_a_reason_and_keeps_its_prior(data: object, reason: str) -> None:
    store = PriorStore(template())  # type: ignore[arg-type]
    store.offer(fleet_bytes())
    with pytest.raises(SummaryError) as caught:
        store.offer(data())  # type: ignore[operator]
    assert caught.value.reason == reason
    assert store.new_model() is not None


def test_prior_store_refuses_other_parameters() -> None:
    other = hst_template(lambda: HalfSpaceTrees(4, 5, 20, {"x": (0.0, 50.0)}, 3, ["x"]),
                         flow="air_quality", node="n", group="g")  # fmt: skip
    with pytest.raises(SummaryError, match="mismatch"):
        PriorStore(other).offer(fleet_bytes())
