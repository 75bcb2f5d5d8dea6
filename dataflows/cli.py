"""The ``edgewatch`` command.

``edgewatch run`` runs a flow (by default the air-quality flow on the built-in simulator,
no broker or configuration needed; ``--flow pump|smart_meter|security``); ``edgewatch
score`` scores a file offline and writes one CSV row per input row; ``edgewatch bench``
measures a dataflow's throughput; ``edgewatch replay`` publishes a dataset to a broker's
``sensors/<id>/readings``; ``edgewatch train``, ``evaluate`` and ``fleet`` train models,
evaluate detectors on labelled data and show fleet learning.
Every option can also be set by an ``EDGEWATCH_*`` variable or a TOML file (``--config``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bytewax.errors import BytewaxRuntimeError

from dataflows.fleet_status import add_fleet_parser, fleet_command
from dataflows.settings import SOURCES, ConfigError

__all__ = ["main"]

DETECTORS = ("hst", "autoencoder", "lstm", "mahalanobis", "ensemble")
REPLAY_FORMATS = ("purpleair", "jsonl", "csv", "nab", "skab", "simulator")

_EPILOG = """examples:
  edgewatch run                                   simulator fleet, alerts and a summary
  edgewatch run --sensors 200 --duration 2d       a bigger simulated fleet
  edgewatch run --source purpleair --input data.json --mode fleet
  edgewatch run --source mqtt --broker mqtt://edge@127.0.0.1:1883
                                                  serve a live broker until Ctrl-C
  edgewatch run --source mqtt --recovery state/   resume after a crash (kill -9)
  edgewatch run --source mqtt --group edgewatch -p 2
                                                  2 processes as one Bytewax cluster
  edgewatch run --source mqtt --group edgewatch -i 0 -a "host0:2101;host1:2101"
                                                  process 0 of a 2-host cluster
  edgewatch score data.csv --format nab -o scores.csv
  edgewatch bench --events 200000 --sensors 100 --baseline --json
  edgewatch replay data.json --format purpleair --broker mqtt://edge@127.0.0.1:1883
  edgewatch train smart-meter-lstm                train a TFLite model (train extra)
  edgewatch bench --detector lstm                 TFLite inference speed
  edgewatch bench --soak --seconds 60             RSS under a churn of 100,000 sensors
  edgewatch bench --processes 1,2,4               scaling over processes through mosquitto
