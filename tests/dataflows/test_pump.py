"""The pump flow end to end on SKAB valve1 files: ensemble alerts, audit, incidents, recovery."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main

from dataflows.inputs import iter_messages
from dataflows.pump import SKAB_DIR, build_flow, ensemble_config, pump_settings
from dataflows.settings import ConfigError, Settings
from models.ensemble import PumpEnsemble
from operators.records import Alert, RawMessage
from sources.files import skab_source

FILES = [SKAB_DIR / f"{i}.csv" for i in (1, 2, 3)]
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not all(f.is_file() for f in FILES), reason="no SKAB valve1 data"),
]


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "source": "skab",
        "source_path": tuple(map(str, FILES)),
        "alerts_path": str(tmp_path / "alerts.jsonl"),
        "deadletter_path": str(tmp_path / "dead.jsonl"),
        "audit_path": str(tmp_path / "audit" / "audit.jsonl"),
        "metrics_addr": "",
    }
    return Settings.load(env={}, **(values | overrides))


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def prefix_end(path: Path, rows: int = 400) -> datetime:
    """Event time of a file's ``rows``-th reading (the last of the training prefix)."""
    with path.open() as f:
        stamp = list(csv.reader(f, delimiter=";"))[rows][0]
    return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc)


def test_alerts_carry_every_vote_are_stable_and_audited(tmp_path: Path) -> None:
    s = settings(tmp_path, fleet_groups=("*=valve1",), fleet_k=3, fleet_window_s=3600)
    got: list[Alert] = []
    run_main(build_flow(s, on_alerts=got.extend))
    alerts = [a for a in lines(tmp_path / "alerts.jsonl") if a["detector"] == "ensemble"]
    incidents = [a for a in lines(tmp_path / "alerts.jsonl") if a["detector"] == "fleet"]

    assert {a["sensor_id"] for a in alerts} == {"1", "2", "3"}
    for a in alerts:
        votes = a["votes"]
        assert set(votes) == {"hst", "mahalanobis", "autoencoder"}
        voted = [v["vote"] for v in votes.values()]
        assert sum(voted) >= 2 and a["score"] == pytest.approx(sum(voted) / 3)
        assert all(v["vote"] == (v["score"] > v["threshold"]) for v in votes.values())
        assert a["severity"] == ("critical" if all(voted) else "warning")
    for f in FILES:  # nothing in a pump's 400-row training prefix
        first = min(datetime.fromisoformat(a["ts"]) for a in alerts if a["sensor_id"] == f.stem)
        assert first > prefix_end(f)

    # a fleet incident: all three pumps of the group alerted within the hour
    assert incidents and incidents[0]["sensor_id"] == "fleet/valve1"
    assert set(incidents[0]["votes"]) == {"1", "2", "3"} and incidents[0]["threshold"] == 3

    # the audit log holds every alert and incident, with where they went and the model
    audit = lines(tmp_path / "audit" / "audit.jsonl")
    assert sorted(a["alert_id"] for a in audit) == sorted(a["alert_id"] for a in alerts + incidents)
    assert all(a["delivered_to"] == ["jsonl"] for a in audit)
    assert {a["model_version"] for a in audit} == {PumpEnsemble(ensemble_config(s)).model_version}
    assert audit[0]["model_version"].endswith(":ft600")  # the TFLite member, fine-tuned

    # a second run gives the same alert ids (a replay can be deduped)
    again: list[Alert] = []
    run_main(build_flow(settings(tmp_path / "again", fleet_groups=("*=valve1",), fleet_k=3,
                                 fleet_window_s=3600), on_alerts=again.extend))  # fmt: skip
    assert [a.alert_id for a in again] and sorted(a.alert_id for a in again) == sorted(
        a.alert_id for a in got
    )


ADAPTIVE = {"pump_threshold": "adaptive", "pump_context": ("season", "hour"),
            "ensemble_autoencoder": "tflite"}  # fmt: skip


@pytest.mark.parametrize(("extra", "kill"), [({}, 700), (ADAPTIVE, 600)],
                         ids=["prefix", "adaptive-tflite"])  # fmt: skip
