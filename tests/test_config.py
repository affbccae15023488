"""Presets validate, overrides apply, and bad keys fail with one line that names the key."""

import pytest

from agent.config import PRESET_DIR, ConfigError, apply_overrides, dump, load_config, validate


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
def test_every_shipped_preset_validates(preset):
    cfg, raw = load_config(preset)
    assert cfg.rounds >= 1
    # what is stored with a run validates back to the same config
    assert validate(dump(cfg)) == cfg


def test_default_preset_is_the_builtin_world():
    cfg, _ = load_config()
    assert cfg.generate.backend == "toy" and cfg.judge.backend == "physics" and cfg.data.source == "world"
    assert cfg.rounds == 5


def test_overrides_parse_toml_literals():
    cfg, _ = load_config("smoke", ["train.steps=7", "plan.tau=0", "refine.enabled=false", "train.objective=sft"])
    assert cfg.train.steps == 7 and cfg.plan.tau == 0.0 and cfg.refine.enabled is False
    assert cfg.train.objective == "sft"


def test_override_creates_nested_tables_without_touching_the_input():
    raw = {"train": {"steps": 3}}
    out = apply_overrides(raw, ["evaluate.clips_per_prompt=3"])
    assert out["evaluate"] == {"clips_per_prompt": 3} and "evaluate" not in raw


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        load_config("smoke", ["train.stpes=3"])
    msg = str(e.value)
    assert "train.stpes" in msg and "steps" in msg and "\n" not in msg


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_config("smoke", ["generate.group_size=1"])
    assert "generate.group_size" in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as e:
        load_config("nope")
    assert "smoke" in str(e.value) and "default" in str(e.value)


def test_malformed_toml_is_one_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "not valid TOML" in str(e.value)


def test_non_utf8_preset(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_bytes(b"rounds = 3\n# \xff\xfe\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "UTF-8" in str(e.value)


def test_wan_backend_needs_its_table():
    with pytest.raises(ConfigError) as e:
        load_config("smoke", ["generate.backend='wan'", "data.source='store'"])
    assert "generate.wan" in str(e.value)
