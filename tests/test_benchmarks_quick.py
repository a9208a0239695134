"""The CPU benchmark scripts run end to end (--quick, tiny random model) and end with their summary
lines. Speed targets are the benchmarks' business, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

pytestmark = pytest.mark.slow


def run(script: str, *args: str, timeout: int = 300) -> list[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_train_throughput_packing_quick(tmp_path, tiny_model_dir):
    out = tmp_path / "pack.json"
    lines = run("train_throughput.py", "--quick", "--packing", "--model", str(tiny_model_dir), "--json", str(out))
    assert lines[-1].startswith("packed  : ") and "packed/unpacked = " in lines[-1]
    res = json.loads(out.read_text())
    assert res["summary"]["packed"] > 0 and res["summary"]["unpacked"] > 0


def test_train_throughput_quick(tmp_path, tiny_model_dir):
    out = tmp_path / "train.json"
    lines = run("train_throughput.py", "--quick", "--model", str(tiny_model_dir), "--json", str(out))
    assert lines[-3].startswith("ratio a/c tokens/s = ")
    assert lines[-2].startswith("ratio a/c peak RSS = ")
    assert lines[-1].startswith("ratio b/a tokens/s = ")
    for c in "abc":
        assert any(line.startswith(f"({c}) ") and "tokens/s" in line and "peak RSS" in line for line in lines[-6:])
    res = json.loads(out.read_text())
    assert set(res["summary"]) == {"a", "b", "c"}
    assert all(s["tokens_per_s"] > 0 and s["peak_rss_mib"] > 0 for s in res["summary"].values())
    runs = {c: r[0] for c, r in res["runs"].items()}
    # identical batches everywhere; (a) and (c) start from the same model on the same labels
    assert runs["a"]["step_tokens"] == runs["b"]["step_tokens"] == runs["c"]["step_tokens"]
    assert runs["a"]["loss"][0] == pytest.approx(runs["c"]["loss"][0], rel=2e-2)
    assert runs["b"]["components"]["kl"] is not None  # the KL path ran


def test_eval_throughput_quick(tmp_path, tiny_model_dir):
    out = tmp_path / "eval.json"
    lines = run("eval_throughput.py", "--quick", "--model", str(tiny_model_dir), "--json", str(out))
    assert lines[-1].startswith("ratio batched/one-at-a-time questions/s = ")
    assert "questions/s" in lines[-2] and "questions/s" in lines[-3]
    assert lines[-4].startswith("identical outputs")
    s = json.loads(out.read_text())["summary"]
    assert s["batched"]["questions_per_s"] > 0 and s["one_at_a_time"]["questions_per_s"] > 0
    assert 0 <= s["identical_outputs"] <= s["questions"] == 4
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        assert s["lm_eval"] is None  # the peer is a benchmarks-only extra
    else:
        assert s["lm_eval"]["questions_per_s"] > 0 and s["lm_eval"]["same_contexts"] == 4
        assert 0 <= s["lm_eval"]["identical_answers"] <= 4
