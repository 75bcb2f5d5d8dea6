"""Fleet summaries: the wire format, exact merges, drift, priors and federated averaging."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pickle
import struct
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pytest

from models import sketch
from models.fleet import drift, hst_prior, mahalanobis_prior, merge, summarise, threshold_prior
from models.fleet_hst import level_edges
from models.halfspace import HalfSpaceTrees
from models.mahalanobis import OnlineMahalanobis
from models.summaries import REASONS, Summary, SummaryError, decode, encode, fedavg
from models.thresholds import AdaptiveThreshold

T0 = datetime(2024, 7, 1, tzinfo=timezone.utc)
AIR = {"n_trees": 10, "height": 8, "window_size": 72, "seed": 11,
       "limits": {"pm": (0.0, 1200.0)}, "features": ["pm"]}  # fmt: skip
XYZ = {"n_trees": 10, "height": 8, "window_size": 72, "seed": 3, "features": ["x", "y", "z"]}


def pm(n: int, seed: int, level: float = 20.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(level, 5.0, size=(n, 1)), 0, None)


def hst(X: np.ndarray, params: dict[str, Any] = AIR) -> HalfSpaceTrees:
    model = HalfSpaceTrees(**params)
    model.learn_many(X)
    return model


def part(model: Any, node: str, minutes: int = 0, **kwargs: Any) -> Summary:
    return summarise(model, flow="air_quality", node=node, group="g1", model_version="v1",
                     created_at=T0 + timedelta(minutes=minutes), **kwargs)  # fmt: skip


def frame(header: dict[str, Any], payload: bytes) -> bytes:
    """Wire bytes around any header and payload, with a valid digest."""
    head = orjson.dumps(header)
    body = b"EWSM" + struct.pack("<I", len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def parts_of(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack_from("<I", data, 4)
    return orjson.loads(data[8 : 8 + size]), data[8 + size : -32]


def mahalanobis_parts() -> tuple[list[Summary], np.ndarray]:
    rng = np.random.default_rng(1)
    chunks = [rng.normal(size=(n, 4)) @ rng.normal(size=(4, 4)) + 5 * i
              for i, n in enumerate([200, 50, 333, 7])]  # fmt: skip
    models = []
    for chunk in chunks:
        model = OnlineMahalanobis()
        model.learn_many(chunk)
        models.append(model)
    return [part(m, f"n{i}", i) for i, m in enumerate(models)], np.concatenate(chunks)


def hst_parts() -> list[Summary]:
    """Four nodes' summaries, in level buckets 7, 8, 8 and 9."""
    return [part(hst(pm(72 * (i + 2), i, 15 + 3 * i)), f"n{i}", i, level=level)
            for i, level in enumerate([12.0, 16.0, 17.0, 24.0])]  # fmt: skip


def sketch_parts() -> tuple[list[Summary], np.ndarray]:
    rng = np.random.default_rng(2)
    chunks = [rng.exponential(1 + i, size=5000 + 1000 * i).astype(np.float32) for i in range(4)]
    return [part(c, f"n{i}", i) for i, c in enumerate(chunks)], np.concatenate(chunks)


# --- wire format -------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: hst_parts()[0], lambda: mahalanobis_parts()[0][0],
                                  lambda: sketch_parts()[0][0]])  # fmt: skip
def test_encode_decode_round_trip(make: Any) -> None:
    summary = make()
    back = decode(encode(summary), expect_kind=summary.kind, expect_version="v1",
                  expect_group="g1")  # fmt: skip
    fields = [f.name for f in dataclasses.fields(Summary) if f.name != "arrays"]
    assert all(getattr(back, f) == getattr(summary, f) for f in fields)
    assert back.arrays.keys() == summary.arrays.keys()
    for name, array in summary.arrays.items():
        assert back.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[name], array)
    assert encode(back) == encode(summary)


