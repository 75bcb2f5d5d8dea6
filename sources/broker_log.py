"""Follow a mosquitto log file like ``tail -F`` and emit the events it reports.

:class:`BrokerLogSource` reads the lines; :mod:`sources.broker_events` says what each
line means (which lines mosquitto 2.0 writes, and the ``mosquitto.conf`` lines each kind
of event needs) and holds the records, re-exported here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from glob import escape as glob_escape
from pathlib import Path
from typing import IO

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from sources.broker_events import (
    EVENT_KINDS,
    NEW_CONNECTION,
    AddressBook,
    BrokerEvent,
    BrokerStats,
    event_of,
    parse_log_line,
    split_line,
)

__all__ = [
    "EVENT_KINDS",
    "BrokerEvent",
    "BrokerLogSource",
    "BrokerLogStats",
    "BrokerStats",
    "LogPosition",
    "parse_log_line",
]

LogPosition = tuple[int, int]
"""``(inode, byte offset after the last complete line read)`` of the followed file."""


@dataclass
class BrokerLogStats:
    """Counters of a :class:`BrokerLogSource` (one writer: its worker).

    Attributes:
        lines: Complete lines read.
        events: Lines that became events.
        ignored: Lines that did not (other messages, junk, lines over 64 KiB).
        files: Files opened (the first one, then one per rotation).
        truncations: Times the file was found shorter than the position (copytruncate).
    """

    lines: int = 0
    events: int = 0
    ignored: int = 0
    files: int = 0
    truncations: int = 0


_MAX_LINE = 65536
_MAX_LINES_PER_BATCH = 20_000  # read at most this many lines (events or not) per call


class _LogPartition(StatefulSourcePartition[BrokerEvent, LogPosition]):
    def __init__(self, src: BrokerLogSource, resume: LogPosition | None) -> None:
        self._src, self._path, self._resume = src, Path(src.path), resume
        self._f: IO[bytes] | None = None
        self._ino = self._offset = 0
        self._partial = b""
        self._waited = False  # the file was missing at first: read it from 0 when it comes
        self._last_line: float | None = None
        self._wake: datetime | None = None
        self._addresses = AddressBook()

    def _open_first(self) -> bool:
        try:
            f: IO[bytes] = self._path.open("rb")
        except FileNotFoundError:
            self._waited = True
            return False
        st, start = os.fstat(f.fileno()), 0
        if self._resume is not None:
            ino, offset = self._resume
            if ino == st.st_ino:
                start = offset if offset <= st.st_size else 0
            elif (old := self._rotated(ino)) is not None:  # finish the file we were in
                f.close()
                f, st, start = old, os.fstat(old.fileno()), offset
        elif not (self._src.from_start or self._waited):
            start = st.st_size
        f.seek(start)
        self._f, self._ino, self._offset = f, st.st_ino, start
        self._src.stats.files += 1
        return True

    def _rotated(self, ino: int) -> IO[bytes] | None:
        """The rotated copy (``<name>.1`` …) that is the snapshot's file, if any."""
        for p in sorted(self._path.parent.glob(f"{glob_escape(self._path.name)}.*")):
            try:
                if p.stat().st_ino == ino:
                    return p.open("rb")
            except OSError:
                continue
        return None

    def _line(self, raw: bytes, out: list[BrokerEvent]) -> None:
        stats = self._src.stats
        self._offset += len(raw)
        stats.lines += 1
        ts, message = split_line(raw.decode("utf-8", "replace"), None)
        event = event_of(ts, message)
        if event is not None:
            out.append(self._addresses.fill(event))
            stats.events += 1
            return
        if m := NEW_CONNECTION.fullmatch(message):
            self._addresses.accepted(m.group(1))
        stats.ignored += 1

    def _read(self, f: IO[bytes], out: list[BrokerEvent]) -> bool:
        """Read lines into ``out``; ``True`` at the end of the file."""
        limit = self._src.batch_size
        for _ in range(_MAX_LINES_PER_BATCH):
            if len(out) >= limit:
                return False
            line = f.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                self._partial += line
                if len(self._partial) < _MAX_LINE:  # the end, maybe inside a line being written
                    return True
                self._line(self._partial, [])  # no log line is that long: count, drop
                self._partial = b""
                continue
            self._line(self._partial + line, out)
            self._partial = b""
        return False

    def _follow(self, f: IO[bytes], out: list[BrokerEvent]) -> bool:
        """At the end of ``f``: switch file or position if the log moved; ``True`` if so."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:  # rotated away and not yet created again
            return False
        if st.st_ino != self._ino:
            if st.st_size == 0:  # mosquitto writes to the old file until it reopens
                return False
            if self._partial:
                self._line(self._partial, out)
                self._partial = b""
            f.close()
            self._f, self._resume, self._waited = None, None, True
            return self._open_first()
        if st.st_size < f.tell():  # truncated in place
            f.seek(0)
            self._offset, self._partial = 0, b""
            self._src.stats.truncations += 1
            return True
        return False

    def next_batch(self) -> list[BrokerEvent]:
        now = time.monotonic()
        if self._last_line is None:
            self._last_line = now
        out: list[BrokerEvent] = []
        at_end = True
        if self._f is not None or self._open_first():
            lines = self._src.stats.lines
            while (f := self._f) is not None:
                at_end = self._read(f, out)
                if not at_end or not self._follow(f, out):
                    break
            if self._src.stats.lines > lines:
                self._last_line = now
        idle = self._src.idle_stop_s
        if at_end and not out and idle > 0 and now - self._last_line >= idle:
            raise StopIteration
        poll = timedelta(seconds=self._src.poll_s)
        self._wake = datetime.now(timezone.utc) + poll if at_end else None
        return out

    def next_awake(self) -> datetime | None:
        return self._wake

    def snapshot(self) -> LogPosition:
        return self._ino, self._offset

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


@dataclass(frozen=True)
class BrokerLogSource(FixedPartitionedSource[BrokerEvent, LogPosition]):
    """Follow a mosquitto log file like ``tail -F``: one :class:`BrokerEvent` per event line.

    Reads from the end of the file (``from_start`` for all of it), every ``poll_s``
    while nothing is new; a file that does not exist yet is waited for and read from
    its start. A line still being written is kept until its newline arrives. When the
    path names a new file (logrotate's rename + SIGHUP) the old file is read to its
    end once the new one has data, then the new one from its start; a file that
    became shorter (``copytruncate``) is read again from its start. Lines that are no
    event are counted in :attr:`stats`, not emitted.

    Parallelism: one partition (one file), on one worker.

    Delivery: at-least-once across a resume. The snapshot is ``(inode, offset)`` after
    the last complete line read; a resumed flow goes on from there, in the same file,
    or in the rotated copy beside it (``<name>.1``) and then the new file; if neither
    is found, the current file is read from its start. Events emitted after the last
    snapshot come again. Addresses of unnamed connections (module docstring) whose
    ``New connection`` line came before the snapshot are not filled in after a resume.

    Attributes:
        path: The log file (``log_dest file`` in ``mosquitto.conf``).
        from_start: Read what the file already holds, not only what is added.
        batch_size: Most events per batch.
        poll_s: How long to wait before looking again when nothing was new.
        idle_stop_s: Stop after this long without a new line (tests, replays); 0 never.
        stats: Counters, filled while the flow runs.
    """

    path: str | Path
    from_start: bool = False
    batch_size: int = 1000
    poll_s: float = 0.2
    idle_stop_s: float = 0.0
    stats: BrokerLogStats = field(default_factory=BrokerLogStats, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.poll_s <= 0 or self.idle_stop_s < 0:
            msg = "need batch_size >= 1, poll_s > 0 and idle_stop_s >= 0"
            raise ValueError(msg)

    def list_parts(self) -> list[str]:
        """The one partition, ``broker-log``."""
        return ["broker-log"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: LogPosition | None
    ) -> _LogPartition:
        """The follower; it opens the file on its first batch."""
        return _LogPartition(self, resume_state)