"""


def _duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``6h`` or ``2d`` to seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        msg = f"{text!r} is not a duration like 3600, 90m, 6h or 2d"
        raise argparse.ArgumentTypeError(msg) from None


def _simulator_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The simulated fleet's options (``run``, ``replay``); unset means the settings' value."""
    p.add_argument("--sensors", type=int, metavar="N", help="simulated sensors (default 50)")
    p.add_argument("--duration", type=_duration, metavar="SPAN",
                   help="simulated time span, e.g. 6h (default 1d)")  # fmt: skip
    p.add_argument("--interval", type=int, metavar="S",
                   help="simulated seconds between readings (default 120)")  # fmt: skip
    p.add_argument("--seed", type=int, metavar="N", help="simulator seed (default 7)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgewatch",
        description="Streaming anomaly detection for IoT sensor fleets.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a flow and print alerts and a summary",
        description="Run the air-quality flow. With no options it scores a simulated "
        "PurpleAir fleet with labelled anomalies and ends with precision/recall.",
    )
    _flow_args(run)
    run.add_argument("--source", choices=SOURCES, help="input (default: simulator)")
    run.add_argument("--input", nargs="+", metavar="PATH", help="input file(s) for file sources")
    _simulator_args(run)
    run.add_argument(
        "--mode",
        choices=("per-sensor", "fleet"),
        help="one model per sensor (default) or one across the fleet",
    )
    run.add_argument("--threshold", type=float, help="alert above this score (default 0.7)")
    run.add_argument("--alerts", metavar="FILE", help="also write alerts as JSON lines here")
    run.add_argument("--deadletter", metavar="FILE", help="dead-letter file (deadletter.jsonl)")
    run.add_argument(
        "--broker",
        metavar="URL",
        help="MQTT broker mqtt[s]://[user@]host[:port] (default mqtt://127.0.0.1:1883); "
        "password from EDGEWATCH_MQTT_PASSWORD or EDGEWATCH_MQTT_PASSWORD_FILE",
    )
    run.add_argument(
        "--group", metavar="NAME", help="MQTT shared-subscription group: processes split one stream"
    )
    run.add_argument(
        "--mqtt-outputs",
        choices=("auto", "on", "off"),
        help="publish alerts/<sensor>, deadletter/<flow> and status/<node> to the broker "
        "(auto: when the source is mqtt)",
    )
    run.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on HOST:PORT (default 127.0.0.1:9464; '' for none)",
    )
    run.add_argument(
        "--recovery",
        metavar="DIR",
        help="keep Bytewax recovery partitions in DIR (made, mode 0700, when missing; "
        "resumed from otherwise)",
    )
    run.add_argument(
        "--snapshot-interval",
        type=float,
        metavar="S",
        help="with --recovery: seconds between snapshots, also the epoch (default: "
        "epoch_interval_s, 1)",
    )
    run.add_argument(
        "--backup-interval",
        type=float,
        metavar="S",
        help="with --recovery: keep old snapshots S seconds for a lagging backup (default 0)",
    )
    _cluster_args(run)
    run.add_argument(
        "--max-print",
        type=int,
        default=25,
        metavar="N",
        help="print at most N alerts (default 25; 0: none)",
    )

    score = sub.add_parser(
        "score",
        help="score a file offline: one CSV row per input row",
        description="Score every row of INPUT and write timestamp,anomaly_score,is_anomaly "
        "in input order. Invalid rows keep their place with an empty score.",
    )
    score.add_argument("input", metavar="INPUT", help="input file")
    score.add_argument(
        "--format",
        required=True,
        choices=("purpleair", "jsonl", "csv", "nab", "skab"),
        help="input format",
    )
    score.add_argument(
        "--detector",
        default="hst",
        choices=DETECTORS,
        help="hst (default), autoencoder (SKAB pump columns), lstm (one power column), "
        "mahalanobis or ensemble (the pump ensemble over --features; score = votes / 3)",
    )
    score.add_argument(
        "--train-rows",
        type=int,
        default=400,
        metavar="N",
        help="mahalanobis/ensemble: each sensor's first N rows train, unscored (default 400)",
    )
    score.add_argument(
        "--mode",
        default="per-sensor",
        choices=("per-sensor", "fleet"),
        help="one model per sensor (default) or one across all rows",
    )
    score.add_argument("-o", "--output", required=True, metavar="OUT.csv", help="output CSV")
    score.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="N",
        help="autoencoder: standardise each sensor by its first N rows (SKAB: 400)",
    )
    score.add_argument("--config", metavar="FILE", help="TOML settings file")
    score.add_argument("--threshold", type=float, help="is_anomaly above this (default 0.7)")
    score.add_argument(
        "--features", help="comma-separated fields to score (default pm1.0_cf_1; value for nab)"
    )

    bench = sub.add_parser(
        "bench",
        help="measure a dataflow's throughput (air quality; --flow security)",
        description="Generate events in memory, run them through the real air-quality "
        "dataflow on one worker, print events/s and a per-stage breakdown. With --mqtt, "
        "publish through a real broker (a private mosquitto unless --broker) into the "
        "running flow instead and report throughput, loss and publish-to-alert latency "
        "against a bare subscriber's ceiling. The last line is one JSON object.",
    )
    bench.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="events (default 200000; with --mqtt: messages per full-speed phase)",
    )
    bench.add_argument("--sensors", type=int, default=100, help="sensors (default 100)")
    bench.add_argument("--batch-size", type=int, default=1000, help="source batch size")
    bench.add_argument(
        "--baseline",
        action="store_true",
        help="also run the River + op.stateful_map flow and print the ratio "
        "(with --mqtt: a stock paho on_message subscriber)",
    )
    bench.add_argument("--json", action="store_true", help="print only the JSON line")
    bench.add_argument("--flow", choices=("air_quality", "security"), default="air_quality",
                       help="security: messages/s of the security flow over the "
                       "misbehaving-device simulator (--sensors devices, default 1000) "
                       "against a decode + count_window baseline")  # fmt: skip
    mqtt = bench.add_argument_group("MQTT benchmark (--mqtt)")
    mqtt.add_argument(
        "--mqtt",
        action="store_true",
        help="benchmark through a real MQTT broker (flow settings such as "
        "EDGEWATCH_EPOCH_INTERVAL_S and EDGEWATCH_MQTT_QUEUE_SIZE apply)",
    )
    mqtt.add_argument(
        "--broker",
        metavar="URL",
        help="use this mqtt://[user:password@]host[:port] broker instead of starting a "
        "private mosquitto (password also from EDGEWATCH_MQTT_PASSWORD); it needs "
        "max_queued_messages far above --events, or QoS 0 messages are dropped",
    )
    mqtt.add_argument(
        "--qos",
        type=int,
        nargs="+",
        choices=(0, 1),
        default=[0, 1],
        help="QoS levels of the full-speed phases (default: 0 1)",
    )
    mqtt.add_argument(
        "--rate",
        type=float,
        default=5000.0,
        help="msgs/s of the paced QoS 1 latency phase (default 5000; 0 skips it)",
    )
    mqtt.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help="seconds of the latency phase (default 6)",
    )
    _scale_args(bench)
    _soak_args(bench)
    bench.add_argument(
        "--detector",
        choices=("lstm", "autoencoder"),
        help="benchmark a TFLite model's inference instead of the dataflow",
    )
    for add_parser in (_replay_parser, _train_parser, _evaluate_parser, add_fleet_parser):
        add_parser(sub)
    return p


