"""``edgewatch run``: run the air-quality flow, print alerts readably, end with a summary.

With ``--recovery DIR`` (setting ``recovery_dir``) the run keeps Bytewax recovery
partitions in ``DIR``: :func:`recovery_config` makes them when the directory has none
and resumes from them otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TextIO, cast

from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from dataflows import air_quality, pump, security, smart_meter
from dataflows.evaluation import Evaluation, evaluate_alerts
from dataflows.inputs import simulator_config
from dataflows.monitoring import serve_metrics
from dataflows.settings import Cluster, ConfigError, Settings
from operators.records import Alert
from sinks.metrics import counter_values, metrics
from sources.simulator import Simulator

__all__ = [
    "cluster_of",
    "epoch_interval",
    "format_alert",
    "prepare_recovery",
    "recovery_config",
    "run_command",
    "split_addresses",
]


FLOW_NAME = air_quality.FLOW_NAME
_FLOWS = {FLOW_NAME: air_quality, pump.FLOW_NAME: pump, smart_meter.FLOW_NAME: smart_meter,
          security.FLOW_NAME: security}  # fmt: skip
_FIELDS = {pump.FLOW_NAME: pump.CHANNELS[:3], smart_meter.FLOW_NAME: ("power_kw",)}
"""Fields an alert line shows, by flow (air quality: the scored ones)."""


def format_alert(a: Alert, fields: Sequence[str] = ()) -> str:
    """One readable line per alert, showing ``fields`` (the scored ones) when present.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2024, 4, 1, 3, 14, tzinfo=timezone.utc)
    >>> a = Alert("id", "1007", "air_quality", "hst", 0.912, 0.7, t, t, {"pm1.0_cf_1": 412.3},
    ...           severity="critical")
    >>> format_alert(a, ["pm1.0_cf_1"])
    '2024-04-01 03:14:00Z  sensor 1007   hst 0.912 > 0.70  critical  pm1.0_cf_1=412.3'
    """
    keys = [f for f in fields if f in a.values] or list(a.values)[:3]
    if a.kind == "security":  # the feature that drove it
        keys = [k for k in a.details.get("drivers", {}) if k in a.values] or keys
    shown = ", ".join(f"{k}={a.values[k]:g}" for k in keys if a.values[k] is not None)
    when = a.ts.strftime("%Y-%m-%d %H:%M:%SZ")
    return (
        f"{when}  sensor {a.sensor_id:<6} {a.detector} {a.score:.3f} > {a.threshold:.2f}  "
        f"{a.severity:<8}  {shown}{'  (imputed)' if a.imputed else ''}"
    ).rstrip()


@dataclass
class _Collector:
    """Gathers alerts from the flow's worker threads and prints the first few."""

    max_print: int
    out: TextIO
    fields: Sequence[str]
    alerts: list[Alert] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, batch: list[Alert]) -> None:
        with self.lock:
            for a in batch:
                if len(self.alerts) < self.max_print:
                    self.out.write(format_alert(a, self.fields) + "\n")
                self.alerts.append(a)
            self.out.flush()


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.load(
        args.config,
        source=args.source,
        source_path=tuple(args.input) if args.input else None,
        sim_sensors=args.sensors,
        sim_duration_s=args.duration,
        sim_interval_s=args.interval,
        sim_seed=args.seed,
        mode=args.mode,
        threshold=args.threshold,
        alerts_path=args.alerts,
        deadletter_path=args.deadletter,
        mqtt_url=args.broker,
        mqtt_group=args.group,
        mqtt_outputs=args.mqtt_outputs,
        metrics_addr=args.metrics_addr,
        recovery_dir=args.recovery,
        snapshot_interval_s=args.snapshot_interval,
        backup_interval_s=args.backup_interval,
    )
    settings = settings.for_cluster(cluster_of(args))
    if settings.alerts_path == "-":  # alerts are printed as text; keep stdout readable
        settings = dataclasses.replace(settings, alerts_path="")
    return settings


def cluster_of(args: argparse.Namespace) -> Cluster:
    """The cluster ``-w/-i/-a`` ask for (a single process without ``-i``).

    Raises:
        ConfigError: ``-i`` without ``-a``, or a process id that ``-a`` does not list.
    """
    workers = max(args.workers, 1)
    if args.process_id is None:
        if args.addresses:
            msg = "-a/--addresses needs -i/--process-id (or -p N for local processes)"
            raise ConfigError(msg)
        return Cluster(workers_per_process=workers)
    addresses = split_addresses(args.addresses or "")
    if not 0 <= args.process_id < len(addresses):
        msg = (f"-i {args.process_id} needs -a listing at least {args.process_id + 1} "
               f"host:port addresses, one per process (got {len(addresses)})")  # fmt: skip
        raise ConfigError(msg)
    return Cluster(args.process_id, len(addresses), workers)


