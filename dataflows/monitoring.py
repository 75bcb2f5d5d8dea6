"""Wire a flow to its Prometheus metrics: the endpoint, the MQTT source's hooks, model info.

The metrics themselves live in :mod:`sinks.metrics`; sources and operators only take
plain callables, which this module hands them. The endpoint is started by what runs a
flow (``edgewatch run``, ``python -m bytewax.run dataflows.air_quality:flow``), never by
building one, so benchmarks and tests that build many flows open no port.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from bytewax.dataflow import Dataflow

from dataflows.settings import ConfigError, Settings
from sinks.metrics import MQTTConnectionMetrics, serve
from sources.mqtt import MQTTSource

__all__ = ["instrument_source", "lazy_flow", "serve_metrics"]

logger = logging.getLogger(__name__)

S = TypeVar("S")


def serve_metrics(settings: Settings) -> tuple[str, int] | None:
    """Serve ``/metrics`` on ``settings.metrics_addr`` (once per process); ``None`` if off.

    Raises:
        ConfigError: The address is malformed or already taken, with how to fix it.
    """
    addr = settings.metrics_addr
    if not addr:
        return None
    try:
        host, port = serve(addr)
    except (OSError, ValueError) as exc:
        msg = (f"cannot serve metrics on {addr} ({exc}); another edgewatch may hold the "
               "port: choose another with --metrics-addr HOST:PORT or EDGEWATCH_METRICS_ADDR, "
               "or set it to '' to serve none")  # fmt: skip
        raise ConfigError(msg) from None
    logger.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    return host, port


def instrument_source(source: S, flow: str) -> S:
    """The source with metrics hooks where it has any (an MQTT source's connection state)."""
    if isinstance(source, MQTTSource):
        hooks = MQTTConnectionMetrics(flow)
        return dataclasses.replace(
            source, on_connect=hooks.connected, on_disconnect=hooks.disconnected
        )
    return source


def lazy_flow(module: str, build: Callable[[Settings], Dataflow]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that builds ``flow`` on first access, from the environment.

    ``python -m bytewax.run dataflows.<name>:flow`` reads the attribute; the metrics
    endpoint starts then, and importing the module does nothing.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 - a module's __getattr__
        if name == "flow":
            settings = Settings.load()
            serve_metrics(settings)
            built = build(settings)
            vars(sys.modules[module])["flow"] = built
            return built
        msg = f"module {module!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__
