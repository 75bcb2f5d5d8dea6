from __future__ import annotations

from pathlib import Path

import pytest

from dataflows.settings import ConfigError, Settings


def test_defaults_match_the_seed() -> None:
    s = Settings.load(env={})
    assert (s.hst_trees, s.hst_height, s.hst_window, s.hst_seed) == (10, 8, 72, 11)
    assert s.hst_limits == {"pm1.0_cf_1": (0.0, 1200.0)} and s.threshold == 0.7
    assert s.impute_fields == ("temperature", "humidity", "pressure", "pm1.0_cf_1")


def test_precedence_toml_then_env_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "edgewatch.toml"
    cfg.write_text(
        '[edgewatch]\nthreshold = 0.8\nsim-sensors = 9\nmode = "fleet"\n'
        'hst_limits = { "pm1.0_cf_1" = [0, 500], "x" = [-1, 1] }\n'
    )
    env = {
        "EDGEWATCH_CONFIG": str(cfg),
        "EDGEWATCH_SIM_SENSORS": "12",
        "EDGEWATCH_IMPUTE_FIELDS": "a, b",
    }
    s = Settings.load(env=env, threshold=0.9)
    assert s.threshold == 0.9 and s.sim_sensors == 12 and s.mode == "fleet"
    assert s.impute_fields == ("a", "b")
    assert s.hst_limits == {"pm1.0_cf_1": (0.0, 500.0), "x": (-1.0, 1.0)}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGEWATCH_THRESHOLD": "high"}, "threshold='high' is not a valid float"),
        ({"EDGEWATCH_THRESHOLD": "1.5"}, "threshold must lie in [0, 1]"),
        ({"EDGEWATCH_MODE": "global"}, "mode must be one of"),
        ({"EDGEWATCH_SOURCE": "jsonl"}, "needs source_path"),
        ({"EDGEWATCH_HST_LIMITS": "pm:5:1"}, "low < high"),
        ({"EDGEWATCH_SIM_SENSORS": "2.5"}, "sim_sensors='2.5' is not a valid int"),
        ({"EDGEWATCH_CONFIG": "/nonexistent.toml"}, "does not exist"),
    ],
)
def test_errors_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings.load(env=env)


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("treshold = 0.5\n")
    with pytest.raises(ConfigError, match="unknown setting.*treshold"):
        Settings.load(cfg, env={})
