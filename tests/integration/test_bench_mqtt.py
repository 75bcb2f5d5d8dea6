"""``edgewatch bench --mqtt`` at a tiny size against its own private mosquitto."""

from __future__ import annotations

import orjson
import pytest

from dataflows.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS = {
    "ceiling_msgs_per_s", "ceiling_qos0_msgs_per_s", "ceiling_qos1_msgs_per_s",
    "qos0_msgs_per_s", "qos0_lost", "qos0_vs_ceiling", "qos1_msgs_per_s", "qos1_lost",
    "qos1_vs_ceiling", "latency_rate", "latency_p50_ms", "latency_p99_ms", "latency_max_ms",
    "latency_lost", "broker", "epoch_interval_s", "mqtt_queue_size",
}  # fmt: skip


def test_bench_mqtt_prints_its_figures_as_one_json_line(
    mosquitto: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--mqtt", "--events", "2000", "--sensors", "5", "--rate", "500",
            "--duration", "2"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "ceiling QoS 0" in "\n".join(lines[:-1])  # the readable table comes first
    result = orjson.loads(lines[-1])
    assert result.keys() >= KEYS
    assert result["broker"].startswith("private mosquitto")
    assert result["qos1_sent"] == result["qos1_scored"] == 2000 and result["qos1_lost"] == 0
    assert result["latency_sent"] == result["latency_scored"] == 1000
    assert result["latency_lost"] == 0
    for phase in ("qos0", "qos1", "latency"):  # alerts go out at QoS 1: all arrive
        assert result[f"{phase}_alerts"] == result[f"{phase}_alerts_received"] > 0
    assert result["latency_p50_ms"] <= result["latency_p99_ms"] <= result["latency_max_ms"]


def test_bench_mqtt_json_only(mosquitto: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--mqtt", "--json", "--qos", "1", "--events", "500", "--sensors", "2",
            "--rate", "0"]  # fmt: skip
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = orjson.loads(line)
    assert result["qos1_lost"] == 0 and "qos0_msgs_per_s" not in result
    assert "latency_p99_ms" not in result
