"""Every edgewatch metric: names, labels, values after a real flow run, and the endpoint."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from dataflows.air_quality import FLOW_NAME, build_flow
from dataflows.settings import Settings
from operators.records import Reading, Scored
from sinks.metrics import (
    LAG_BUCKETS,
    SCORE_BUCKETS,
    ScoreMetricsSink,
    SecurityAlertMetricsSink,
    metrics,
    prepare_security,
    serve,
)

ALLOWED_LABELS = {"flow", "detector", "reason", "severity", "field", "label"}  # label: feedback
T0 = datetime(2024, 4, 1, tzinfo=timezone.utc)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def edgewatch_families() -> Iterator[Metric]:
    metrics()
    for family in REGISTRY.collect():
        if family.name.startswith("edgewatch_"):
            yield family


def test_names_units_and_labels_follow_the_rules() -> None:
    run_main(build_flow(Settings.load(env={}, sim_sensors=3, sim_duration_s=7200, alerts_path="")))
    families = {f.name: f for f in edgewatch_families()}
    assert set(families) == {
        "edgewatch_events", "edgewatch_invalid", "edgewatch_imputed", "edgewatch_alerts",
        "edgewatch_deadletters", "edgewatch_anomaly_score", "edgewatch_event_lag_seconds",
        "edgewatch_inference_seconds", "edgewatch_active_sensors", "edgewatch_mqtt_connected",
        "edgewatch_mqtt_reconnects", "edgewatch_model", "edgewatch_build", "edgewatch_feedback",
        "edgewatch_fleet_summaries_published", "edgewatch_fleet_summaries_rejected",
        "edgewatch_fleet_priors", "edgewatch_security_alerts",
    }  # fmt: skip
    for name, family in families.items():
        for s in family.samples:
            if family.type == "counter":
                assert s.name in (f"{name}_total", f"{name}_created"), s.name
            if family.type == "info":
                assert s.name == f"{name}_info" and s.value == 1
            else:
                assert set(s.labels) - {"le"} <= ALLOWED_LABELS, (s.name, s.labels)
    build = next(s for s in families["edgewatch_build"].samples)
    assert set(build.labels) == {"version", "bytewax", "python"}
    model = next(s for s in families["edgewatch_model"].samples if s.labels["flow"] == FLOW_NAME)
    assert model.labels["detector"] == "hst" and "window_size=72" in model.labels["params"]


def test_a_flow_run_counts_events_scores_lag_and_model_calls() -> None:
    before = {n: sample(n, flow=FLOW_NAME, detector="hst") for n in (
        "edgewatch_events_total", "edgewatch_anomaly_score_count",
        "edgewatch_inference_seconds_count", "edgewatch_inference_seconds_sum")}  # fmt: skip
    lag_before = sample("edgewatch_event_lag_seconds_count", flow=FLOW_NAME)
    batches: list[tuple[str, Scored]] = []
    settings = Settings.load(env={}, sim_sensors=4, sim_duration_s=21_600, alerts_path="")
    run_main(build_flow(settings, on_scored=batches.extend))

    n = sum(len(s) for _, s in batches)
    assert n == 4 * 180
    delta = {k: sample(k, flow=FLOW_NAME, detector="hst") - v for k, v in before.items()}
    assert delta["edgewatch_events_total"] == n
    assert delta["edgewatch_anomaly_score_count"] == n
    assert delta["edgewatch_inference_seconds_count"] == len(batches)  # one per model call
    assert 0 < delta["edgewatch_inference_seconds_sum"] < 5
    # Simulated readings are from 2024: their lag is beyond the top bucket.
    assert sample("edgewatch_event_lag_seconds_count", flow=FLOW_NAME) - lag_before == n
    assert sample("edgewatch_active_sensors", flow=FLOW_NAME) == 4


def _reading(sid: str, ts: datetime, received_at: float, imputed: tuple[str, ...] = ()) -> Reading:
    return Reading(sid, ts, {"x": 1.0}, "test", imputed, received_at)


def test_score_sink_histogram_buckets_and_imputed_by_field() -> None:
    r = _reading("a", T0, 0.0, ("humidity",))
    items = [
        ("a", Scored((r, r, r), "det1", np.array([0.04, 0.7, 0.71]))),
        ("b", Scored((r,), "det1", np.array([1.0]))),
        ("c", Scored((r,), "det2", np.array([np.nan]))),
    ]
    flow = Dataflow("score_sink_test")
    op.output("out", op.input("in", flow, TestingSource(items)), ScoreMetricsSink("sink1"))
    run_main(flow)

    def bucket(le: float) -> float:
        return sample("edgewatch_anomaly_score_bucket", flow="sink1", detector="det1", le=str(le))

    assert [bucket(le) for le in (0.05, 0.65, 0.7, 0.75, 1.0)] == [1, 1, 2, 3, 4]
    assert sample("edgewatch_anomaly_score_bucket", flow="sink1", detector="det1",
                  le="+Inf") == 4  # fmt: skip
    assert sample("edgewatch_anomaly_score_sum", flow="sink1", detector="det1") == pytest.approx(
        0.04 + 0.7 + 0.71 + 1.0
    )
    assert sample("edgewatch_events_total", flow="sink1", detector="det2") == 1  # NaN: counted
    assert sample("edgewatch_anomaly_score_count", flow="sink1", detector="det2") == 0
    assert sample("edgewatch_imputed_total", flow="sink1", field="humidity") == 5
    assert len(SCORE_BUCKETS) == 15


def test_score_sink_lag_buckets_and_active_sensors_expire() -> None:
    now = time.time()
    ts = datetime.fromtimestamp(now - 3.0, timezone.utc)
    items = [_reading("s1", ts, now), _reading("s2", ts, now - 2.93),
             _reading("s3", ts - timedelta(days=2), now), _reading("s4", ts, 0.0)]  # fmt: skip
    batches = [("k1", Scored(tuple(items[:3]), "hst", np.zeros(3))),
               ("k2", Scored(tuple(items[3:]), "hst", np.zeros(1)))]  # fmt: skip
    flow = Dataflow("reading_sink_test")
    op.output("out", op.input("in", flow, TestingSource(batches)), ScoreMetricsSink("sink2", 1.0))
    run_main(flow)

    def bucket(le: str) -> float:
        return sample("edgewatch_event_lag_seconds_bucket", flow="sink2", le=le)

    assert bucket("0.1") == 1 and bucket("5.0") == 2 and bucket("86400.0") == 2
    assert bucket("+Inf") == 3  # no receive time: no lag
    assert sample("edgewatch_event_lag_seconds_sum", flow="sink2") == pytest.approx(
        3.0 + 0.07 + 2 * 86_400 + 3.0
    )
    assert sample("edgewatch_active_sensors", flow="sink2") == 4
    time.sleep(1.1)
    assert sample("edgewatch_active_sensors", flow="sink2") == 0
    assert LAG_BUCKETS[-1] == 86_400


def test_dead_letters_count_only_with_a_destination(tmp_path: Path) -> None:
    def run(deadletter_path: str) -> float:
        before = sample("edgewatch_deadletters_total", flow=FLOW_NAME)
        source = TestingSource([("t", b"{oops", time.time()), ("t", b"[]", time.time())])
        settings = Settings.load(env={}, alerts_path="", deadletter_path=deadletter_path)
        run_main(build_flow(settings, source=source))
        return sample("edgewatch_deadletters_total", flow=FLOW_NAME) - before

    assert run(f"{tmp_path}/dead.jsonl") == 2
    assert run("") == 0


def test_serve_exposes_every_metric_once_per_address() -> None:
    host, port = serve("127.0.0.1:0")
    assert (host, port) == serve("127.0.0.1:0") and port > 0
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "edgewatch_build_info{" in text and "# TYPE edgewatch_anomaly_score histogram" in text
    for bad in ("9464", "host:port", "127.0.0.1:99999"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            serve(bad)


def test_security_alerts_are_counted_by_reason() -> None:
    prepare_security(["messages", "auth_failures"])
    before = sample("edgewatch_security_alerts_total", reason="auth_failures")
    assert sample("edgewatch_security_alerts_total", reason="messages") >= 0.0
    SecurityAlertMetricsSink().build("t", 0, 1).write_batch(["auth_failures", "auth_failures"])
    assert sample("edgewatch_security_alerts_total", reason="auth_failures") == before + 2