def split_addresses(text: str) -> list[str]:
    """``host:port`` addresses separated by ``;`` (as ``bytewax.run -a``) or ``,``.

    >>> split_addresses("a:2101; b:2101,c:2101")
    ['a:2101', 'b:2101', 'c:2101']
    """
    return [a.strip() for a in text.replace(",", ";").split(";") if a.strip()]


def run_command(args: argparse.Namespace) -> int:
    """Run the flow to the end of its input and print the summary.

    With ``-p N`` (and no ``-i``), start N such processes on this host as one cluster
    instead (:func:`dataflows.cluster.run_local_cluster`).
    """
    if args.process_id is None and args.local_processes > 1:
        from dataflows.cluster import run_local_cluster  # noqa: PLC0415

        return run_local_cluster(args, args.local_processes)
    cluster = cluster_of(args)
    settings = _settings(args)
    served = serve_metrics(settings)
    out = sys.stdout
    member = ""
    if cluster.processes > 1:
        member = f" (process {cluster.process_id} of {cluster.processes})"
    name = getattr(args, "flow", FLOW_NAME)
    if name == pump.FLOW_NAME:  # its default input is the SKAB replay
        settings = pump.pump_settings(settings)
    where = security.describe(settings) if name == security.FLOW_NAME else _describe(settings)
    out.write(f"edgewatch run: {name} flow{member} on {where}\n")
    if served is not None:
        out.write(f"metrics: http://{served[0]}:{served[1]}/metrics\n")
    fields = _FIELDS.get(name, settings.hst_features)
    collect = _Collector(max(args.max_print, 0), out, fields)
    flow = _FLOWS[name].build_flow(settings, on_alerts=collect)
    before = _counts()
    stop = threading.Event()
    ticker = threading.Thread(target=_progress, args=(stop, before, name), daemon=True)
    if sys.stderr.isatty():
        ticker.start()
    start = time.perf_counter()
    try:
        interrupted = _run(flow, args, cluster, settings)
    finally:
        stop.set()
    wall = time.perf_counter() - start
    after = _counts()
    if len(collect.alerts) > collect.max_print:
        more = len(collect.alerts) - collect.max_print
        out.write(f"… {more:,} more alerts (--alerts FILE keeps them all as JSON lines)\n")
    evaluation = None
    if name == FLOW_NAME and settings.source == "simulator" and cluster.processes == 1:
        labels = Simulator(simulator_config(settings)).labels()
        evaluation = evaluate_alerts(collect.alerts, labels)
    _summary(out, settings, collect.alerts, _delta(before, after, name), wall, evaluation, name)
    if name == security.FLOW_NAME and settings.source == "simulator" and cluster.processes == 1:
        from dataflows.evaluate_security import run_summary  # noqa: PLC0415

        out.write(run_summary(collect.alerts, security.fleet_config(settings),
                              settings.security_window_s))  # fmt: skip
    return 130 if interrupted else 0


def _run(flow: Dataflow, args: argparse.Namespace, cluster: Cluster, settings: Settings) -> bool:
    """Run ``flow`` to its end; ``True`` if Ctrl-C stopped it."""
    try:
        cast(Callable[..., None], cli_main)(
            flow,
            workers_per_process=cluster.workers_per_process,
            process_id=cluster.process_id if cluster.processes > 1 else None,
            addresses=split_addresses(args.addresses) if cluster.processes > 1 else None,
            epoch_interval=epoch_interval(settings),
            recovery_config=recovery_config(settings, cluster.workers),
        )
    except KeyboardInterrupt:  # a broker source runs until Ctrl-C: still summarise
        return True
    except BytewaxRuntimeError as exc:  # Ctrl-C inside a step arrives wrapped
        if not _interrupt(exc):
            raise
        return True
    return False


def _interrupt(exc: BaseException) -> bool:
    """Whether a Bytewax error was a Ctrl-C (``KeyboardInterrupt`` under its wrappers)."""
    from dataflows.cli import root_cause  # noqa: PLC0415 - the CLI imports this module

    return isinstance(root_cause(exc), KeyboardInterrupt)


def prepare_recovery(args: argparse.Namespace, processes: int) -> None:
    """Make the recovery store of ``edgewatch run ARGS`` for a cluster of ``processes``."""
    settings = _settings(args)
    recovery_config(settings, processes * max(args.workers, 1))


