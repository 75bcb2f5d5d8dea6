"""Replay files: JSON lines as raw bytes, CSV rows (NAB, SKAB) as generic readings.

Files are streamed line by line, never read whole. Every message's origin is
``path:lineno`` (the line a row starts on, counting from 1).

CSV rows become ``{"sensor_id": ..., "ts": ..., "values": {...}}``. Cells are converted with
``float()``; an empty cell is ``None`` and a non-numeric cell is passed on as its original
string, so ``parse`` dead-letters it. A timestamp cell that is a number is passed on as
epoch seconds; an ISO-8601 one as an ISO string, with naive times taken as UTC (SKAB and
NAB times carry no zone) so ``+00:00`` is appended; anything else as it is. A row with
more or fewer cells than the header becomes ``{"_malformed_row": cells, "fields": header}``.
CSV bytes that are not UTF-8 are decoded as U+FFFD, so such a cell is non-numeric too.

>>> _timestamp("2020-03-09 10:14:33"), _timestamp("1711929600"), _number(""), _number("x")
('2020-03-09T10:14:33+00:00', 1711929600.0, None, 'x')
"""

from __future__ import annotations

import csv
import gzip
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import IO, Any, Literal, cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = [
    "SKAB_LABEL_COLUMNS",
    "CSVSource",
    "household_power_source",
    "JSONLSource",
    "nab_source",
    "read_labels",
    "skab_source",
]

SKAB_LABEL_COLUMNS = ("anomaly", "changepoint")
"""SKAB's label columns: dropped from values, read by :func:`read_labels`."""

Paths = str | Path | Sequence[str | Path]
LineMessage = tuple[str, bytes, float]
RowMessage = tuple[str, dict[str, Any], float]
Position = tuple[int, int]  # (byte offset of the next line, number of lines read before it)


def _paths(paths: Paths) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = list(dict.fromkeys(Path(p) for p in items))
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        msg = f"input file(s) not found: {', '.join(missing)}"
        raise FileNotFoundError(msg)
    return out


def _lines(f: IO[bytes]) -> Iterator[str]:
    """Decoded lines that keep ``f.tell()`` exact (no read-ahead)."""
    while line := f.readline():
        yield line.decode("utf-8", errors="replace")


def _rows(f: IO[bytes], delimiter: str, lines: int) -> Iterator[tuple[int, int, list[str]]]:
    """Every non-blank CSV row from ``f``'s position, after ``lines`` lines already read.

    Yields ``(line the row starts on, lines read once it is read, cells)``.
    """
    reader = csv.reader(_lines(f), delimiter=delimiter)
    start = lines + 1
    for row in reader:
        if row:
            yield start, lines + reader.line_num, row
        start = lines + reader.line_num + 1


