"""Prometheus config and alert rules (promtool), Grafana provisioning and dashboard shape."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO

PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "edgewatch.json"
PANELS = ("Throughput", "Alerts by detector", "Anomaly score distribution",
          "Invalid messages by reason", "Event lag p99", "Inference latency",
          "MQTT connection")  # fmt: skip


def promtool_run(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_accepts_the_config_and_rules(promtool: str) -> None:
    out = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out
    assert "SUCCESS: 5 rules found" in promtool_run(promtool, "check", "rules", "alerts.yml")


def test_alert_rules_fire_exactly_when_they_should(promtool: str) -> None:
    assert "SUCCESS" in promtool_run(promtool, "test", "rules", "alerts.test.yml")


def test_promtool_refuses_a_broken_rule(promtool: str, tmp_path: Any) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: A\n    expr: rate(x[5m]\n")
    done = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0  # the checks above can fail


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_dashboard_uses_the_provisioned_datasource_everywhere() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (ds,) = sources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dashboard = load_dashboard()
    refs = [p["datasource"] for p in dashboard["panels"]]
    refs += [t["datasource"] for p in dashboard["panels"] for t in p["targets"]]
    refs += [v["datasource"] for v in dashboard["templating"]["list"]]
    assert refs and all(r == {"type": "prometheus", "uid": ds["uid"]} for r in refs)


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "edgewatch" and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert set(PANELS) <= {p["title"] for p in panels}
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}  # fmt: skip
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() for t in p["targets"]) and p["description"]
        assert p["type"] in {"timeseries", "heatmap", "bargauge", "state-timeline", "stat",
                             "table"}  # fmt: skip


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/edgewatch.yml").read_text())
    (p,) = provider["providers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{p['options']['path']}:ro" in mounts
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{p['options']['path']}/edgewatch.json"


@pytest.mark.parametrize("panel", PANELS)
def test_each_required_panel_queries_edgewatch_metrics(panel: str) -> None:
    (p,) = [p for p in load_dashboard()["panels"] if p["title"] == panel]
    assert all("edgewatch_" in t["expr"] for t in p["targets"])