def test_default_sizes_fit_in_64_kib() -> None:
    """Bytes on the wire with the defaults; a fleet merge is no larger than one part."""
    hsts, (mahas, _), (sketches, _) = hst_parts(), mahalanobis_parts(), sketch_parts()
    rng = np.random.default_rng(0)
    pump = OnlineMahalanobis()
    pump.learn_many(rng.normal(size=(500, 8)))
    random_masses = rng.integers(0, 2**32, (1, 5110), dtype=np.uint32)
    noisy = dataclasses.replace(hsts[0], arrays={**hsts[0].arrays, "masses": random_masses})
    levels = [0.5, *level_edges((0.0, 1200.0))]
    every_level = merge([part(hst(pm(144, i, level)), f"n{i}", level=level)
                         for i, level in enumerate(levels)])  # fmt: skip
    assert every_level.meta["buckets"] == 21
    sizes = {"hst": len(encode(hsts[0])), "hst fleet": len(encode(merge(hsts))),
             "hst fleet, every level bucket": len(encode(every_level)),
             "hst 3 features": len(encode(part(hst(rng.random((200, 3)), XYZ), "x"))),
             "hst incompressible": len(encode(noisy)),
             "mahalanobis d=4": len(encode(mahas[0])),
             "mahalanobis d=8": len(encode(part(pump, "p"))),
             "sketch 5k": len(encode(sketches[0])), "sketch fleet 26k": len(encode(
                 merge(sketches)))}  # fmt: skip
    assert max(sizes.values()) <= 65_536, sizes
    assert sizes["hst"] < 2_000 and sizes["mahalanobis d=8"] < 1_000, sizes
    assert sizes["sketch fleet 26k"] < 4_000, sizes


def test_rejections_have_their_reasons() -> None:
    good = encode(mahalanobis_parts()[0][0])
    header, payload = parts_of(good)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    huge = {**header, "arrays": [["mean", "<f8", [1 << 20]], ["m2", "<f8", [10]]]}
    cases = {
        "too_large": [(good, {"max_bytes": len(good) - 1}), (frame(huge, payload), {})],
        "malformed": [(b"", {}), (b"JUNK" + good[4:], {}), (frame({"kind": 3}, payload), {}),
                      (frame(header, payload[:-3]), {}), (frame(header, b"not zlib"), {}),
                      (frame({**header, "created_at": "2024-07-01T00:00:00"}, payload), {}),
                      (frame({**header, "arrays": [["mean", "<c16", [4]]]}, payload), {})],
        "bad_checksum": [(bytes(flipped), {}), (good[:-1], {})],
        "wrong_version": [(frame({**header, "format": 2}, payload), {}),
                          (good, {"expect_version": "v2"})],
        "wrong_kind": [(good, {"expect_kind": "hst"}), (frame({**header, "kind": "x"}, payload),
                                                        {})],
        "wrong_group": [(good, {"expect_group": "g2"})],
        "wrong_shape": [(frame({**header, "meta": {**header["meta"], "d": 3}}, payload), {}),
                        (frame({**header, "meta": {}}, payload), {})],
    }  # fmt: skip
    assert set(cases) | {"mismatch"} == REASONS
    for reason, attempts in cases.items():
        for data, kwargs in attempts:
            with pytest.raises(SummaryError) as caught:
                decode(data, **kwargs)
            assert caught.value.reason == reason, (reason, caught.value)


def test_encode_refuses_wrong_shapes_and_oversize() -> None:
    summary = mahalanobis_parts()[0][0]
    with pytest.raises(SummaryError, match="wrong_shape"):
        encode(dataclasses.replace(summary, arrays={"mean": np.zeros(3), "m2": np.zeros(10)}))
    with pytest.raises(SummaryError, match="too_large"):
        encode(summary, max_bytes=100)


# --- merging -----------------------------------------------------------------------------


def groupings(parts: list[Summary]) -> list[Summary]:
    """The same parts merged in several orders and groupings."""
    a, b, c, d = parts
    return [merge(parts), merge(parts[::-1]), merge([merge([a, b]), merge([c, d])]),
            merge([d, merge([c, merge([b, a])])]), merge([merge([c, a, d]), b])]  # fmt: skip


