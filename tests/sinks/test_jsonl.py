from __future__ import annotations

from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from prometheus_client import REGISTRY

from sinks.jsonl import JSONLinesSink
from sinks.metrics import InvalidMetricsSink


def test_lines_are_appended_and_file_is_lazy(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "alerts.jsonl"
    for batch in ([b'{"a":1}', '{"b":2}'], []):
        flow = Dataflow("jsonl_test")
        op.output("out", op.input("in", flow, TestingSource(batch)), JSONLinesSink(target))
        run_main(flow)
    assert target.read_bytes() == b'{"a":1}\n{"b":2}\n'
    unused = tmp_path / "never.jsonl"
    flow = Dataflow("jsonl_empty")
    op.output("out", op.input("in", flow, TestingSource([])), JSONLinesSink(unused))
    run_main(flow)
    assert not unused.exists()


def test_invalid_metrics_count_by_reason() -> None:
    class Inv:
        def __init__(self, reason: str) -> None:
            self.reason = reason

    def value(reason: str) -> float:
        got = REGISTRY.get_sample_value(
            "edgewatch_invalid_total", {"flow": "sink_test", "reason": reason}
        )
        return got or 0.0

    before = value("malformed_json")
    flow = Dataflow("metrics_test")
    items = [Inv("malformed_json"), Inv("malformed_json"), Inv("bad_timestamp")]
    op.output("out", op.input("in", flow, TestingSource(items)), InvalidMetricsSink("sink_test"))
    run_main(flow)
    assert value("malformed_json") - before == 2
    assert value("bad_timestamp") >= 1
