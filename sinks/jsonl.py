"""JSON-lines output: alerts, dead letters or any pre-serialised lines, to a file or stdout.

The sink knows transport, not records: upstream maps each item to one line of ``bytes``
(or ``str``) without the newline, e.g. ``Alert.to_json`` or ``Invalid.to_json``.

Parallelism: each worker writes its own file (``alerts.jsonl`` with one worker,
``alerts.w0.jsonl``, ``alerts.w1.jsonl`` … with several); stdout is shared. The file is
opened lazily, in append mode, on the first line, so an unused dead-letter file is never
created. Delivery: at-least-once — after a crash and resume the last epoch's lines may be
written again (alerts carry a deterministic ``alert_id`` to dedupe on).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["JSONLinesSink", "worker_path"]


def worker_path(path: Path, worker_index: int, worker_count: int) -> Path:
    """The file one worker writes to.

    >>> str(worker_path(Path("out/alerts.jsonl"), 1, 2))
    'out/alerts.w1.jsonl'
    >>> str(worker_path(Path("alerts.jsonl"), 0, 1))
    'alerts.jsonl'
    """
    if worker_count <= 1:
        return path
    return path.with_name(f"{path.stem}.w{worker_index}{path.suffix}")


class _LinesPartition(StatelessSinkPartition[bytes | str]):
    def __init__(self, path: Path | None, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync
        self._file: IO[bytes] | None = None

    def _out(self) -> IO[bytes]:
        if self._file is None:
            if self._path is None:
                self._file = sys.stdout.buffer
            else:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self._path.open("ab")
        return self._file

    def write_batch(self, items: list[bytes | str]) -> None:
        if not items:
            return
        data = b"".join((i.encode() if isinstance(i, str) else i) + b"\n" for i in items)
        out = self._out()
        out.write(data)
        out.flush()
        if self._fsync and self._path is not None:
            os.fsync(out.fileno())

    def close(self) -> None:
        if self._file is not None and self._path is not None:
            self._file.close()
        self._file = None


class JSONLinesSink(DynamicSink[bytes | str]):
    """Append one line per item to a JSON-lines file, or to stdout.

    Args:
        path: The file; ``None`` or ``"-"`` writes to stdout.
        fsync: ``fsync`` after every batch (durable, slower).
    """

    def __init__(self, path: str | Path | None, *, fsync: bool = False) -> None:
        self.path = None if path is None or path == "-" else Path(path)
        self.fsync = fsync

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LinesPartition:
        """Build the worker's partition (the file is opened on first write)."""
        path = None if self.path is None else worker_path(self.path, worker_index, worker_count)
        return _LinesPartition(path, self.fsync)
