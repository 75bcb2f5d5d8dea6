"""``edgewatch run -p N``: one Bytewax cluster of N processes on this host.

Each process is ``edgewatch run`` with the same options plus ``-i <id> -a <addresses>``
(free 127.0.0.1 ports, one per process), exactly what ``python -m bytewax.run … -i -a``
does on several hosts; Bytewax routes every sensor's state to one worker of the
cluster. With an MQTT source and ``--group``, the workers' clients share one
``$share/<group>/…`` subscription, so the broker splits the stream between processes;
process ``i`` serves its metrics on the base port plus ``i``
(:meth:`dataflows.settings.Settings.for_cluster`).

The launcher only waits: when a process fails, the others are interrupted (SIGINT, so
MQTT sessions close cleanly), and the exit status is the first failure's.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from dataflows.local_broker import free_port

__all__ = ["local_addresses", "run_local_cluster"]

_STOP_S = 15.0  # how long interrupted processes get before they are killed


def local_addresses(processes: int) -> list[str]:
    """``processes`` distinct free ``127.0.0.1:PORT`` addresses.

    >>> a = local_addresses(3)
    >>> len(set(a)), all(x.startswith("127.0.0.1:") for x in a)
    (3, True)
    """
    ports: list[int] = []
    while len(ports) < processes:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return [f"127.0.0.1:{p}" for p in ports]


def run_local_cluster(args: argparse.Namespace, processes: int) -> int:
    """Run ``edgewatch run`` as ``processes`` cluster processes; their worst exit status."""
    from dataflows.runner import prepare_recovery  # noqa: PLC0415 - runner imports us lazily

    prepare_recovery(args, processes)  # once, before any process opens the store
    addresses = ";".join(local_addresses(processes))
    base = [sys.executable, "-m", "dataflows.cli", *args.argv]
    procs = [subprocess.Popen([*base, "-i", str(i), "-a", addresses]) for i in range(processes)]
    try:
        return _wait(procs)
    except KeyboardInterrupt:  # a terminal's Ctrl-C reached the processes too
        _stop(procs, grace=_STOP_S)
        return 130


def _wait(procs: Sequence[subprocess.Popen[bytes]]) -> int:
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            _stop(procs)
            return failed[0] or 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def _stop(procs: Sequence[subprocess.Popen[bytes]], grace: float = 0.0) -> None:
    """Let the processes end for ``grace`` s, then SIGINT them, then kill them."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + _STOP_S
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
