"""Binaries the deployment checks run for real (Debian packages; ``make system-deps``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflows.local_broker import find_binary

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