def _flow_args(run: argparse.ArgumentParser) -> None:
    """``run``'s ``--config`` and ``--flow``."""
    run.add_argument("--config", metavar="FILE", help="TOML settings file")
    run.add_argument("--flow", choices=("air_quality", "pump", "smart_meter", "security"),
                     default="air_quality", help="air_quality (default), pump (SKAB "
                     "ensemble, default input the SKAB valve1 replay), smart_meter "
                     "(TFLite LSTM, default input the smart-meter simulator) or security "
                     "(device behaviour as intrusion signals, default input the "
                     "misbehaving-device simulator)")  # fmt: skip


def _cluster_args(run: argparse.ArgumentParser) -> None:
    """``-w/-i/-a`` as ``python -m bytewax.run`` has them, and ``-p`` for one host."""
    c = run.add_argument_group(
        "scaling",
        "-w threads in this process; -i/-a make it one process of a Bytewax cluster (run "
        "the same command on every host with its own -i); -p N starts N processes here. "
        "Keyed per-sensor state is routed by Bytewax; with --group the MQTT clients of "
        "all processes share one $share subscription. Process i serves metrics on the "
        "base port + i.",
    )
    c.add_argument("-w", "--workers", type=int, default=1,
                   help="worker threads per process (default 1)")  # fmt: skip
    c.add_argument("-i", "--process-id", type=int, metavar="ID",
                   help="this process's index in -a (0, 1, …)")  # fmt: skip
    c.add_argument("-a", "--addresses", metavar="HOST:PORT;…",
                   help="every process's cluster address, in process-id order, "
                   "separated by ; (as python -m bytewax.run -a)")  # fmt: skip
    c.add_argument("-p", "--local-processes", type=int, default=1, metavar="N",
                   help="start N processes on this host as one cluster (default 1)")  # fmt: skip


