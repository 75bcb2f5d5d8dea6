"""Test-wide settings: metrics on a free port, so parallel test runs never collide.

``edgewatch run`` and ``python -m bytewax.run dataflows.air_quality:flow`` serve
Prometheus metrics on ``127.0.0.1:9464`` by default; the tests (and the flows they start
as subprocesses, which inherit the environment) use a port the system picks instead.
"""

from __future__ import annotations

import os

os.environ["EDGEWATCH_METRICS_ADDR"] = "127.0.0.1:0"
