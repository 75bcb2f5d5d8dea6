"""MQTT connection metrics of a flow on a real broker: connected, reconnects, closed."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.testing import run_main
from prometheus_client import REGISTRY

from dataflows.air_quality import FLOW_NAME, build_flow
from dataflows.settings import Settings
from tests.integration.broker import Broker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def connected() -> float | None:
    return REGISTRY.get_sample_value("edgewatch_mqtt_connected", {"flow": FLOW_NAME})


def reconnects() -> float:
    got = REGISTRY.get_sample_value("edgewatch_mqtt_reconnects_total", {"flow": FLOW_NAME})
    return got or 0.0


def test_connection_state_and_reconnects_follow_the_broker(broker: Broker, tmp_path: Path) -> None:
    settings = Settings.load(env={}, source="mqtt", mqtt_url=broker.url(),
                             mqtt_client_id="metrics-flow", mqtt_idle_stop_s=8.0,
                             mqtt_outputs="off", alerts_path="", deadletter_path="")  # fmt: skip
    flow = build_flow(settings)
    assert connected() == 0  # the series exists before the first connection
    before = reconnects()
    runner = threading.Thread(
        target=run_main, args=(flow,), kwargs={"epoch_interval": timedelta(milliseconds=200)}
    )
    runner.start()
    try:
        wait_until(lambda: connected() == 1, 15, "connected = 1")
        assert reconnects() == before
        broker.stop()
        wait_until(lambda: connected() == 0, 15, "connected = 0 while the broker is down")
        broker.start()
        wait_until(lambda: connected() == 1, 30, "connected = 1 after the restart")
        assert reconnects() == before + 1
    finally:
        runner.join(30)
    assert not runner.is_alive()
    assert connected() == 0  # closed with the flow (idle stop)
