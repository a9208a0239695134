"""`tunesmith eval BENCH MODEL`: a recipe's evaluation step alone, with its options and output files."""

from __future__ import annotations

import json

import pytest
from conftest import shared
from typer.testing import CliRunner

from tunesmith.cli import app


def _run(*args):
    r = CliRunner().invoke(app, list(args))
    return r


def test_eval_gsm8k_writes_the_recipe_files(tmp_path, tiny_model_dir):
    shared("gsm8k", "test.jsonl")
    out = tmp_path / "runs"
    r = _run(
        "eval",
        "gsm8k",
        str(tiny_model_dir),
        "--limit",
        "3",
        "--set",
        f"output_dir={out}",
        "--set",
        "eval.k_shot=1",
        "--set",
        "eval.max_new_tokens=4",
        "--set",
        "model.dtype=fp32",
    )
    assert r.exit_code == 0, r.output
    run = out / "eval-gsm8k"
    preds = [json.loads(ln) for ln in (run / "gsm8k_preds_eval-gsm8k.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and {"strict", "flexible", "gold", "k_shot"} <= set(preds[0]) and preds[0]["k_shot"] == 1
    m = json.loads((run / "metrics.json").read_text())
    assert m["benchmark"] == "gsm8k" and m["gsm8k"]["n"] == 3 and 0 <= m["gsm8k"]["strict_accuracy"] <= 1
    assert (run / "data" / "fewshot_pool.jsonl").is_file()  # the pool a recipe run would use, recorded
    assert "strict_accuracy" in r.output


def test_eval_takes_options_from_a_recipe_config(tmp_path, tiny_model_dir):
    shared("gsm8k", "test.jsonl")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"recipe: gsm8k\nrun_name: from-config\noutput_dir: {tmp_path / 'runs'}\n"
        "eval: {k_shot: 2, max_new_tokens: 3}\nmodel: {dtype: fp32}\n"
    )
    r = _run("eval", "gsm8k", str(tiny_model_dir), "--config", str(cfg), "--limit", "2")
    assert r.exit_code == 0, r.output
    preds = (tmp_path / "runs" / "from-config" / "gsm8k_preds_from-config.jsonl").read_text().splitlines()
    assert [json.loads(p)["k_shot"] for p in preds] == [2, 2]


def test_eval_refuses_a_config_of_another_recipe(tmp_path, tiny_model_dir):
    cfg = tmp_path / "e.yaml"
    cfg.write_text("recipe: empathy\n")
    r = _run("eval", "gsm8k", str(tiny_model_dir), "--config", str(cfg))
    assert r.exit_code != 0 and "takes a gsm8k config" in str(r.exception)


def test_eval_unknown_benchmark():
    r = _run("eval", "mmlu", "builtin:smollm2-135m-instruct")
    assert r.exit_code != 0 and "unknown benchmark 'mmlu'" in str(r.exception)


@pytest.mark.parametrize("bench", ["heads"])
def test_heads_benchmark_needs_heads(tmp_path, tiny_model_dir, bench):
    shared("goemotions", "dev.tsv")
    r = _run("eval", bench, str(tiny_model_dir), "--set", f"output_dir={tmp_path}")
    assert r.exit_code != 0 and "heads.safetensors" in str(r.exception)