def test_mahalanobis_merge_equals_the_union_in_any_order() -> None:
    parts, union = mahalanobis_parts()
    whole = OnlineMahalanobis()
    whole.learn_many(union)
    for merged in groupings(parts):
        model = mahalanobis_prior(decode(encode(merged)))
        assert model.count == whole.count == merged.count
        np.testing.assert_allclose(model.mean, whole.mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(model.covariance(), whole.covariance(), rtol=1e-9, atol=1e-9)


def test_hst_merge_is_the_exact_sum_in_any_order() -> None:
    parts = hst_parts()
    assert [int(p.arrays["buckets"][0]) for p in parts] == [7, 8, 8, 9]
    rows = [p.arrays["masses"][0].astype(np.int64) for p in parts]
    total = np.stack([rows[0], rows[1] + rows[2], rows[3]])
    for merged in groupings(parts):
        np.testing.assert_array_equal(merged.arrays["masses"], total)
        assert merged.arrays["buckets"].tolist() == [7, 8, 9]
        assert merged.arrays["windows"].tolist() == [1, 2, 1]
        assert merged.meta["windows"] == 4 and merged.count == 4 * 72
        assert (merged.node, merged.created_at) == ("*", T0 + timedelta(minutes=3))
        assert merged.fingerprint == parts[0].fingerprint


def test_sketch_merge_quantiles_within_the_stated_rank_error() -> None:
    parts, union = sketch_parts()
    ordered = np.sort(union)
    ranks = np.linspace(0.01, 0.99, 99)
    for merged in groupings(parts):
        pooled = sketch.from_bytes(merged.arrays["sketch"].tobytes())
        assert pooled.n == merged.count == len(union)
        eps = sketch.rank_error(pooled, whole_cdf=True)
        for r in ranks:
            value = np.float32(pooled.get_quantile(r))
            low = np.searchsorted(ordered, value, "left") / len(union)
            high = np.searchsorted(ordered, value, "right") / len(union)
            assert low - eps <= r <= high + eps, (r, low, high, eps)


def test_merge_refuses_what_does_not_belong_together() -> None:
    parts = hst_parts()
    other_seed = part(hst(pm(144, 9), {**AIR, "seed": 12}), "x")
    with pytest.raises(SummaryError, match="mismatch"):
        merge([*parts, other_seed])
    with pytest.raises(SummaryError, match="wrong_group"):
        merge([parts[0], dataclasses.replace(parts[1], group="g2")])
    with pytest.raises(SummaryError, match="wrong_kind"):
        merge([parts[0], mahalanobis_parts()[0][0]])
    forged = dataclasses.replace(parts[1], meta={**parts[1].meta, "seed": 12})
    with pytest.raises(SummaryError, match="mismatch"):
        merge([parts[0], forged])
    broken = dataclasses.replace(sketch_parts()[0][0], arrays={"sketch": np.zeros(40, np.uint8)})
    with pytest.raises(SummaryError, match="malformed"):
        merge([broken, broken])


# --- drift -------------------------------------------------------------------------------


def test_drift_is_zero_on_identical_and_grows_with_shift() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(3000, 3))
    makers = {
        "hst": lambda X: hst(np.clip(X[:, :1] * 5 + 20, 0, None)),
        "mahalanobis": lambda X: X,
        "sketch": lambda X: np.abs(X[:, 0]),
    }
    for kind, make in makers.items():

        def summary(shift: float, make: Any = make, kind: str = kind) -> Summary:
            data = make(base + shift)
            if kind == "mahalanobis":
                model = OnlineMahalanobis()
                model.learn_many(data)
                data = model
            return part(data, "n")

        fleet = summary(0.0)
        distances = [drift(summary(s), fleet) for s in (0.0, 0.5, 1.0, 2.0)]
        assert drift(fleet, fleet) == 0.0, kind
        assert distances[0] <= (0.03 if kind == "sketch" else 0.0), kind  # KLL draws bits
        assert all(a < b for a, b in itertools.pairwise(distances)), (kind, distances)
        shifted = summary(1.0)
        assert drift(fleet, shifted) == pytest.approx(drift(shifted, fleet)), kind


# --- priors ------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [AIR, XYZ])
def test_hst_prior_of_one_part_scores_as_its_source(params: dict[str, Any]) -> None:
    d = len(params["features"])
    rng = np.random.default_rng(5)
    X = rng.random((300, d)) * (1200 if d == 1 else 1)
    source = hst(X, params)
    prior = hst_prior(decode(encode(part(source, "n"))))
    probe = rng.random((500, d)) * (1200 if d == 1 else 1)
    np.testing.assert_array_equal(prior.score_many(probe), source.score_many(probe))
    restored = pickle.loads(pickle.dumps(prior))
    np.testing.assert_array_equal(restored.score_many(probe), source.score_many(probe))


def test_hst_prior_flags_an_anomaly_in_the_first_window_and_learns_on() -> None:
    fleet = merge([part(hst(pm(72 * 5, i)), f"n{i}") for i in range(6)])
    window = pm(72, 99)
    window[30] = 900.0  # a spike
    prior, cold = hst_prior(fleet), HalfSpaceTrees(**AIR)
    scores = prior.score_learn_many(window)
    assert scores[30] > 0.7 > scores[np.arange(72) != 30].max()  # the air-quality threshold
    assert not cold.score_learn_many(window).any()  # a cold model scores 0 all window long
    np.testing.assert_array_equal(prior.reference_masses(), cold.reference_masses())