def _processes(text: str) -> list[int]:
    """``1,2,4`` to ``[1, 2, 4]``."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        msg = f"{text!r} is not a list of process counts like 1,2,4"
        raise argparse.ArgumentTypeError(msg)
    return counts


def _scale_args(bench: argparse.ArgumentParser) -> None:
    scale = bench.add_argument_group("scaling benchmark (--processes)")
    scale.add_argument(
        "--processes",
        type=_processes,
        nargs="?",
        const=[1, 2],
        metavar="P,P,…",
        help="events/s of the air-quality flow as a cluster of P processes (one worker "
        "each) sharing one $share subscription, for each P (default 1,2), read from a "
        "private mosquitto pre-loaded with --events readings; prints speedup and "
        "efficiency = throughput(P) / (P x throughput(1))",
    )
    scale.add_argument("--per-message", type=int, default=50, metavar="K",
                       help="readings per MQTT message, a JSON array of one sensor's "
                       "readings (default 50; 1: one reading per message)")  # fmt: skip
    scale.add_argument("--repeat", type=int, default=1, metavar="N",
                       help="runs per P; the best is reported (default 1)")  # fmt: skip


def _soak_args(bench: argparse.ArgumentParser) -> None:
    soak = bench.add_argument_group("memory soak (--soak)")
    soak.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=100_000,
        metavar="SENSORS",
        help="run a churn of SENSORS sensors (default 100000) through the flow for --seconds "
        "and print RSS over time: it must level off as idle sensors are evicted",
    )
    soak.add_argument("--seconds", type=float, default=60.0, help="soak wall time (default 60)")
    soak.add_argument("--active", type=int, default=1000,
                      help="sensors sending at any one time (default 1000)")  # fmt: skip
    soak.add_argument("--idle-timeout", type=float, default=5.0, metavar="S",
                      help="evict a sensor's state after S s idle (default 5)")  # fmt: skip
    soak.add_argument("--report-every", type=float, default=5.0, metavar="S",
                      help="print RSS every S seconds (default 5)")  # fmt: skip


def _replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "replay",
        help="publish a dataset to sensors/<id>/readings on an MQTT broker",
        description="Publish a dataset to <prefix>sensors/<id>/readings in event-time "
        "order, one reading per message in a shape the flow parses (a PurpleAir snapshot: "
        "one message per sensor row; input that does not parse goes, unchanged, to "
        "sensors/_unparsed/readings). Paced at 1000 messages/s unless --rate or --max. "
        "Shows progress on stderr and ends with a count of published and acknowledged "
        "messages on stdout. Exit status: 0 when the broker acknowledged everything, 1 when "
        "it cannot be reached, refuses or stalls, 2 for bad input, 130 on Ctrl-C.",
    )
    r.add_argument("path", nargs="*", metavar="PATH", help="input file(s); none for simulator")
    r.add_argument("--format", required=True, choices=REPLAY_FORMATS, help="input format")
    r.add_argument(
        "--broker",
        metavar="URL",
        help="mqtt[s]://[user[:password]@]host[:port] (default mqtt://127.0.0.1:1883); "
        "password also from --password-file or EDGEWATCH_MQTT_PASSWORD",
    )
    pace = r.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=float, metavar="N", help="N messages/s on a fixed schedule (default 1000)"
    )
    pace.add_argument(
        "--max", action="store_true", help="as fast as possible (at most 1000 in flight)"
    )
    r.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="QoS (default 1)")
    r.add_argument("--prefix", help="topic prefix, e.g. site1/ (default none)")
    r.add_argument("--limit", type=int, metavar="N", help="publish the first N messages only")
    r.add_argument("--skip-unparsed", action="store_true", help="leave out unparsable input")
    r.add_argument("--client-id", help="MQTT client id (default edgewatch-replay-<host>-<pid>)")
    r.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="give up connecting after S seconds of retries (default 10)")  # fmt: skip
    r.add_argument("--ack-timeout", type=float, default=30.0, metavar="S",
                   help="fail when acknowledgements stall for S seconds (default 30)")  # fmt: skip
    for name, what in (("password-file", "file holding the broker password"),
                       ("ca-file", "CA certificates to verify an mqtts:// broker (PEM)"),
                       ("cert-file", "client certificate (PEM)"),
                       ("key-file", "the client certificate's key (PEM)")):  # fmt: skip
        r.add_argument(f"--{name}", metavar="FILE", help=what)
    r.add_argument("--config", metavar="FILE", help="TOML settings file")
    _simulator_args(r.add_argument_group("simulator (--format simulator)"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgewatch`` console script."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # edgewatch run -p re-runs it
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            from dataflows.runner import run_command  # noqa: PLC0415 - keep --help fast

            return run_command(args)
        if args.command == "score":
            from dataflows.scoring import score_command  # noqa: PLC0415

            return score_command(args)
        commands = {"replay": _replay, "train": _train, "evaluate": _evaluate,
                    "fleet": fleet_command}  # fmt: skip
        return commands.get(args.command, _bench)(args)
    except ConfigError as exc:
        sys.stderr.write(f"edgewatch: configuration error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("edgewatch: interrupted\n")
        return 130
    except BytewaxRuntimeError as exc:  # the flow stopped: say why, not where in Rust
        cause = root_cause(exc)
        sys.stderr.write(f"edgewatch: the flow stopped: {type(cause).__name__}: {cause}\n")
        return 1


def _train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser(
        "train",
        help="train a TFLite model (needs the train extra)",
        description="Train, convert (float32, builtin ops) and write a model with its "
        "metadata JSON and reference outputs to models/artifacts/ (or --out); prints the "
        "validation metrics. pump-ensemble-ae is exported with infer/train/save/restore "
        "signatures: each pump fine-tunes it on its own prefix in the TFLite interpreter. "
        "Needs pip install -e '.[train]'.",
    )
    t.add_argument("model", choices=("pump-autoencoder", "smart-meter-lstm", "pump-ensemble-ae"))
    t.add_argument("--out", metavar="DIR", help="output folder (default models/artifacts)")
    t.add_argument("--epochs", type=int, help="training epochs (default 40 / 12); "
                   "pump-ensemble-ae: full-batch Adam steps (default 2000)")  # fmt: skip
    t.add_argument("--window", type=int, help="feature window (default 10) / LSTM window (200)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--int8", action="store_true", help="also export and compare an int8 model")
    t.add_argument("--prefixes", nargs="+", metavar="PATH",
                   help="pump-ensemble-ae: also train on the first 400 rows of these "
                   "SKAB files (folders: their *.csv), the sensors --feedback is for")  # fmt: skip
    t.add_argument("--feedback", nargs="+", metavar="FILE",
                   help="pump-ensemble-ae: JSON lines of feedback records ({alert_id, label}) "
                   "and/or the pump flow's audit log or alerts; values of alerts confirmed "
                   "false_positive become normal training rows")  # fmt: skip
    t.add_argument("--federated", action="store_true",
                   help="pump-autoencoder: federated averaging over simulated nodes, each "
                   "holding some SKAB valve1 files (models/federated.py)")  # fmt: skip
    t.add_argument("--nodes", type=int, default=3, help="--federated: nodes (default 3)")
    t.add_argument("--rounds", type=int, default=5, help="--federated: rounds (default 5)")


def _evaluate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser(
        "evaluate",
        help="evaluate detectors on labelled data (SKAB pumps, the security simulator)",
        description="--dataset skab DIR: SKAB's protocol: per file, the first --train-rows "
        "rows train and the rest are streamed row by row; pooled F1, FAR % and MAR % "
        "against the anomaly column for each detector and for 1/2/3-of-3 votes. "
        "--dataset security-sim: the security flow over a simulated fleet with injected "
        "misbehaviour; per kind detected or not and windows to detect, false alarms per "
        "1,000 device-hours. Progress on stderr; the last line is one JSON object.",
    )
    e.add_argument("dir", metavar="DIR", nargs="?",
                   help="skab: folder of SKAB *.csv files (e.g. valve1)")  # fmt: skip
    e.add_argument("--dataset", required=True, choices=("skab", "security-sim"),
                   help="skab: the pump detectors on SKAB files; security-sim: the security "
                   "flow on the labelled misbehaving-device simulator")  # fmt: skip
    sim = e.add_argument_group("security-sim (per kind of misbehaviour: detected, windows "
                               "to detect; false alarms per 1,000 device-hours)")  # fmt: skip
    sim.add_argument("--devices", type=int, default=1000, help="devices (default 1000)")
    sim.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    sim.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    sim.add_argument("--misbehaviours", type=int, default=10, metavar="N",
                     help="misbehaving devices injected (default 10)")  # fmt: skip
    sim.add_argument("--strict", action="store_true",
                     help="exit 1 unless every misbehaviour is detected, the median time "
                     "to detect is <= 2 windows and false alarms <= 1 per 1,000 "
                     "device-hours")  # fmt: skip
    e.add_argument("--detector", default="all",
                   choices=("hst", "mahalanobis", "autoencoder", "ensemble", "all"),
                   help="rows of the table (default all)")  # fmt: skip
    e.add_argument("--k", type=int, default=2, choices=(1, 2, 3), help="votes to alert (2)")
    e.add_argument("--train-rows", type=int, default=400, metavar="N",
                   help="training prefix of each file (default 400)")  # fmt: skip
    e.add_argument("--plot", metavar="OUT_DIR",
                   help="one PNG per file (needs pip install -e '.[plot]')")  # fmt: skip
    e.add_argument("--autoencoder", choices=("numpy", "tflite"),
                   help="the ensemble's autoencoder: the shipped TFLite model fine-tuned "
                   "on each file's prefix by the interpreter (default, where it was "
                   "trained for the screened channels) or a per-file numpy one from "
                   "random weights")  # fmt: skip
    e.add_argument("--tflite-model", metavar="NAME|PATH",
                   help="with --autoencoder tflite: another .tflite (from edgewatch train "
                   "pump-ensemble-ae --out)")  # fmt: skip
    e.add_argument("--ae-steps", type=int, metavar="N",
                   help="autoencoder Adam steps on each prefix (600; with tflite, 0 scores "
                   "with the shipped weights as they are)")  # fmt: skip
    e.add_argument("--threshold", choices=("prefix", "adaptive", "fixed"),
                   help="detector thresholds: prefix quantiles (default), adaptive per "
                   "context, or fixed context factors (see the README's Pump flow)")  # fmt: skip
    e.add_argument(
        "--context",
        metavar="PARTS",
        help="threshold context: comma-separated hour, daypart, season (hour)",
    )
    e.add_argument("--threshold-factors", metavar="PART=F,…",
                   help="with --threshold fixed: e.g. summer=1.05,8=1.1 (default: the "
                   "seed's factors)")  # fmt: skip


def _evaluate(args: argparse.Namespace) -> int:
    if args.dataset == "security-sim":
        from dataflows.evaluate_security import security_eval_command  # noqa: PLC0415

        return security_eval_command(args)
    if not args.dir:
        msg = "--dataset skab needs DIR, a folder of SKAB *.csv files (e.g. valve1)"
        raise ConfigError(msg)
    from dataflows.evaluate_skab import evaluate_command  # noqa: PLC0415

    return evaluate_command(args)


def _train(args: argparse.Namespace) -> int:
    if args.federated:
        from models.federated import federated_command  # noqa: PLC0415 - needs the train extra

        return federated_command(args)
    from models.train import train_command  # noqa: PLC0415 - needs the train extra

    return train_command(args)


def _replay(args: argparse.Namespace) -> int:
    from dataflows.replay import replay_command  # noqa: PLC0415

    return replay_command(args)


def _bench(args: argparse.Namespace) -> int:
    if args.detector:
        from dataflows.bench import model_bench_command  # noqa: PLC0415

        return model_bench_command(args)
    if args.soak:
        from dataflows.bench_soak import soak_command  # noqa: PLC0415

        return soak_command(args)
    if args.processes:
        from dataflows.bench_scale import scale_bench_command  # noqa: PLC0415

        return scale_bench_command(args)
    if args.flow == "security":
        from dataflows.bench_security import security_bench_command  # noqa: PLC0415

        return security_bench_command(args)
    if args.mqtt:
        from dataflows.bench_mqtt import mqtt_bench_command  # noqa: PLC0415

        return mqtt_bench_command(args)
    from dataflows.bench import bench_command  # noqa: PLC0415

    return bench_command(args)


def root_cause(exc: BaseException) -> BaseException:
    """The first exception in a chain that is not Bytewax's wrapper around it.

    >>> try:
    ...     try:
    ...         raise KeyError("inner")
    ...     except KeyError as e:
    ...         raise BytewaxRuntimeError("in step x") from e
    ... except RuntimeError as e:
    ...     root_cause(e)
    KeyError('inner')
    """
    while isinstance(exc, BytewaxRuntimeError):
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


if __name__ == "__main__":
    sys.exit(main())
