"""Config validation: unknown keys with suggestions, type errors, cross-field checks, YAML errors
with file:line, --set overrides, every shipped config parses, and the CLI's one-line exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunesmith.config import Gsm8kRunConfig, RunConfig, apply_override, load_config, parse_config
from tunesmith.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs").glob("*.yml"))


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---- unknown keys ----------------------------------------------------------------------------


def test_unknown_top_level_key_names_it_and_suggests_the_closest(tmp_path):
    p = write(tmp_path, "recipe: gsm8k\ntrainng:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'trainng'" in msg
    assert "did you mean 'training'?" in msg
    assert str(p) in msg


def test_unknown_nested_key_names_the_dotted_path_and_suggests(tmp_path):
    p = write(tmp_path, "training:\n  learnig_rate: 1.0e-4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'training.learnig_rate'" in msg
    assert "did you mean 'training.learning_rate'?" in msg


def test_unknown_deeply_nested_key(tmp_path):
    p = write(tmp_path, "data:\n  gsm8k:\n    fewshot_pool_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'data.gsm8k.fewshot_pool_sise'" in msg
    assert "did you mean 'data.gsm8k.fewshot_pool_size'?" in msg


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as e:
        parse_config({"eval": {"zzzzqqq": 1}})
    msg = str(e.value)
    assert "'eval.zzzzqqq'" in msg
    assert "did you mean" not in msg
    assert "k_shot" in msg  # lists the keys valid there


# ---- types and cross-field checks --------------------------------------------------------------


def test_wrong_type_names_the_key(tmp_path):
    p = write(tmp_path, "training:\n  batch_size: four\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'training.batch_size'" in msg
    assert "four" in msg


def test_wrong_literal_names_the_key():
    with pytest.raises(ConfigError) as e:
        parse_config({"model": {"dtype": "float33"}})
    assert "'model.dtype'" in str(e.value)


def test_out_of_range_value_names_the_key():
    with pytest.raises(ConfigError) as e:
        parse_config({"lora": {"r": 0}})
    assert "'lora.r'" in str(e.value)


def test_k_shot_larger_than_pool_is_an_error():
    with pytest.raises(ConfigError) as e:
        parse_config({"eval": {"k_shot": 5}, "data": {"gsm8k": {"fewshot_pool_size": 3}}})
    msg = str(e.value)
    assert "k_shot=5" in msg and "fewshot_pool_size=3" in msg
    # equal is fine
    cfg = parse_config({"eval": {"k_shot": 3}, "data": {"gsm8k": {"fewshot_pool_size": 3}}})
    assert cfg.eval.k_shot == 3


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError) as e:
        parse_config({"training": 5})
    assert "training" in str(e.value)


# ---- YAML problems -----------------------------------------------------------------------------


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "recipe: gsm8k\nrun_name: x\ntraining:\n  epochs: [1, 2\n  batch_size: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "invalid YAML" in msg
    # the error location is reported as path:line (1-based) inside the file
    prefix = msg.split(": invalid YAML")[0]
    path, line = prefix.rsplit(":", 1)
    assert path == str(p)
    assert 3 <= int(line) <= 6


def test_tab_indentation_yaml_error_names_line(tmp_path):
    p = write(tmp_path, "recipe: gsm8k\ntraining:\n\tepochs: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:3" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == Gsm8kRunConfig()


# ---- --set overrides ---------------------------------------------------------------------------


def test_set_overrides_values_and_parses_yaml_scalars(tmp_path):
    p = write(tmp_path, "training:\n  learning_rate: 1.0e-4\n  epochs: 1\n")
    cfg = load_config(
        p,
        [
            "training.learning_rate=3e-4",
            "training.epochs=2",
            "eval.evaluate_base=true",
            "run_name=other",
            "lora.target_modules=[q_proj, v_proj]",
            "safety.limit=null",
        ],
    )
    assert cfg.training.learning_rate == pytest.approx(3e-4)
    assert cfg.training.epochs == 2
    assert cfg.eval.evaluate_base is True
    assert cfg.run_name == "other"
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.safety.limit is None


def test_set_override_creates_missing_sections(tmp_path):
    cfg = load_config(write(tmp_path, "recipe: gsm8k\n"), ["data.gsm8k.limit_test=7"])
    assert cfg.data.gsm8k.limit_test == 7


def test_set_override_with_typo_is_an_unknown_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, ""), ["training.epoks=2"])
    assert "did you mean 'training.epochs'?" in str(e.value)


def test_set_override_value_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="'training.batch_size'"):
        load_config(write(tmp_path, ""), ["training.batch_size=-1"])


def test_set_override_malformed():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_override({}, "training.epochs")
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"run_name": "x"}, "run_name.sub=1")


def test_smoke_caps():
    cfg = parse_config({"data": {"gsm8k": {"limit_train": 10}}, "smoke": {"train": 50, "test": 5, "safety": 3}})
    cfg.apply_smoke_test()
    assert cfg.data.gsm8k.limit_train == 10  # already below the cap
    assert cfg.data.gsm8k.limit_test == 5
    assert cfg.safety.limit == 3


# ---- shipped configs -------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    # the file holds no key the schema would silently drop
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    dumped = cfg.model_dump()
    for k in raw:
        assert k in dumped


def test_there_are_shipped_configs():
    assert CONFIGS, "configs/ holds no YAML"


# ---- CLI ---------------------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_typo_exits_2_with_one_line_and_no_run_dir(tmp_path):
    out_dir = tmp_path / "outputs"
    p = write(
        tmp_path,
        f"recipe: gsm8k\nrun_name: typo\noutput_dir: {out_dir}\nsummary_csv: {tmp_path / 'summary.csv'}\n"
        "training:\n  learnig_rate: 1.0e-4\n",
    )
    r = _cli(["run", str(p)], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "training.learnig_rate" in lines[0] and "training.learning_rate" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not out_dir.exists()
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "summary.csv").exists()


def test_cli_bad_set_override_exits_2(tmp_path):
    out_dir = tmp_path / "outputs"
    p = write(tmp_path, f"output_dir: {out_dir}\n")
    r = _cli(["run", str(p), "--set", "eval.k_shot=99"], tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "k_shot=99" in lines[0]
    assert "Traceback" not in r.stderr
    assert not out_dir.exists()