def test_hst_prior_follows_the_new_sensors_level() -> None:
    low = [part(hst(pm(72, i, 5.0)), f"l{i}", level=5.0) for i in range(3)]
    high = [part(hst(pm(72, i, 50.0)), f"h{i}", level=50.0) for i in range(3)]
    fleet = decode(encode(merge(low + high)))
    assert fleet.meta["buckets"] == 2
    probe = np.array([[5.0], [50.0]])
    near_low, near_high = hst_prior(fleet, 4.0), hst_prior(fleet, 60.0)
    pooled = hst_prior(fleet)
    assert near_low.score_many(probe)[1] > 0.7 > near_low.score_many(probe)[0]
    assert near_high.score_many(probe)[0] > 0.7 > near_high.score_many(probe)[1]
    assert pooled.score_many(probe).max() < near_low.score_many(probe).max()
    nowhere = hst_prior(fleet, 900.0)  # no bucket near it: the whole fleet's window
    np.testing.assert_array_equal(nowhere.score_many(probe), pooled.score_many(probe))
    doubled = hst_prior(fleet, 4.0, gain=2.0)
    assert (doubled.reference_masses() >= near_low.reference_masses()).all()


def test_mahalanobis_prior_is_ready_at_once_and_can_weigh_less() -> None:
    parts, union = mahalanobis_parts()
    fleet = merge(parts[:3])
    prior, cold = mahalanobis_prior(fleet), OnlineMahalanobis()
    outlier = union[:200].mean(axis=0) + 10 * union[:200].std(axis=0)
    assert prior.ready and prior.score_one(outlier) > 5.0
    assert cold.score_one(outlier) == 0.0
    light = mahalanobis_prior(fleet, max_count=50)
    assert light.count == 50
    np.testing.assert_allclose(light.covariance(), prior.covariance(), rtol=1e-12)


def test_threshold_summary_and_prior() -> None:
    rng = np.random.default_rng(6)
    threshold = AdaptiveThreshold(window=512, min_count=64)
    threshold.update_many(rng.exponential(size=1000), [0] * 1000)
    summary = part(threshold, "n")
    assert summary.count == 512
    fleet = merge([summary, part(rng.exponential(size=4000), "m")])
    start = threshold_prior(fleet, q=0.95, min_count=32)
    assert start.threshold("any") == pytest.approx(-np.log(0.05), rel=0.15)


def test_set_reference_masses_validates() -> None:
    model = HalfSpaceTrees(**AIR)
    with pytest.raises(ValueError, match="masses"):
        model.set_reference_masses(np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match="masses"):
        model.set_reference_masses(np.full(5110, 73, dtype=np.int64))
    with pytest.raises(ValueError, match="masses"):
        HalfSpaceTrees().set_reference_masses(np.zeros(5110, dtype=np.int64))


# --- federated averaging -----------------------------------------------------------------


def test_fedavg_weights_by_count_and_is_associative() -> None:
    rng = np.random.default_rng(7)
    models = [[rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3)] for _ in range(3)]
    counts = [10, 30, 60]
    whole = fedavg(models, counts)
    for j in range(2):
        expected = sum(c * m[j].astype(np.float64) for m, c in zip(models, counts, strict=True))
        np.testing.assert_allclose(whole[j], expected / 100, rtol=1e-12)
    nested = fedavg([fedavg(models[:2], counts[:2]), models[2]], [40, 60])
    for a, b in zip(whole, nested, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_fedavg_refuses_bad_input() -> None:
    a = [np.zeros((2, 2)), np.zeros(2)]
    wide = [np.zeros((2, 3)), np.zeros(2)]
    for weights, counts in [([], []), ([a, a], [1]), ([a, a], [1, 0]), ([a, wide], [1, 1]),
                            ([a, a[:1]], [1, 1])]:  # fmt: skip
        with pytest.raises(ValueError, match="count|shape"):
            fedavg(weights, counts)


def test_implausible_hst_sizes_are_refused_before_any_work() -> None:
    header, payload = parts_of(encode(hst_parts()[0]))
    for height in (10**9, 0, -3):
        with pytest.raises(SummaryError, match="wrong_shape"):
            decode(frame({**header, "meta": {**header["meta"], "height": height}}, payload))


def test_zlib_payload_is_bounded() -> None:
    header, _ = parts_of(encode(mahalanobis_parts()[0][0]))
    bomb = zlib.compress(bytes(1 << 21))
    with pytest.raises(SummaryError, match="malformed"):
        decode(frame(header, bomb))