def _timestamp(cell: str | None) -> str | float | None:
    text = (cell or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return cell
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat()


def _number(cell: str) -> float | str | None:
    text = cell.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return cell


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes; a ``.gz`` file's decompressed (seekable, so resumable too)."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _header(cells: list[str]) -> list[str]:
    return [cells[0].lstrip("\ufeff"), *cells[1:]] if cells else cells


class _JSONLPartition(StatefulSourcePartition[LineMessage, Position]):
    def __init__(self, path: Path, batch_size: int, resume: Position | None) -> None:
        self._path, self._batch_size = path, batch_size
        self._offset, self._lineno = resume or (0, 0)
        self._f: IO[bytes] | None = None

    def next_batch(self) -> list[LineMessage]:
        if self._f is None:
            self._f = self._path.open("rb")
            self._f.seek(self._offset)
        now, out = time.time(), list[LineMessage]()
        while len(out) < self._batch_size and (line := self._f.readline()):
            self._lineno += 1
            body = line.rstrip(b"\r\n")
            if body.strip():
                out.append((f"{self._path}:{self._lineno}", body, now))
        self._offset = self._f.tell()
        if not out:  # the batch was not filled: end of file
            raise StopIteration
        return out

    def snapshot(self) -> Position:
        return self._offset, self._lineno

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class _CSVPartition(StatefulSourcePartition[RowMessage, Position]):
    def __init__(self, source: CSVSource, path: Path, resume: Position | None) -> None:
        self._src, self._path, self._resume = source, path, resume
        self._pos: Position = resume or (0, 0)
        self._f: IO[bytes] | None = None
        self._it: Iterator[tuple[int, int, list[str]]] = iter(())
        self._header: list[str] = []
        self._skip: set[str] = set()

    def _open(self) -> IO[bytes]:
        f = self._f = _open_binary(self._path)
        first = next(_rows(f, self._src.delimiter, 0), None)
        if first is None:  # an empty file
            return f
        self._header = _header(first[2])
        src = self._src
        wanted = [c for c in (src.timestamp_column, src.sensor_id) if c is not None]
        absent = [c for c in wanted if c not in self._header]
        if absent:
            msg = f"{self._path}: no column {', '.join(absent)} in header {self._header}"
            raise ValueError(msg)
        self._skip = {*wanted, *src.drop_columns}
        if self._resume is not None:
            f.seek(self._resume[0])
        self._pos = (f.tell(), self._resume[1] if self._resume else first[1])
        self._it = _rows(f, src.delimiter, self._pos[1])
        return f

    def _reading(self, cells: list[str]) -> dict[str, Any]:
        if len(cells) != len(self._header):
            return {"_malformed_row": cells, "fields": self._header}
        row = dict(zip(self._header, cells, strict=True))
        src = self._src
        sensor = row[src.sensor_id] if src.sensor_id else src.sensor_id_default or self._path.stem
        values = {k: _number(v) for k, v in row.items() if k not in self._skip}
        return {"sensor_id": sensor, "ts": _timestamp(row[src.timestamp_column]), "values": values}

    def next_batch(self) -> list[RowMessage]:
        f = self._open() if self._f is None else self._f
        now, out, lines = time.time(), [], self._pos[1]
        for start, lines, cells in islice(self._it, self._src.batch_size):  # noqa: B007
            out.append((f"{self._path}:{start}", self._reading(cells), now))
        if not out:
            raise StopIteration
        self._pos = (f.tell(), lines)
        return out

    def snapshot(self) -> Position:
        return self._pos

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class _FilesSource:
    """Shared: one partition per file, named ``<kind>:<path>``."""

    kind = "file"

    def __init__(self, paths: Paths, batch_size: int) -> None:
        self.paths = _paths(paths)
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        """One partition per file."""
        return [f"{self.kind}:{p}" for p in self.paths]

    def _path(self, for_part: str) -> Path:
        return Path(for_part.split(":", 1)[1])


class JSONLSource(_FilesSource, FixedPartitionedSource[LineMessage, Position]):
    """Replay JSON-lines files: ``("path:lineno", line_bytes, received_at)``.

    Every non-blank line is passed on as it is (without its line ending), malformed JSON
    included — ``parse`` decodes it and dead-letters what is bad.

    Parallelism: one partition per file. Delivery: exactly-once with recovery — the
    snapshot is the byte offset and line number of the next line.

    Args:
        paths: One file or several.
        batch_size: Most lines per batch.
    """

    kind = "jsonl"

    def __init__(self, paths: Paths, batch_size: int = 1000) -> None:
        super().__init__(paths, batch_size)

    def build_part(
        self, step_id: str, for_part: str, resume_state: Position | None
    ) -> _JSONLPartition:
        """Build one file's partition, resuming at a byte offset."""
        return _JSONLPartition(self._path(for_part), self.batch_size, resume_state)


class CSVSource(_FilesSource, FixedPartitionedSource[RowMessage, Position]):
    """Replay CSV files as generic readings: ``("path:lineno", reading_dict, received_at)``.

    Parallelism: one partition per file. Delivery: exactly-once with recovery — the
    snapshot is the byte offset and line number of the next row.

    Args:
        paths: One file or several, each with a header row.
        delimiter: Cell separator.
        timestamp_column: Column holding the event time.
        sensor_id: Column holding the sensor id, or ``None`` for one sensor per file.
        sensor_id_default: Sensor id without a ``sensor_id`` column (default: file stem).
        drop_columns: Columns left out of ``values`` (labels, comments…).
        batch_size: Most rows per batch.
    """

    kind = "csv"

    def __init__(
        self,
        paths: Paths,
        *,
        delimiter: str = ",",
        timestamp_column: str = "timestamp",
        sensor_id: str | None = None,
        sensor_id_default: str | None = None,
        drop_columns: Sequence[str] = (),
        batch_size: int = 1000,
    ) -> None:
        super().__init__(paths, batch_size)
        self.delimiter, self.timestamp_column = delimiter, timestamp_column
        self.sensor_id, self.sensor_id_default = sensor_id, sensor_id_default
        self.drop_columns = tuple(drop_columns)

    def build_part(
        self, step_id: str, for_part: str, resume_state: Position | None
    ) -> _CSVPartition:
        """Build one file's partition, resuming at a byte offset."""
        return _CSVPartition(self, self._path(for_part), resume_state)


def nab_source(paths: Paths, batch_size: int = 1000) -> CSVSource:
    """NAB files (``timestamp,value``; the sensor id is the file stem)."""
    return CSVSource(paths, batch_size=batch_size)


def skab_source(paths: Paths, batch_size: int = 1000) -> CSVSource:
    """SKAB files (``;``-separated, ``datetime``; label columns dropped from values)."""
    return CSVSource(
        paths,
        delimiter=";",
        timestamp_column="datetime",
        drop_columns=SKAB_LABEL_COLUMNS,
        batch_size=batch_size,
    )


def household_power_source(paths: Paths, batch_size: int = 1000) -> CSVSource:
    """UCI household power files (``date_time`` column, kW; ``.gz`` read as it is).

    Every file is one meter, ``household``, unless several files are given (then the
    file names are the meters).
    """
    files = _paths(paths)
    return CSVSource(
        files,
        timestamp_column="date_time",
        sensor_id_default="household" if len(files) == 1 else None,
        batch_size=batch_size,
    )


def read_labels(
    path: str | Path, fmt: Literal["nab", "skab"] = "skab", column: str | None = None
) -> list[int | None]:
    """The label of every row the source yields for ``path``, in order.

    SKAB labels are the ``anomaly`` column (0/1); NAB files carry none, so every entry is
    ``None``, as it is wherever the column is absent or a cell is not an integer.

    Args:
        path: The file.
        fmt: ``"nab"`` or ``"skab"``.
        column: The label column, if not the format's own.
    """
    delimiter, column = (";", column or "anomaly") if fmt == "skab" else (",", column)
    with Path(path).open("rb") as f:
        rows = _rows(f, delimiter, 0)
        first = next(rows, None)
        header = _header(first[2]) if first else []
        i = header.index(column) if column in header else None
        return [_label(cells, i) for _, _, cells in rows]


def _label(cells: list[str], i: int | None) -> int | None:
    value = _number(cells[i]) if i is not None and i < len(cells) else None
    return int(value) if isinstance(value, float) and value.is_integer() else None