def test_recovery_resumes_each_pumps_ensemble(
    tmp_path: Path, extra: dict[str, Any], kill: int
) -> None:
    """Killed past the 400-row prefix, the resumed flow keeps its models and, adaptive,
    its thresholds (file 1 alerts from row 581, 664 with the TFLite member)."""
    messages: list[RawMessage] = list(iter_messages(skab_source(FILES[:1])))
    whole: list[Alert] = []
    base = settings(tmp_path, alerts_path="", audit_path="", **extra)
    run_main(build_flow(base, source=TestingSource(messages, 50), on_alerts=whole.extend))

    (tmp_path / "rec").mkdir()
    init_db_dir(tmp_path / "rec", 1)
    recovery = RecoveryConfig(str(tmp_path / "rec"))
    items = [*messages[:kill], TestingSource.ABORT(), *messages[kill:]]
    runs: list[list[Alert]] = [[], []]
    for got in runs:
        src = TestingSource(items, batch_size=50)
        flow = build_flow(base, source=src, on_alerts=got.extend)
        run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert runs[1], "the resumed run scored (a fresh ensemble would still be training)"
    resumed = {a.alert_id: (a.score, a.votes) for a in runs[0] + runs[1]}
    assert resumed == {a.alert_id: (a.score, a.votes) for a in whole}


def test_unfillable_channel_is_dead_lettered(tmp_path: Path) -> None:
    t = 1_583_748_873
    rows = [{"sensor_id": "p", "ts": t + i, "values": {"Current": 1.0}} for i in range(3)]
    messages: list[RawMessage] = [("t", orjson.dumps(r), 0.0) for r in rows]
    run_main(build_flow(settings(tmp_path), source=TestingSource(messages)))
    dead = lines(tmp_path / "dead.jsonl")
    assert [d["reason"] for d in dead] == ["missing_channel"] * 3
    assert "Accelerometer1RMS" in dead[0]["detail"]


def test_default_input_is_the_skab_replay(tmp_path: Path) -> None:
    s = pump_settings(Settings.load(env={}))
    assert s.source == "skab" and s.source_path[:3] == tuple(str(SKAB_DIR / f"{i}.csv")
                                                              for i in range(3))  # fmt: skip
    with pytest.raises(ConfigError, match="no SKAB files"):
        pump_settings(Settings.load(env={}), tmp_path)
    with pytest.raises(ConfigError, match="fleet_groups"):
        build_flow(settings(tmp_path, fleet_groups=("*=a/b",)))


def test_adaptive_thresholds_and_tflite_member_in_the_flow(tmp_path: Path) -> None:
    s = settings(tmp_path, **ADAPTIVE)
    run_main(build_flow(s))
    alerts = [a for a in lines(tmp_path / "alerts.jsonl") if a["detector"] == "ensemble"]
    assert {a["sensor_id"] for a in alerts} == {"1", "2", "3"}  # 6, 4 and 16 alerts
    for sensor in ("1", "3"):  # thresholds move with recent scores, alert by alert
        mine = [a for a in alerts if a["sensor_id"] == sensor]
        assert all(len({a["votes"][d]["threshold"] for a in mine}) > 1
                   for d in ("hst", "mahalanobis", "autoencoder"))  # fmt: skip
    for a in alerts:
        assert all(v["vote"] == (v["score"] > v["threshold"]) for v in a["votes"].values())
    audit = lines(tmp_path / "audit" / "audit.jsonl")
    assert {a["model_version"] for a in audit} == {PumpEnsemble(ensemble_config(s)).model_version}
    assert audit[0]["model_version"].startswith("pump-ensemble-1+ae:tflite:")


def test_threshold_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode needs pump_mode_field"):
        settings(tmp_path, pump_threshold="adaptive", pump_context=("mode",))
    with pytest.raises(ConfigError, match="PART=FACTOR"):
        ensemble_config(settings(tmp_path, pump_threshold="fixed",
                                 pump_threshold_factors=("summer",)))  # fmt: skip
    with pytest.raises(ConfigError, match="IANA"):
        build_flow(settings(tmp_path, pump_threshold="adaptive", pump_timezone="Mars/Base"))
    fixed = ensemble_config(settings(tmp_path, pump_threshold="fixed"))
    assert dict(fixed.threshold_factors) == {"summer": 1.05, "autumn": 0.95, "winter": 0.95,
                                             "spring": 0.95, 8: 1.1, 9: 1.1, 10: 1.1}  # fmt: skip
