"""Binaries the deployment checks run for real (Debian packages; ``make system-deps``)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dataflows.local_broker import find_binary, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _binary(name: str, package: str) -> str:
    binary = find_binary(name)
    if binary is None:
        pytest.skip(f"{name} is not installed (Debian package {package}: make system-deps)")
    return binary


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's promtool (package prometheus)."""
    return _binary("promtool", "prometheus")


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """Debian's docker-compose 1.29 (the v2 plugin is not packaged)."""
    return _binary("docker-compose", "docker-compose")


@pytest.fixture(scope="session")
def mosquitto_binaries() -> str:
    """mosquitto, with mosquitto_passwd beside it."""
    _binary("mosquitto_passwd", "mosquitto")
    return _binary("mosquitto", "mosquitto")


def make_auth(auth: Path, user: str, password: str) -> subprocess.CompletedProcess[str]:
    """Run the compose init step (``make-passwd.sh``) writing ``auth/passwd`` and ``auth/acl``."""
    env = {**os.environ, "MQTT_USERNAME": user, "MQTT_PASSWORD": password}
    return subprocess.run(["sh", str(DEPLOY / "mosquitto/make-passwd.sh"), str(auth)], env=env,
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


@contextmanager
def deploy_broker(mosquitto: str, root: Path, users: dict[str, str]) -> Iterator[int]:
    """mosquitto with the compose config and the init step's password file and ACL.

    ``users``: the first is the service user (``MQTT_USERNAME``), the rest are added as
    sensors with ``mosquitto_passwd``. Yields the port (127.0.0.1).
    """
    (service, password), *sensors = users.items()
    done = make_auth(root / "auth", service, password)
    assert done.returncode == 0, done.stderr
    for user, pw in sensors:
        subprocess.run([find_binary("mosquitto_passwd") or "mosquitto_passwd", "-b",
                        str(root / "auth/passwd"), user, pw], check=True, timeout=30)  # fmt: skip
    port = free_port()
    (root / "brokerlog").mkdir(exist_ok=True)
    conf = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/log/", f"{root}/brokerlog/").replace("/mosquitto/", f"{root}/")
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    (root / "data").mkdir(exist_ok=True)
    (root / "mosquitto.conf").write_text(f"user {os.getenv('USER') or 'root'}\n{conf}")
    with (root / "log").open("wb") as log:
        proc = subprocess.Popen([mosquitto, "-c", str(root / "mosquitto.conf")],
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: _accepting(port), 10, "mosquitto listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True
