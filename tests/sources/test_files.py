from __future__ import annotations

from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from operators.parse import parse_message
from operators.records import Invalid, Reading
from sources.files import (
    SKAB_LABEL_COLUMNS,
    CSVSource,
    JSONLSource,
    nab_source,
    read_labels,
    skab_source,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SKAB = DATA / "skab"
needs_skab = pytest.mark.skipif(not SKAB.is_dir(), reason=f"shared data not present: {SKAB}")

Message = tuple[str, Any, float]


def drain(source: CSVSource | JSONLSource, part_name: str, resume: Any = None) -> Any:
    part = source.build_part("files", part_name, resume)
    out: list[Message] = []
    try:
        while True:
            try:
                out.extend(part.next_batch())
            except StopIteration:
                return out, part.snapshot()
    finally:
        part.close()


def test_jsonl_passes_every_nonblank_line_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": 1}}\n'
        b"\n"
        b'{"sensor_id": "a", "ts": \n'
        b"   \r\n"
        b'{"sensor_id": "b", "ts": "2024-04-01T00:00:00Z", "values": {"x": null}}\r\n'
        b"\xff\xfe not json"
    )
    source = JSONLSource(path)
    (name,) = source.list_parts()
    out, snapshot = drain(source, name)
    assert [(o, p) for o, p, _ in out] == [
        (f"{path}:1", b'{"sensor_id": "a", "ts": 1711929600, "values": {"x": 1}}'),
        (f"{path}:3", b'{"sensor_id": "a", "ts": '),
        (f"{path}:5", b'{"sensor_id": "b", "ts": "2024-04-01T00:00:00Z", "values": {"x": null}}'),
        (f"{path}:6", b"\xff\xfe not json"),
    ]
    assert snapshot == (path.stat().st_size, 6)
    kinds = [type(x).__name__ for m in out for x in parse_message(*m)]
    assert kinds == ["Reading", "Invalid", "Reading", "Invalid"]


