"""docker-compose.yml, Dockerfile, .env.example and the mosquitto config, checked for real.

No Docker engine runs here: Debian's ``docker-compose config`` (1.29) validates and
resolves the compose file, the compose commands are parsed by the real CLI and settings,
and the broker config runs on a real mosquitto with the password file the init script
writes.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from dataflows.cli import _parser
from dataflows.local_broker import wait_until
from dataflows.settings import Cluster, Settings, bytewax_cluster
from tests.deploy.conftest import DEPLOY, REPO, deploy_broker, make_auth

SECRETS = ("MQTT_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
FLOW_IMAGES = ("edgewatch", "edgewatch-1", "edgewatch-security", "replayer",
               "replayer-purpleair")  # fmt: skip


def compose(docker_compose: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "MQTT_USERNAME"}
    return subprocess.run(
        [docker_compose, "--env-file", ".env.example", "--profile", "purpleair", "--profile",
         "scale", "--profile", "security", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False, env=clean | env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resolved(docker_compose: str) -> dict[str, Any]:
    done = compose(docker_compose, "config", MQTT_PASSWORD="pw-1", GRAFANA_ADMIN_PASSWORD="pw-2")
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_config_validates_every_service(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {"mosquitto-init", "mosquitto", "edgewatch", "edgewatch-1",
                                         "edgewatch-security", "replayer", "replayer-purpleair",
                                         "prometheus", "grafana"}  # fmt: skip
    assert resolved["services"]["mosquitto"]["depends_on"]["mosquitto-init"] == {
        "condition": "service_completed_successfully"
    }


def test_no_secret_in_the_repo_and_none_defaulted(docker_compose: str) -> None:
    example = dict(re.findall(r"^(\w+)=(.*)$", (REPO / ".env.example").read_text(), re.M))
    assert all(example[s] == "" for s in SECRETS)
    for secret in SECRETS:
        env = {s: "x" for s in SECRETS if s != secret}
        done = compose(docker_compose, "config", **env)
        assert done.returncode != 0 and f"set {secret} in .env" in done.stderr
    text = (REPO / "docker-compose.yml").read_text()
    for line in re.findall(r"^\s*\w*PASSWORD\w*:.*$", text, re.M):
        assert re.search(r":\s*\$\{\w+:\?[^}]*\}\s*$", line), line
    assert ".env" in (REPO / ".gitignore").read_text().split()


def port(spec: str | dict[str, Any]) -> tuple[str, int, int]:
    """``(host_ip, published, target)`` of a port in either form ``config`` prints."""
    if isinstance(spec, dict):
        return spec.get("host_ip", ""), int(spec["published"]), int(spec["target"])
    *host, published, target = spec.split("/")[0].split(":")
    return ":".join(host), int(published), int(target)


def test_ports_bound_to_localhost_except_mqtt(resolved: dict[str, Any]) -> None:
    published = {name: [port(p) for p in s.get("ports", [])]
                 for name, s in resolved["services"].items()}  # fmt: skip
    assert published.pop("mosquitto") == [("", 1883, 1883)]  # sensors must reach it
    assert published.pop("prometheus") == [("127.0.0.1", 9090, 9090)]
    assert published.pop("grafana") == [("127.0.0.1", 3000, 3000)]
    assert not any(published.values()), published  # the flow's metrics stay internal
    assert resolved["services"]["edgewatch"]["expose"] == ["9464", "2101"]
    assert resolved["services"]["edgewatch-1"]["expose"] == ["9465", "2101"]
    assert resolved["services"]["edgewatch-security"]["expose"] == ["9466"]


def test_flows_run_under_init_and_stop_on_sigint(resolved: dict[str, Any]) -> None:
    for name in FLOW_IMAGES:
        service = resolved["services"][name]
        assert service["init"] is True and service["stop_signal"] == "SIGINT", name
        assert service["image"] == "edgewatch:local" and "build" in service


def test_flow_environment_is_valid_edgewatch_settings(resolved: dict[str, Any]) -> None:
    env = resolved["services"]["edgewatch"]["environment"]
    settings = Settings.load(env={k: str(v) for k, v in env.items()})
    assert settings.source == "mqtt" and settings.mqtt_url == "mqtt://mosquitto:1883"
    assert settings.metrics_addr == ":9464" and settings.mqtt_username == "edge"
    assert resolved["services"]["edgewatch"]["command"] == [
        "python", "-m", "bytewax.run", "dataflows.air_quality:flow", "-s", "1",
        "-i", "0", "-a", "edgewatch:2101"]  # fmt: skip  # a cluster of one by default
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "edgewatch")
    assert job["static_configs"][0]["targets"] == ["edgewatch:9464"]


def test_security_profile_follows_the_brokers_log_and_is_scraped(
    resolved: dict[str, Any],
) -> None:
    service = resolved["services"]["edgewatch-security"]
    assert service["profiles"] == ["security"]
    assert service["command"][:4] == ["python", "-m", "bytewax.run", "dataflows.security:flow"]
    settings = Settings.load(env={k: str(v) for k, v in service["environment"].items()})
    settings.validate()
    assert settings.source == "mqtt" and settings.metrics_addr == ":9466"
    log = Path(settings.security_broker_log)
    mosquitto = resolved["services"]["mosquitto"]
    conf = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    assert f"log_dest file {log}" in conf
    mounts = [str(v).split(":") for v in service["volumes"]]  # source:target[:ro]
    (shared,) = [m for m in mounts if m[1] == str(log.parent)]
    assert shared[2:] == ["ro"]
    assert f"{shared[0]}:{log.parent}:rw" in [str(v) for v in mosquitto["volumes"]]
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "edgewatch")
    assert any("edgewatch-security" in sd["names"] and sd["port"] == 9466
               for sd in job["dns_sd_configs"])  # fmt: skip
    assert "topic read sensors/#" in (DEPLOY / "mosquitto/acl.template").read_text()


def test_scale_profile_is_one_bytewax_cluster_scraped_per_process(docker_compose: str) -> None:
    cluster = "edgewatch:2101;edgewatch-1:2101"
    done = compose(docker_compose, "config", MQTT_PASSWORD="pw-1", GRAFANA_ADMIN_PASSWORD="pw-2",
                   EDGEWATCH_CLUSTER=cluster)  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert services["edgewatch-1"]["profiles"] == ["scale"]
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "edgewatch")
    scraped = set(job["static_configs"][0]["targets"])
    scraped |= {f"{n}:{sd['port']}" for sd in job["dns_sd_configs"] for n in sd["names"]}
    for pid, name in enumerate(("edgewatch", "edgewatch-1")):
        service = services[name]
        argv = service["command"]
        assert argv[:4] == ["python", "-m", "bytewax.run", "dataflows.air_quality:flow"]
        cluster_args = bytewax_cluster(argv[4:], env={})
        assert cluster_args == Cluster(process_id=pid, processes=2), argv
        assert argv[argv.index("-a") + 1] == cluster  # addresses by service name, same list
        env = {k: str(v) for k, v in service["environment"].items()}
        settings = Settings.load(env=env).for_cluster(cluster_args)
        assert settings.mqtt_group == "edgewatch" and settings.mqtt_partitions == 2
        port = int(settings.metrics_addr.rpartition(":")[2])
        assert port == 9464 + pid and f"{name}:{port}" in scraped
        assert str(port) in service["expose"] and "2101" in service["expose"]
        health = " ".join(service.get("healthcheck", {}).get("test", [])) or "9464"
        assert str(port) in health  # edgewatch-1 overrides the image's 9464 check


def test_replayer_commands_parse_with_the_real_cli(resolved: dict[str, Any]) -> None:
    for name, fmt in (("replayer", "simulator"), ("replayer-purpleair", "purpleair")):
        command = resolved["services"][name]["command"]
        assert command[0] == "edgewatch"
        args = _parser().parse_args(command[1:])
        assert args.command == "replay" and args.format == fmt
        assert args.broker == "mqtt://edge@mosquitto:1883"
        env = resolved["services"][name]["environment"]
        assert env["EDGEWATCH_MQTT_PASSWORD"] == "pw-1"


def test_bind_mounts_exist_in_the_repo(resolved: dict[str, Any]) -> None:
    sources = [v.split(":")[0] for s in resolved["services"].values()
               for v in s.get("volumes", []) if v.startswith("/")]  # fmt: skip
    mine = [Path(s) for s in sources if s.startswith(str(REPO))]
    assert len(mine) == 5 and all(p.exists() for p in mine), mine


def dockerfile_stages() -> list[list[str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_multistage_slim_non_root_with_healthcheck() -> None:
    stages = dockerfile_stages()
    assert len(stages) == 2 and all("-slim" in s[0] for s in stages)
    final = stages[-1]
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(ln.startswith("COPY --from=build /opt/venv") for ln in final)
    assert any(ln.startswith("HEALTHCHECK ") and "9464/metrics" in ln for ln in final)
    assert "STOPSIGNAL SIGINT" in final
    copied = [ln.split()[1] for ln in stages[0] if ln.startswith("COPY ")]
    assert all((REPO / p).exists() for c in copied for p in c.split()), copied


def test_dockerignore_keeps_secrets_and_venv_out() -> None:
    rules = [ln for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]  # fmt: skip
    assert rules[0] == "*" and ".env" in rules
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "dataflows", "operators", "sources",
                       "sinks", "models"}  # fmt: skip


def test_mosquitto_config_runs_with_the_init_scripts_password_file(
    mosquitto_binaries: str, tmp_path: Path
) -> None:
    auth = tmp_path / "auth"
    init = make_auth(auth, "edge", "pw-1")
    assert init.returncode == 0, init.stderr
    assert (auth / "passwd").stat().st_mode & 0o077 == 0
    assert "pw-1" not in (auth / "passwd").read_text()
    refused = make_auth(auth, "edge", "")
    assert refused.returncode != 0 and "MQTT_PASSWORD is not set" in refused.stderr

    with deploy_broker(mosquitto_binaries, tmp_path, {"edge": "pw-1"}) as port:
        assert connect(port, "edge", "pw-1") == 0
        assert connect(port, "edge", "wrong") != 0
        assert connect(port, None, None) != 0  # no anonymous access
    log_text = (tmp_path / "log").read_text()
    assert "Error" not in log_text and "Unknown configuration" not in log_text, log_text
    assert (tmp_path / "data" / "mosquitto.db").exists()  # persistence on


def connect(port: int, user: str | None, password: str | None) -> int:
    """The CONNACK reason code (0: accepted)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user is not None:
        client.username_pw_set(user, password)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(rc.value)
    wait_until(lambda: _try_connect(client, port), 10, "mosquitto listening", step=0.05)
    client.loop_start()
    try:
        wait_until(lambda: codes, 10, "a CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def _try_connect(client: mqtt.Client, port: int) -> bool:
    try:
        client.connect("127.0.0.1", port)
    except OSError:
        return False
    return True
