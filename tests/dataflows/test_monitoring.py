"""The metrics endpoint as ``edgewatch run`` and ``bytewax.run`` start it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dataflows.monitoring import serve_metrics
from dataflows.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]


def edgewatch_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dataflows.cli", "run", "--sensors", "2", "--duration", "1h",
           "--max-print", "0", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)  # fmt: skip


def test_a_taken_port_is_a_configuration_error_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"cannot serve metrics on {addr}.*--metrics-addr"):
            serve_metrics(Settings.load(env={}, metrics_addr=addr))
        done = edgewatch_run("--metrics-addr", addr, cwd=tmp_path)
    assert done.returncode == 2
    assert f"edgewatch: configuration error: cannot serve metrics on {addr}" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_says_where_metrics_are_served_and_empty_turns_them_off(tmp_path: Path) -> None:
    served = edgewatch_run("--metrics-addr", "127.0.0.1:0", cwd=tmp_path)
    assert served.returncode == 0, served.stderr
    assert "metrics: http://127.0.0.1:" in served.stdout and "Summary" in served.stdout
    off = edgewatch_run("--metrics-addr", "", cwd=tmp_path)
    assert off.returncode == 0 and "metrics:" not in off.stdout
    assert serve_metrics(Settings.load(env={}, metrics_addr="")) is None


def test_malformed_addresses_are_refused_when_loading() -> None:
    with pytest.raises(ConfigError, match="metrics_addr must be HOST:PORT"):
        Settings.load(env={"EDGEWATCH_METRICS_ADDR": "localhost"})
    assert Settings.load(env={}).metrics_addr == "127.0.0.1:9464"