def test_jsonl_resumes_at_byte_offset_and_line(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for i, path in enumerate(paths):
        path.write_text("".join(f'{{"n": {i * 100 + n}}}\n' for n in range(7)))
    source = JSONLSource([str(p) for p in paths], batch_size=3)
    assert source.list_parts() == [f"jsonl:{p}" for p in paths]
    name = source.list_parts()[1]
    whole, _ = drain(source, name)
    part = source.build_part("files", name, None)
    first = part.next_batch()
    rest, _ = drain(source, name, part.snapshot())
    assert [(o, p) for o, p, _ in first + rest] == [(o, p) for o, p, _ in whole]
    assert rest[0][0] == f"{paths[1]}:4" and len(whole) == 7


def test_csv_converts_cells_and_keeps_what_it_cannot(tmp_path: Path) -> None:
    path = tmp_path / "plant.csv"
    path.write_text(
        "\ufefftimestamp,device,temp,note,flow\n"
        "2024-04-01 00:00:00,d1,21.5,,3\n"
        "\n"
        "2024-04-01T00:01:00Z,d2, 22 ,hot,n/a\n"
        "1711929720,d1,,,1e3\n"
        '"2024-04-01 00:03:00+02:00",d1,"1,5",x\n'
        "later,d3,1,2,3\n",
        encoding="utf-8",
    )
    source = CSVSource(path, sensor_id="device", drop_columns=["note"])
    out, _ = drain(source, f"csv:{path}")
    assert [o for o, _, _ in out] == [f"{path}:{n}" for n in (2, 4, 5, 6, 7)]
    assert [p for _, p, _ in out] == [
        {"sensor_id": "d1", "ts": "2024-04-01T00:00:00+00:00",
         "values": {"temp": 21.5, "flow": 3.0}},
        {"sensor_id": "d2", "ts": "2024-04-01T00:01:00+00:00",
         "values": {"temp": 22.0, "flow": "n/a"}},
        {"sensor_id": "d1", "ts": 1711929720.0, "values": {"temp": None, "flow": 1000.0}},
        {"_malformed_row": ["2024-04-01 00:03:00+02:00", "d1", "1,5", "x"],
         "fields": ["timestamp", "device", "temp", "note", "flow"]},
        {"sensor_id": "d3", "ts": "later", "values": {"temp": 1.0, "flow": 3.0}},
    ]  # fmt: skip
    results = [x for m in out for x in parse_message(*m)]
    assert isinstance(results[0], Reading) and isinstance(results[2], Reading)
    reasons = [x.reason for x in results if isinstance(x, Invalid)]
    assert reasons == ["non_numeric_value", "malformed_row", "bad_timestamp"]
    default = CSVSource(path, sensor_id_default="plant-7")
    first = drain(default, f"csv:{path}")[0][0][1]
    assert first["sensor_id"] == "plant-7" and first["values"]["device"] == "d1"


def test_csv_resume_mid_file_and_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    rows = [f'2024-04-01 00:{n:02d}:00,{n},"line\nbreak"\n' for n in range(9)]
    path.write_text("timestamp,v,text\n" + "".join(rows))
    source = CSVSource(path, batch_size=4)
    whole, snapshot = drain(source, f"csv:{path}")
    assert [o for o, _, _ in whole][:3] == [f"{path}:2", f"{path}:4", f"{path}:6"]
    part = source.build_part("files", f"csv:{path}", None)
    first = part.next_batch()
    assert part.snapshot() == (len(("timestamp,v,text\n" + "".join(rows[:4])).encode()), 9)
    rest, end = drain(source, f"csv:{path}", part.snapshot())
    assert [m[:2] for m in first + rest] == [m[:2] for m in whole]
    assert end == snapshot and whole[8][1]["values"] == {"v": 8.0, "text": "line\nbreak"}


def test_csv_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        CSVSource(tmp_path / "nope.csv")
    path = tmp_path / "x.csv"
    path.write_text("time,value\n1,2\n")
    part = CSVSource(path).build_part("files", f"csv:{path}", None)
    with pytest.raises(ValueError, match="no column timestamp"):
        part.next_batch()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert drain(CSVSource(empty), f"csv:{empty}")[0] == []


def test_nab_file(tmp_path: Path) -> None:
    path = tmp_path / "ec2_cpu_utilization_5f5533.csv"
    path.write_text("timestamp,value\n2014-02-14 14:27:00,51.846\n2014-02-14 14:32:00,44.508\n")
    source = nab_source([path])
    out, _ = drain(source, source.list_parts()[0])
    assert [p for _, p, _ in out] == [
        {"sensor_id": path.stem, "ts": "2014-02-14T14:27:00+00:00", "values": {"value": 51.846}},
        {"sensor_id": path.stem, "ts": "2014-02-14T14:32:00+00:00", "values": {"value": 44.508}},
    ]
    assert read_labels(path, "nab") == [None, None]


@needs_skab
def test_skab_real_file_drops_labels() -> None:
    path = SKAB / "valve1" / "0.csv"
    source = skab_source(path)
    out, _ = drain(source, f"csv:{path}")
    lines = path.read_bytes().splitlines()
    assert len(out) == len(lines) - 1
    header = lines[0].decode().split(";")
    assert set(SKAB_LABEL_COLUMNS) <= set(header)
    for _, payload, _ in out:
        assert set(payload["values"]) == set(header) - {"datetime", *SKAB_LABEL_COLUMNS}
    assert out[0][1]["sensor_id"] == "0"
    assert out[0][1]["ts"] == lines[1].decode().split(";")[0].replace(" ", "T") + "+00:00"
    labels = read_labels(path, "skab")
    assert len(labels) == len(out) and set(labels) == {0, 1}
    anomaly = header.index("anomaly")
    assert labels == [int(float(line.decode().split(";")[anomaly])) for line in lines[1:]]
    assert all(isinstance(x, Reading) for m in out[:50] for x in parse_message(*m))


@needs_skab
def test_skab_files_run_in_a_bytewax_dataflow() -> None:
    paths = [SKAB / "valve1" / "1.csv", SKAB / "anomaly-free" / "anomaly-free.csv"]
    out: list[Message] = []
    flow = Dataflow("skab_test")
    op.output("out", op.input("in", flow, skab_source(paths)), TestingSink(out))
    run_main(flow)
    sizes = [len(p.read_bytes().splitlines()) - 1 for p in paths]
    assert len(out) == sum(sizes)
    assert sum(p["sensor_id"] == "anomaly-free" for _, p, _ in out) == sizes[1]
    free = read_labels(paths[1], "skab")
    assert len(free) == sizes[1] and set(free) == {None}  # no label column in that file