def recovery_config(settings: Settings, partitions: int = 1) -> RecoveryConfig | None:
    """The recovery store of ``settings.recovery_dir``, made (mode 0700) when it has none.

    An existing store is resumed from as it is (its partition count stays): delete the
    directory to start afresh. ``None`` without ``recovery_dir``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "rec"
    >>> s = Settings.load(env={}, recovery_dir=str(d))
    >>> _ = recovery_config(s, 2); _ = recovery_config(s)  # the second call resumes
    >>> sorted(p.name for p in d.iterdir()), oct(d.stat().st_mode & 0o777)
    (['part-0.sqlite3', 'part-1.sqlite3'], '0o700')
    """
    if not settings.recovery_dir:
        return None
    path = Path(settings.recovery_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not any(path.glob("part-*.sqlite3")):
        cast(Callable[[Path, int], None], init_db_dir)(path, partitions)
    make = cast(Callable[[str, timedelta], RecoveryConfig], RecoveryConfig)
    return make(str(path), timedelta(seconds=settings.backup_interval_s))


def epoch_interval(settings: Settings) -> timedelta:
    """Epoch length: with recovery on, the snapshot interval (when set).

    >>> epoch_interval(Settings.load(env={}, recovery_dir="r", snapshot_interval_s=5))
    datetime.timedelta(seconds=5)
    >>> epoch_interval(Settings.load(env={}, snapshot_interval_s=5))
    datetime.timedelta(seconds=1)
    """
    seconds = settings.epoch_interval_s
    if settings.recovery_dir and settings.snapshot_interval_s:
        seconds = settings.snapshot_interval_s
    return timedelta(seconds=seconds)


def _describe(s: Settings) -> str:
    if s.source == "mqtt":
        group = f" (shared group {s.mqtt_group})" if s.mqtt_group else ""
        topics = ", ".join(s.mqtt_prefix + t for t in s.mqtt_topics)
        return f"MQTT {s.mqtt_url.split('@')[-1]} {topics}{group}, {s.mode} HST; Ctrl-C stops"
    if s.source == "simulator":
        return (
            f"the simulator ({s.sim_sensors} sensors, {s.sim_duration_s / 3600:g} h "
            f"at {s.sim_interval_s} s, seed {s.sim_seed}), {s.mode} HST"
        )
    where = f" {', '.join(s.source_path)}" if s.source_path else ""
    return f"{s.source}{where}, {s.mode} HST"


_Counts = dict[str, dict[tuple[str, ...], float]]


def _counts() -> _Counts:
    m = metrics()
    return {
        "events": counter_values(m.events),
        "invalid": counter_values(m.invalid),
        "imputed": counter_values(m.imputed),
    }


def _delta(before: _Counts, after: _Counts, flow: str = FLOW_NAME) -> dict[str, Counter[str]]:
    """Per-kind counts of this run for our flow, keyed by the last label (detector, …)."""
    out: dict[str, Counter[str]] = {}
    for kind, values in after.items():
        tally: Counter[str] = Counter()
        for labels, v in values.items():
            if labels[0] == flow:
                tally[labels[-1]] += int(v - before[kind].get(labels, 0.0))
        out[kind] = +tally
    return out


def _progress(stop: threading.Event, before: _Counts, flow: str, tick: float = 1.0) -> None:
    while not stop.wait(tick):
        done = sum(_delta(before, _counts(), flow)["events"].values())
        sys.stderr.write(f"\r  {done:,} events scored…")
        sys.stderr.flush()
    sys.stderr.write("\r" + " " * 40 + "\r")


def _summary(
    out: TextIO,
    s: Settings,
    alerts: list[Alert],
    counts: dict[str, Counter[str]],
    wall: float,
    ev: Evaluation | None,
    flow: str = FLOW_NAME,
) -> None:
    scored = sum(counts["events"].values())
    invalid = sum(counts["invalid"].values())
    imputed = counts["imputed"]
    sev = Counter(a.severity for a in alerts)
    w: Callable[[str], int] = out.write
    w("\nSummary\n")
    w(f"  events      {scored + invalid:,}  ({scored:,} scored, {invalid:,} invalid)\n")
    if invalid:
        w(f"  invalid     {_kv(counts['invalid'])}  → {s.deadletter_path}\n")
    if imputed or flow != security.FLOW_NAME:
        w(f"  imputed     {sum(imputed.values()):,} values  {_kv(imputed)}\n")
    rule = f"  threshold {s.threshold}" if flow == FLOW_NAME else ""
    w(f"  alerts      {len(alerts):,}  {_kv(sev)}{rule}\n")
    if ev is not None:
        w(f"  precision   {ev.precision:.3f}   recall {ev.recall:.3f}   F1 {ev.f1:.3f}   "
          f"(readings; {ev.labelled:,} labelled anomalous, dropouts excluded)\n")  # fmt: skip
        kinds = ", ".join(f"{k} {d}/{n}" for k, (d, n) in sorted(ev.episodes.items()))
        w(f"  episodes    detected/injected: {kinds}\n")
    rate = (scored + invalid) / wall if wall > 0 else 0.0
    w(f"  throughput  {rate:,.0f} events/s  ({wall:.2f} s wall, incl. start-up)\n")


def _kv(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in c.most_common()) if c else ""
