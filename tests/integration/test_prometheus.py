"""A real Prometheus scrapes a running flow; every dashboard and alert query returns data.

The flow runs as in docker compose (``python -m bytewax.run dataflows.air_quality:flow``
on an MQTT broker, configured by ``EDGEWATCH_*``) and reads a simulated fleet published
with live timestamps. Prometheus (Debian's binary) scrapes it every second with the
compose scrape job and ``deploy/prometheus/alerts.yml``. The test then drives the flow
through the states the alert rules are about — healthy, an alert storm with invalid
input, a broker outage, the flow stopped — and checks each rule's expression returns
nothing when healthy and data in its state, and that Prometheus itself marks the alert
pending or firing. Every query of the Grafana dashboard is evaluated through
``/api/v1/query`` (Grafana's variables filled in as Grafana would) and must return a
finite value; the values are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sources.simulator import Simulator, SimulatorConfig
from tests.integration.broker import (
    PASSWORD,
    USER,
    Broker,
    find_binary,
    free_port,
    mqtt_client,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "edgewatch.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
FLOW = "air_quality"
SENSORS, HEALTHY_READINGS, SPIKES, GARBAGE = 20, 100, 44, 400


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    binary = find_binary("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: make system-deps)")
    return binary


class Prometheus:
    """A Prometheus server on 127.0.0.1 with the compose scrape job, every second."""

    def __init__(self, binary: str, root: Path, target: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        job = re.search(r"job_name: (\S+)", (DEPLOY / "prometheus/prometheus.yml").read_text())
        assert job is not None and job.group(1) == "edgewatch"
        config = {  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": job.group(1),
                                "static_configs": [{"targets": [target]}]}],
        }  # fmt: skip
        (root / "prometheus.yml").write_text(json.dumps(config))
        self.log = (root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._ready, 30, "Prometheus ready", step=0.1)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1):
                return True
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector (or scalar as one sample) of ``expr`` at the latest scrape."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def rules(self) -> dict[str, dict[str, Any]]:
        groups = self.api("rules", type="alert")["groups"]
        return {r["name"]: r for g in groups for r in g["rules"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def value(expr: str, prom: Prometheus) -> float:
    """The sum of an instant query's values (0 when empty)."""
    return sum(float(s["value"][1]) for s in prom.query(expr))


def readings() -> Iterator[tuple[str, dict[str, Any]]]:
    """The simulated fleet, in time order, as ``(topic, PurpleAir row)``."""
    cfg = SimulatorConfig(sensors=SENSORS, duration_s=HEALTHY_READINGS * 120, seed=5)
    for row in Simulator(cfg).payloads():
        yield f"sensors/{row['sensor_index']}/readings", row


def publish_live(broker: Broker, messages: list[tuple[str, dict[str, Any] | bytes]]) -> None:
    """Publish at QoS 1 with event time = now (rows), wait for every PUBACK."""
    client = mqtt_client(broker)
    try:
        infos = []
        for topic, payload in messages:
            data = payload
            if isinstance(payload, dict):
                data = orjson.dumps({**payload, "last_seen": time.time()})
            infos.append(client.publish(topic, data, qos=1))
        for info in infos:
            info.wait_for_publish(20)
        assert all(info.is_published() for info in infos)
    finally:
        client.disconnect()
        client.loop_stop()


def spikes(last: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any] | bytes]]:
    """``SPIKES`` readings per sensor far above anything it sent: each one alerts."""
    rng = random.Random(1)
    out: list[tuple[str, dict[str, Any] | bytes]] = []
    for _ in range(SPIKES):
        for topic, row in last.items():
            out.append((topic, {**row, "pm1.0_cf_1": rng.uniform(300, 1150)}))
    return out


def garbage(n: int) -> list[tuple[str, dict[str, Any] | bytes]]:
    return [(f"sensors/g{i % 7}/readings", b"{not json" if i % 2 else b"[1, 2]") for i in range(n)]


def rule_exprs(prom: Prometheus) -> dict[str, str]:
    exprs = {name: rule["query"] for name, rule in prom.rules().items()}
    assert set(exprs) == {"EdgewatchNoData", "EdgewatchHighInvalidRate", "EdgewatchAlertStorm",
                          "EdgewatchMQTTDisconnected", "EdgewatchSecurityAlert"}  # fmt: skip
    return exprs


def wait_alert_active(prom: Prometheus, name: str) -> None:
    wait_until(lambda: prom.rules()[name]["state"] in ("pending", "firing"), 15,
               f"Prometheus to evaluate {name} as pending/firing", step=0.2)  # fmt: skip


