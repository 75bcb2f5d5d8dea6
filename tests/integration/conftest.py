"""Fixtures for the real-broker tests: mosquitto binaries, brokers and TLS certificates."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.broker import Broker, Certs, find_binary, make_certs


@pytest.fixture(scope="session")
def mosquitto() -> str:
    """The mosquitto executable; skips the test when it (or mosquitto_passwd) is missing."""
    binary = find_binary("mosquitto")
    if binary is None or find_binary("mosquitto_passwd") is None:
        pytest.skip("mosquitto/mosquitto_passwd not installed (Debian: make system-deps)")
    return binary


@pytest.fixture
def broker(mosquitto: str, tmp_path: Path) -> Iterator[Broker]:
    """A running broker: auth required, persistence on, plain TCP on 127.0.0.1."""
    b = Broker(mosquitto, tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_broker(mosquitto: str, certs: Certs, tmp_path: Path) -> Iterator[Broker]:
    """A running TLS broker that also requires a client certificate."""
    b = Broker(mosquitto, tmp_path / "tls-broker", certs=certs)
    b.start()
    yield b
    b.stop()
