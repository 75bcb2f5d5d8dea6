"""The security flow end to end on the labelled misbehaving-device simulator."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main

from dataflows.cli import main
from dataflows.evaluate_security import evaluate_security
from dataflows.security import build_flow, fleet_config
from dataflows.settings import ConfigError, Settings
from operators.records import Alert
from sources.security_sim import DeviceFleet, DeviceFleetConfig

# 60 devices over 4 h: every kind of misbehaviour once or more, about 58,000 events
SMALL = DeviceFleetConfig(devices=60, duration_s=4 * 3600, seed=7)


@pytest.fixture(scope="module")
def small_result() -> dict[str, object]:
    settings = dataclasses.replace(Settings.load(env={}), metrics_addr="")
    return evaluate_security(SMALL, settings)


def test_every_injected_misbehaviour_is_detected_without_false_alarms(
    small_result: dict[str, object],
) -> None:
    r = small_result
    kinds = r["kinds"]
    assert isinstance(kinds, list)
    assert {k["kind"] for k in kinds} == {"flood", "foreign_topic", "oversized", "malformed",
                                          "reboot_loop", "silent", "wrong_password"}  # fmt: skip
    missed = [k for k in kinds if not k["detected"]]
    assert missed == [] and r["detected"] == r["injected"] == 10
    assert isinstance(r["median_windows_to_detect"], float)
    assert r["median_windows_to_detect"] <= 2
    assert r["false_alarms"] == 0
    expected = {"flood": "messages", "foreign_topic": "foreign_writes",
                "oversized": {"size_max", "size_mean", "kbytes"}, "malformed": "invalid_ratio",
                "reboot_loop": {"reboots", "connects", "disconnects"},
                "silent": {"messages", "silent_windows"},
                "wrong_password": "auth_failures"}  # fmt: skip
    for k in kinds:
        want = expected[k["kind"]]
        assert k["reason"] in (want if isinstance(want, set) else {want}), k


def test_alerts_are_deterministic_and_name_drivers_and_baselines(tmp_path: Path) -> None:
    def run(run: int) -> list[Alert]:
        out: list[Alert] = []
        s = dataclasses.replace(Settings.load(env={}), alerts_path=str(tmp_path / f"{run}.jsonl"),
                                deadletter_path="", metrics_addr="",
                                audit_path=str(tmp_path / f"audit{run}.jsonl"))  # fmt: skip
        events = list(DeviceFleet(SMALL).events())
        run_main(build_flow(s, source=TestingSource(events, 500), on_alerts=out.extend))
        return out

    first, second = run(1), run(2)
    assert [a.alert_id for a in first] == [a.alert_id for a in second] and first
    lines = [orjson.loads(x) for x in (tmp_path / "1.jsonl").read_bytes().splitlines()]
    assert len(lines) == len(first) and all(x["kind"] == "security" for x in lines)
    flood = next(x for x in lines if x["details"]["reason"] == "messages"
                 and x["values"]["messages"] > 40)  # fmt: skip
    driver = flood["details"]["drivers"]["messages"]
    assert driver["median"] in (3, 4, 5) and driver["z"] > 10 and flood["votes"]["hst"]["vote"]
    audit = (tmp_path / "audit1.jsonl").read_bytes().splitlines()
    assert len(audit) == len(first)


def test_edgewatch_run_flow_security_prints_alerts_and_the_evaluation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run", "--flow", "security", "--sensors", "40", "--duration", "3h",
                 "--metrics-addr", ""])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "security flow on the misbehaving-device simulator (40 devices, 3 h" in out
    assert "misbehaviour detected 10/10" in out and "false alarms 0 " in out


def test_evaluate_security_sim_command_ends_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--dataset", "security-sim", "--devices", "40", "--hours", "3",
                 "--strict"])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    result = orjson.loads(out[-1])
    assert code == 0 and result["dataset"] == "security-sim" and result["devices"] == 40
    assert any(line.startswith("wrong_password") for line in out)


def test_bench_flow_security_reports_against_its_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--flow", "security", "--events", "20000", "--sensors", "200",
                 "--json"]) == 0  # fmt: skip
    result = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the events end at a window boundary: a window cut short would look like silence
    assert result["flow"] == "security" and 19_000 < result["events"] <= 20_000
    assert result["alerts"] == 0
    assert result["events_per_s"] > 0 and result["baseline_events_per_s"] > 0
    assert result["ratio_to_baseline"] == pytest.approx(
        result["events_per_s"] / result["baseline_events_per_s"], rel=0.01
    )


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="security_k"):
        dataclasses.replace(Settings.load(env={}), security_k=3).validate()
    with pytest.raises(ConfigError, match="reads mqtt or the simulator"):
        build_flow(dataclasses.replace(Settings.load(env={}), source="jsonl",
                                       source_path=("x.jsonl",)))  # fmt: skip
    s = dataclasses.replace(Settings.load(env={}), sim_sensors=30, security_misbehaviours=3)
    assert fleet_config(s).devices == 30 and fleet_config(s).misbehaviours == 3


def test_a_killed_flow_resumes_with_its_windows_and_baselines(tmp_path: Path) -> None:
    """Aborted after the misbehaviours began and resumed from Bytewax's recovery store,
    the flow raises the alerts of an uninterrupted run, with the same ids and scores."""
    events = list(DeviceFleet(SMALL).events())
    s = dataclasses.replace(Settings.load(env={}), alerts_path="", deadletter_path="",
                            metrics_addr="")  # fmt: skip
    whole: list[Alert] = []
    run_main(build_flow(s, source=TestingSource(events, 500), on_alerts=whole.extend))
    assert len(whole) == 10

    (tmp_path / "rec").mkdir()
    init_db_dir(tmp_path / "rec", 1)
    recovery = RecoveryConfig(str(tmp_path / "rec"))
    cut = len(events) * 2 // 3
    items = [*events[:cut], TestingSource.ABORT(), *events[cut:]]
    runs: list[list[Alert]] = [[], []]
    for got in runs:
        flow = build_flow(s, source=TestingSource(items, 500), on_alerts=got.extend)
        run_main(flow, epoch_interval=timedelta(seconds=0), recovery_config=recovery)
    assert runs[0] and runs[1], "alerts before the kill and after the resume"
    resumed = {a.alert_id: a.score for a in runs[0] + runs[1]}
    assert resumed == {a.alert_id: a.score for a in whole}
