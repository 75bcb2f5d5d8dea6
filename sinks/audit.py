"""Audit log: every alert as one JSON line, with where it went, in rotating files.

Each line is the alert's own JSON mapping (``to_dict()``: id, scores, votes, threshold,
values, severity …) plus ``model_version`` (the alert's own ``model_version`` when it has
one, else the version the sink was given for its detector, else ``null``),
``delivered_to`` (the sinks the flow hands the same alerts to) and ``audited_at``.

Files rotate by size like :class:`logging.handlers.RotatingFileHandler`: before a line
would take ``audit.jsonl`` past ``max_bytes`` the file becomes ``audit.jsonl.1``, the
older ones shift up to ``audit.jsonl.<backups>`` and the oldest beyond that is deleted.
A line longer than ``max_bytes`` gets a file of its own. Files are created with mode
``0600`` (the directory, if missing, ``0700``).

Parallelism: each worker writes its own file (``audit.jsonl`` with one worker,
``audit.w0.jsonl``, ``audit.w1.jsonl`` … with several), rotated on its own. Delivery:
at-least-once with crash recovery — a batch is written and ``fsync``-ed (and the
directory too after a rotation) before ``write_batch`` returns; after a crash and resume
the last epoch's alerts may be written again (dedupe on ``alert_id``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from sinks.jsonl import worker_path

__all__ = ["AuditSink", "AuditedAlert", "audit_line"]

_FILE_MODE, _DIR_MODE = 0o600, 0o700


class AuditedAlert(Protocol):
    """What the audit sink reads of an alert (``operators.records.Alert`` fits)."""

    @property
    def detector(self) -> str:
        """The deciding detector's name."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The alert as a JSON-ready mapping."""
        ...


def audit_line(
    alert: AuditedAlert,
    model_versions: Mapping[str, str],
    delivered_to: Sequence[str],
    audited_at: str,
) -> bytes:
    """One audit line (no newline) for an alert.

    >>> class A:
    ...     detector = "hst"
    ...     def to_dict(self):
    ...         return {"alert_id": "x1", "score": 0.9, "threshold": 0.7, "votes": {"hst": 0.9}}
    >>> audit_line(A(), {"hst": "1.2"}, ["mqtt", "jsonl"], "2024-04-01T00:00:00+00:00")
    b'{"alert_id":"x1","score":0.9,"threshold":0.7,"votes":{"hst":0.9},"model_version":"1.2",\
"delivered_to":["mqtt","jsonl"],"audited_at":"2024-04-01T00:00:00+00:00"}'
    """
    record = alert.to_dict()
    own = record.get("model_version") or getattr(alert, "model_version", None)
    record["model_version"] = own or model_versions.get(alert.detector)
    record["delivered_to"] = list(delivered_to)
    record["audited_at"] = audited_at
    return orjson.dumps(record)


class _AuditPartition(StatelessSinkPartition[AuditedAlert]):
    def __init__(self, sink: AuditSink, path: Path) -> None:
        self._sink, self._path = sink, path
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(self._path, flags, _FILE_MODE)
            os.fchmod(self._fd, _FILE_MODE)  # an existing file keeps no wider mode
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _rotate(self) -> None:
        """Close the file and shift ``path`` → ``.1`` → … → ``.<backups>`` (oldest dropped)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        names = [self._path] + [Path(f"{self._path}.{i}") for i in range(1, self._sink.backups + 1)]
        names[-1].unlink(missing_ok=True)
        for older, newer in zip(reversed(names[1:]), reversed(names[:-1]), strict=True):
            if newer.exists():
                newer.rename(older)
        _fsync_dir(self._path.parent)

    def _write(self, data: bytes) -> None:
        fd = self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        self._size += len(data)

    def write_batch(self, items: list[AuditedAlert]) -> None:
        if not items:
            return
        sink, now = self._sink, datetime.now(timezone.utc).isoformat()
        self._open()
        chunk: list[bytes] = []
        size = self._size
        for item in items:
            line = audit_line(item, sink.model_versions, sink.delivered_to, now) + b"\n"
            if sink.max_bytes and size and size + len(line) > sink.max_bytes:
                if chunk:
                    self._write(b"".join(chunk))
                    chunk = []
                self._rotate()
                self._open()
                size = 0
            chunk.append(line)
            size += len(line)
        self._write(b"".join(chunk))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditSink(DynamicSink[AuditedAlert]):
    """Write every alert to a size-rotated, ``fsync``-ed JSON-lines audit log.

    Args:
        path: The log file, e.g. ``audit/audit.jsonl``.
        delivered_to: Names of the sinks the same alerts are delivered to, e.g.
            ``["mqtt", "jsonl"]``; written on every line.
        model_versions: Detector name to model version, for alerts without their own.
        max_bytes: Rotate before a file would grow past this size; ``0``: never rotate.
        backups: Rotated files to keep (at least 1).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        delivered_to: Sequence[str],
        model_versions: Mapping[str, str] | None = None,
        max_bytes: int = 50 * 1024 * 1024,
        backups: int = 5,
    ) -> None:
        if max_bytes < 0 or backups < 1:
            msg = f"need max_bytes >= 0 and backups >= 1, got {max_bytes}, {backups}"
            raise ValueError(msg)
        self.path = Path(path)
        self.delivered_to = tuple(delivered_to)
        self.model_versions = dict(model_versions or {})
        self.max_bytes, self.backups = max_bytes, backups

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AuditPartition:
        """Build the worker's partition (the file is opened on first write)."""
        return _AuditPartition(self, worker_path(self.path, worker_index, worker_count))
