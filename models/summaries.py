"""Mergeable model summaries on the wire: versioned, checksummed, compact, pure numpy.

A node sends a :class:`Summary` of a model (HST reference masses, Mahalanobis moments, a
quantile sketch of scores) to an aggregator, which merges a group's summaries and sends
the fleet's back; :mod:`models.fleet` makes, merges, compares and applies them. This
module is the wire format, plus :func:`fedavg` for autoencoder weights.

:func:`encode` writes, all integers little-endian::

    b"EWSM" | u32 header length | header (JSON) | payload (zlib) | SHA-256 of all before

The header holds the format version, the kind, flow, node, group, the caller's model
version, a fingerprint of the parameters that merging needs equal, the sample count,
``created_at`` (UTC ISO 8601), kind-specific JSON ``meta`` and the name, dtype and shape
of each array; the payload is the arrays' raw little-endian bytes, concatenated in header
order and compressed. The SHA-256 catches corruption, not forgery (it has no key).

:func:`decode` checks, in this order, and raises :class:`SummaryError` with the first
failed check's reason (one of :data:`REASONS`): size (``too_large``), framing
(``malformed``), digest (``bad_checksum``), header (``malformed``), format and model
version (``wrong_version``), kind (``wrong_kind``), group (``wrong_group``), payload
(``malformed``, or ``too_large`` for a payload declaring more than :data:`MAX_RAW` bytes)
and the kind's shapes (``wrong_shape``). Merging refuses different fingerprints with
``mismatch``.

>>> from datetime import datetime, timezone
>>> s = Summary("mahalanobis", "pump", "edge-1", "plant-a", "v1", "f00d", 3,
...             datetime(2024, 7, 1, tzinfo=timezone.utc), {"d": 1},
...             {"mean": np.zeros(1), "m2": np.zeros(1)})
>>> data = encode(s)
>>> len(data), decode(data, expect_group="plant-a").node
(287, 'edge-1')
>>> decode(data[:-1] + b"x")
Traceback (most recent call last):
...
models.summaries.SummaryError: bad_checksum: digest differs: corrupted in transit
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ["BAD_CHECKSUM", "FORMAT_VERSION", "KINDS", "MALFORMED", "MAX_BYTES", "MAX_RAW",
           "MISMATCH", "REASONS", "TOO_LARGE", "WRONG_GROUP", "WRONG_KIND", "WRONG_SHAPE",
           "WRONG_VERSION", "Summary", "SummaryError", "decode", "decode_like", "encode", "fedavg",
           "fingerprint"]  # fmt: skip

FORMAT_VERSION = 1
"""Version of the wire format written by :func:`encode`; :func:`decode` reads only it."""
MAX_BYTES = 65_536
"""Largest encoded summary :func:`decode` accepts by default (and :func:`encode` writes)."""
MAX_RAW = 1 << 20
"""Largest payload a summary may declare, uncompressed: no zlib bomb gets past this."""
TOO_LARGE, MALFORMED, BAD_CHECKSUM = "too_large", "malformed", "bad_checksum"
WRONG_VERSION, WRONG_KIND, WRONG_SHAPE = "wrong_version", "wrong_kind", "wrong_shape"
WRONG_GROUP, MISMATCH = "wrong_group", "mismatch"
REASONS = frozenset({TOO_LARGE, MALFORMED, BAD_CHECKSUM, WRONG_VERSION, WRONG_KIND,
                     WRONG_SHAPE, WRONG_GROUP, MISMATCH})  # fmt: skip
"""Every :attr:`SummaryError.reason`: a fixed small set, fit for a metric label."""

_MAGIC = b"EWSM"
_DIGEST = 32
_DTYPES = frozenset({"<f8", "<f4", "<i8", "<u4", "|u1"})


class SummaryError(ValueError):
    """A summary refused: ``reason`` from :data:`REASONS`, ``detail`` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _hst_shapes(meta: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    height, n_trees = int(meta["height"]), int(meta["n_trees"])
    buckets, edges = int(meta["buckets"]), len(meta["level_edges"])
    if not (0 < height <= 24 and 0 < n_trees <= 1024 and 0 <= buckets <= min(edges + 1, 256)):
        msg = f"implausible HST size: height {height}, n_trees {n_trees}, buckets {buckets}"
        raise ValueError(msg)
    nodes = n_trees * (2 ** (height + 1) - 1)
    return {"buckets": (buckets,), "windows": (buckets,), "masses": (buckets, nodes)}


KINDS: dict[str, Callable[[Mapping[str, Any]], dict[str, tuple[int, ...]]]] = {
    "mahalanobis": lambda m: {"mean": (int(m["d"]),), "m2": (math.comb(int(m["d"]) + 1, 2),)},
    "hst": _hst_shapes,
    "sketch": lambda m: {"sketch": (int(m["size"]),)},
    "pump": lambda m: {"mean": (int(m["d"]),), "m2": (math.comb(int(m["d"]) + 1, 2),),
                       "within": (math.comb(int(m["d"]) + 1, 2),), "lag": (int(m["d"]) ** 2,),
                       "sketch": (int(m["size"]),)},
}  # fmt: skip
"""Each kind, with the array shapes its ``meta`` implies."""


@dataclasses.dataclass(frozen=True, eq=False)
class Summary:
    """One model's (or a merged fleet's) summary.

    Attributes:
        kind: One of :data:`KINDS`.
        flow: The flow the model serves (``"air_quality"``, ...).
        node: Who made it (an edge node, or ``"*"`` for a merge).
        group: Fleet group it belongs to; merges stay within a group.
        model_version: The caller's model version (e.g. a config or artifact version).
        fingerprint: Digest of the parameters that must match for a merge (:func:`fingerprint`).
        count: Samples summarised.
        created_at: tz-aware creation time (a merge takes its parts' latest).
        meta: Kind-specific JSON values (parameters).
        arrays: Kind-specific arrays, by name.
    """

    kind: str
    flow: str
    node: str
    group: str
    model_version: str
    fingerprint: str
    count: int
    created_at: datetime
    meta: Mapping[str, Any]
    arrays: Mapping[str, npt.NDArray[Any]]


def fingerprint(kind: str, params: Mapping[str, Any]) -> str:
    """A short digest of ``kind`` and the JSON-able ``params`` (key order does not count).

    >>> fingerprint("sketch", {"k": 200}) == fingerprint("sketch", {"k": 200})
    True
    """
    text = orjson.dumps([kind, params], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()[:16]


def encode(summary: Summary, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The wire bytes of ``summary``.

    Raises:
        SummaryError: ``too_large`` beyond ``max_bytes``; ``wrong_shape`` or ``wrong_kind``
            if the summary is not valid for its kind.
    """
    _check_arrays(summary.kind, summary.meta, summary.arrays)
    arrays = {name: np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
              for name, a in summary.arrays.items()}  # fmt: skip
    header = {"format": FORMAT_VERSION, "kind": summary.kind, "flow": summary.flow,
              "node": summary.node, "group": summary.group,
              "model_version": summary.model_version, "fingerprint": summary.fingerprint,
              "count": summary.count, "created_at": summary.created_at.isoformat(),
              "meta": dict(summary.meta),
              "arrays": [[n, a.dtype.str, list(a.shape)] for n, a in arrays.items()]}  # fmt: skip
    head = orjson.dumps(header)
    payload = zlib.compress(b"".join(a.tobytes() for a in arrays.values()), 6)
    body = _MAGIC + struct.pack("<I", len(head)) + head + payload
    data = body + hashlib.sha256(body).digest()
    if len(data) > max_bytes:
        msg = f"{len(data)} bytes encoded, more than {max_bytes}"
        raise SummaryError(TOO_LARGE, msg)
    return data


def decode(
    data: bytes,
    *,
    expect_kind: str | None = None,
    expect_version: str | None = None,
    expect_group: str | None = None,
    max_bytes: int = MAX_BYTES,
) -> Summary:
    """The summary that ``data`` encodes, checked (see the module docstring for the order).

    Args:
        data: Bytes from :func:`encode`.
        expect_kind: Refuse another kind (``wrong_kind``).
        expect_version: Refuse another ``model_version`` (``wrong_version``).
        expect_group: Refuse another group (``wrong_group``).
        max_bytes: Refuse longer ``data`` (``too_large``) before reading it.

    Raises:
        SummaryError: On the first failed check.
    """
    if len(data) > max_bytes:
        msg = f"{len(data)} bytes, more than {max_bytes}"
        raise SummaryError(TOO_LARGE, msg)
    if len(data) < len(_MAGIC) + 4 + _DIGEST or data[:4] != _MAGIC:
        msg = "not a summary: bad magic or too short"
        raise SummaryError(MALFORMED, msg)
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        msg = "digest differs: corrupted in transit"
        raise SummaryError(BAD_CHECKSUM, msg)
    (size,) = struct.unpack_from("<I", body, 4)
    header = _header(body[8 : 8 + size])
    checks = ((WRONG_VERSION, "format", FORMAT_VERSION),
              (WRONG_VERSION, "model_version", expect_version),
              (WRONG_KIND, "kind", expect_kind), (WRONG_GROUP, "group", expect_group))  # fmt: skip
    for reason, key, expected in checks:
        if expected is not None and header[key] != expected:
            msg = f"{key} is {header[key]!r}, expected {expected!r}"
            raise SummaryError(reason, msg)
    if header["kind"] not in KINDS:
        msg = f"unknown kind {header['kind']!r}"
        raise SummaryError(WRONG_KIND, msg)
    arrays = _payload(body[8 + size :], header["arrays"])
    _check_arrays(header["kind"], header["meta"], arrays)
    created = datetime.fromisoformat(header["created_at"])
    return Summary(header["kind"], header["flow"], header["node"], header["group"],
                   header["model_version"], header["fingerprint"], header["count"],
                   created, header["meta"], arrays)  # fmt: skip


def decode_like(data: bytes, template: Summary) -> Summary:
    """The summary ``data`` holds, checked against ``template``.

    It must have the template's kind, model version and group (as :func:`decode`
    checks), flow and parameter fingerprint (else ``mismatch``).

    Raises:
        SummaryError: With the reason of the first check that failed.
    """
    t = template
    s = decode(data, expect_kind=t.kind, expect_version=t.model_version, expect_group=t.group)
    if s.fingerprint != t.fingerprint or s.flow != t.flow:
        msg = f"parameters {s.fingerprint} of {s.flow}, expected {t.fingerprint} of {t.flow}"
        raise SummaryError(MISMATCH, msg)
    return s


def _header(raw: bytes) -> dict[str, Any]:
    """The parsed header, its fields' types checked."""
    types = {"format": int, "kind": str, "flow": str, "node": str, "group": str,
             "model_version": str, "fingerprint": str, "count": int, "created_at": str,
             "meta": dict, "arrays": list}  # fmt: skip
    try:
        header = orjson.loads(raw)
        ok = isinstance(header, dict) and all(
            isinstance(header.get(k), t) for k, t in types.items())  # fmt: skip
        ok = ok and datetime.fromisoformat(header["created_at"]).tzinfo is not None
    except (orjson.JSONDecodeError, ValueError) as error:
        msg = f"bad header: {error}"
        raise SummaryError(MALFORMED, msg) from error
    if not ok or header["count"] < 0:
        msg = "bad header: a field is missing or of the wrong type"
        raise SummaryError(MALFORMED, msg)
    return header  # type: ignore[no-any-return]


def _payload(raw: bytes, specs: list[Any]) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a payload, from the header's ``[name, dtype, shape]`` specs."""
    try:
        names = [str(n) for n, _, _ in specs]
        dtypes = [np.dtype(t) for _, t, _ in specs if t in _DTYPES]
        shapes = [tuple(int(k) for k in shape) for _, _, shape in specs]
    except (TypeError, ValueError) as error:
        msg = f"bad array specs: {error}"
        raise SummaryError(MALFORMED, msg) from error
    if len(dtypes) != len(specs) or len(set(names)) != len(names) or any(
            k < 0 for shape in shapes for k in shape):  # fmt: skip
        msg = "bad array specs: dtype, name or shape"
        raise SummaryError(MALFORMED, msg)
    sizes = [t.itemsize * int(np.prod(s)) for t, s in zip(dtypes, shapes, strict=True)]
    if sum(sizes) > MAX_RAW:
        msg = f"payload declares {sum(sizes)} bytes, more than {MAX_RAW}"
        raise SummaryError(TOO_LARGE, msg)
    try:
        inflate = zlib.decompressobj()
        flat = inflate.decompress(raw, sum(sizes) + 1)
        complete = inflate.eof and not inflate.unconsumed_tail and not inflate.unused_data
    except zlib.error as error:
        msg = f"bad payload: {error}"
        raise SummaryError(MALFORMED, msg) from error
    if not complete or len(flat) != sum(sizes):
        msg = "payload length differs from the array specs"
        raise SummaryError(MALFORMED, msg)
    ends = np.cumsum([0, *sizes]).tolist()
    return {name: np.frombuffer(flat, t, int(np.prod(s)), a).reshape(s).copy()
            for name, t, s, a in zip(names, dtypes, shapes, ends, strict=False)}  # fmt: skip


def _check_arrays(kind: str, meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """Refuse a kind we do not know, or arrays whose names or shapes its meta denies."""
    if kind not in KINDS:
        msg = f"unknown kind {kind!r}"
        raise SummaryError(WRONG_KIND, msg)
    try:
        expected = KINDS[kind](meta)
    except (KeyError, TypeError, ValueError) as error:
        msg = f"meta lacks a size: {error!r}"
        raise SummaryError(WRONG_SHAPE, msg) from error
    shapes = {name: tuple(np.shape(a)) for name, a in arrays.items()}
    if shapes != expected:
        msg = f"{kind} arrays {shapes}, expected {expected}"
        raise SummaryError(WRONG_SHAPE, msg)


def fedavg(weights_list: Sequence[Sequence[npt.ArrayLike]], counts: Sequence[int]) -> list[
        npt.NDArray[np.float64]]:  # fmt: skip
    """Federated averaging: the layers' mean over models, each weighted by its sample count.

    Computed in float64. Associative when counts travel along: averaging ``a`` and ``b``
    and then that (count ``na + nb``) with ``c`` equals averaging all three, to rounding.

    >>> [w.tolist() for w in fedavg([[np.array([0.0, 2.0])], [np.array([4.0, 2.0])]], [3, 1])]
    [[1.0, 2.0]]

    Raises:
        ValueError: No models, a count below 1, or layers that differ in number or shape.
    """
    if not weights_list or len(counts) != len(weights_list) or min(counts) < 1:
        msg = f"need one positive count per model, got {list(counts)} for {len(weights_list)}"
        raise ValueError(msg)
    models = [[np.asarray(w, dtype=np.float64) for w in ws] for ws in weights_list]
    shapes = [w.shape for w in models[0]]
    for i, layers in enumerate(models):
        if [w.shape for w in layers] != shapes:
            msg = f"model {i} has layer shapes {[w.shape for w in layers]}, expected {shapes}"
            raise ValueError(msg)
    share = np.asarray(counts, dtype=np.float64) / float(sum(counts))
    return [np.tensordot(share, np.stack([layers[j] for layers in models]), axes=1)
            for j in range(len(shapes))]  # fmt: skip
