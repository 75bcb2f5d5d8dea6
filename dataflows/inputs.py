"""Pick the input connector a flow reads from, by configuration."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource

from dataflows.settings import ConfigError, Settings
from operators.records import RawMessage
from sources.files import CSVSource, JSONLSource, nab_source, skab_source
from sources.purpleair import PurpleAirAPISource, PurpleAirSnapshotSource
from sources.simulator import SimulatorConfig, SimulatorSource

__all__ = ["build_source", "iter_messages", "simulator_config"]

_Source = FixedPartitionedSource[Any, Any]


def simulator_config(settings: Settings) -> SimulatorConfig:
    """The simulator configuration the settings describe."""
    return SimulatorConfig(
        sensors=settings.sim_sensors,
        interval_s=settings.sim_interval_s,
        duration_s=settings.sim_duration_s,
        seed=settings.sim_seed,
    )


def _purpleair_api(settings: Settings, _: list[Path]) -> _Source:
    key_file = settings.purpleair_api_key_file or None
    if key_file is None and not os.environ.get("EDGEWATCH_PURPLEAIR_API_KEY"):
        msg = (
            "the PurpleAir API needs a read key: set EDGEWATCH_PURPLEAIR_API_KEY "
            "or EDGEWATCH_PURPLEAIR_API_KEY_FILE"
        )
        raise ConfigError(msg)
    return PurpleAirAPISource(
        base_url=settings.purpleair_api_url,
        api_key_file=key_file,
        poll_interval_s=settings.purpleair_poll_s,
    )


_BUILDERS: dict[str, Callable[[Settings, list[Path]], _Source]] = {
    "simulator": lambda s, _: SimulatorSource(simulator_config(s), batch_size=s.batch_size),
    "purpleair": lambda s, p: PurpleAirSnapshotSource(p[0], batch_size=s.batch_size),
    "purpleair-api": _purpleair_api,
    "jsonl": lambda s, p: JSONLSource(p),
    "csv": lambda s, p: CSVSource(p),
    "nab": lambda s, p: nab_source(p),
    "skab": lambda s, p: skab_source(p),
}


def build_source(settings: Settings) -> _Source:
    """The Bytewax source for ``settings.source``; raises :class:`ConfigError` if unusable."""
    paths = [Path(p) for p in settings.source_path]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        msg = f"input file(s) not found: {', '.join(missing)}"
        raise ConfigError(msg)
    return _BUILDERS[settings.source](settings, paths)


def iter_messages(source: _Source, step_id: str = "offline") -> Iterator[RawMessage]:
    """Read a finite source to its end outside Bytewax, partition by partition."""
    for name in source.list_parts():
        part = source.build_part(step_id, name, None)
        try:
            while True:
                try:
                    batch = part.next_batch()
                except StopIteration:
                    break
                yield from batch
        finally:
            part.close()