def fill_variables(expr: str, variables: dict[str, str]) -> str:
    """Grafana's substitution: ``$__rate_interval``, ``$__range`` and the template vars."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
    for name, val in variables.items():
        expr = expr.replace(f"${name}", val)
    assert "$" not in expr, expr
    return expr


def resolve_variables(prom: Prometheus, dashboard: dict[str, Any]) -> dict[str, str]:
    """Run each ``label_values(selector, label)`` variable query as Grafana does."""
    out: dict[str, str] = {}
    for var in dashboard["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        assert m is not None, var
        selector = fill_variables(m.group(1), out)
        values = prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
        assert values, f"variable {var['name']}: no values for {selector}"
        out[var["name"]] = "|".join(values)
    return out


def evaluate_dashboard(prom: Prometheus) -> dict[str, dict[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = resolve_variables(prom, dashboard)
    assert variables == {"flow": FLOW, "detector": "hst"}
    report: dict[str, dict[str, str]] = {}
    for panel in dashboard["panels"]:
        shown = report.setdefault(panel["title"], {})
        for target in panel["targets"]:
            expr = fill_variables(target["expr"], variables)
            result = prom.query(expr)
            assert result, f"panel {panel['title']!r}: no data for {expr}"
            for sample in result:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample["metric"].items())
                                  if k not in ("__name__", "job", "instance"))  # fmt: skip
                val = float(sample["value"][1])
                assert math.isfinite(val), f"panel {panel['title']!r}: {expr} = {val}"
                shown[f"{target['refId']} {labels}"] = f"{val:.6g}"
    return report


def test_every_dashboard_and_alert_query_returns_data(
    broker: Broker, prometheus_binary: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEWATCH_SOURCE": "mqtt",
           "EDGEWATCH_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
           "EDGEWATCH_MQTT_USERNAME": USER, "EDGEWATCH_MQTT_PASSWORD": PASSWORD,
           "EDGEWATCH_MQTT_CLIENT_ID": "prom-flow", "EDGEWATCH_MQTT_NODE": "prom-test",
           "EDGEWATCH_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
           "EDGEWATCH_ALERTS_PATH": str(tmp_path / "alerts.jsonl"),
           "EDGEWATCH_DEADLETTER_PATH": str(tmp_path / "dead.jsonl")}  # fmt: skip
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.air_quality:flow", "-s", "1"]
    with (tmp_path / "flow.log").open("wb") as log:
        flow = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(prometheus_binary, tmp_path / "prom", f"127.0.0.1:{metrics_port}")
    t0 = time.monotonic()
    try:
        broker.wait_for_log(r"\nprom-flow 1 sensors/\+/readings", timeout=30)
        wait_until(lambda: value('up{job="edgewatch"}', prom) == 1, 15, "a scrape of the flow")
        exprs = rule_exprs(prom)

        # Healthy: a simulated fleet with a little invalid input; no rule fires.
        fleet = list(readings())
        last = {topic: row for topic, row in fleet}
        publish_live(broker, [*fleet, *garbage(10)])
        scored = len(fleet)
        wait_until(lambda: value("edgewatch_events_total", prom) >= scored, 20, "every reading")
        for name, expr in exprs.items():
            assert prom.query(expr) == [], f"{name} fires on a healthy flow"

        # Alert storm and invalid input: every spike alerts, 400 messages refused.
        publish_live(broker, [*spikes(last), *garbage(GARBAGE)])
        scored += SPIKES * SENSORS
        wait_until(lambda: value("edgewatch_events_total", prom) >= scored
                   and value("edgewatch_invalid_total", prom) >= GARBAGE + 10, 20,
                   "the storm scraped")  # fmt: skip
        for name in ("EdgewatchAlertStorm", "EdgewatchHighInvalidRate"):
            assert prom.query(exprs[name]), f"{name}: no data during the storm"
            wait_alert_active(prom, name)

        # The broker goes away: connected drops to 0; it comes back: one reconnect.
        broker.stop()
        wait_until(lambda: prom.query(exprs["EdgewatchMQTTDisconnected"]), 15, "disconnected")
        wait_alert_active(prom, "EdgewatchMQTTDisconnected")
        broker.start()
        wait_until(lambda: value("edgewatch_mqtt_reconnects_total", prom) >= 1
                   and value("edgewatch_mqtt_connected", prom) == 1, 30,
                   "the reconnect")  # fmt: skip
        publish_live(broker, [(t, {**row, "humidity": None}) for t, row in last.items()])
        scored += SENSORS
        wait_until(lambda: value("edgewatch_events_total", prom) >= scored, 20, "after restart")
        assert prom.query(exprs["EdgewatchMQTTDisconnected"]) == []

        report = evaluate_dashboard(prom)

        # The flow stops (SIGINT, as docker compose stops it): no data.
        flow.send_signal(signal.SIGINT)
        assert flow.wait(20) is not None
        wait_until(lambda: prom.query(exprs["EdgewatchNoData"]), 15, "the no-data alert")
        wait_alert_active(prom, "EdgewatchNoData")
    finally:
        if flow.poll() is None:
            flow.kill()
        prom.stop()
    elapsed = time.monotonic() - t0
    print(f"\nPrometheus integration: {elapsed:.1f} s from start to the no-data alert")
    for title, values in report.items():
        print(f"  {title}: " + "; ".join(f"{k.strip()} = {v}" for k, v in values.items()))
    assert value_of(report, "Active sensors") == SENSORS
    assert value_of(report, "MQTT reconnects") >= 1
    assert value_of(report, "Dead letters") >= GARBAGE
    assert report["Imputed values by field"]["A field=humidity"] != "0"


def value_of(report: dict[str, dict[str, str]], title: str) -> float:
    return sum(float(v) for v in report[title].values())
