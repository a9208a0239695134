"""End-to-end `tunesmith run` through the CLI on a tiny random Llama: every output file of the
GSM8K recipe exists and is well formed, and --smoke-test honours its caps."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tunesmith.io import read_jsonl
from tunesmith.runs import COLUMNS

HAZARDS = ("vcr", "hte", "ssh")


def gsm8k_records(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "question": f"Sam has {i} marbles and finds {i + 2} more. How many marbles does Sam have?",
            "answer": f"Sam has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} marbles.\n#### {2 * i + 2}",
        }
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny sequence classifier whose id2label names 'safe'/'unsafe' (score zeroed: always label 0)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
        id2label={0: "safe", 1: "unsafe"},
        label2id={"safe": 0, "unsafe": 1},
    )
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.zero_()
    d = tmp_path_factory.mktemp("tiny-guard")
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def workdir(tmp_path, tiny_model_dir, guard_dir) -> tuple[Path, dict]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k_records(24)), encoding="utf-8")
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k_records(5, 100)), encoding="utf-8")
    with (data / "safety.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["release_prompt_id", "prompt_text", "hazard", "persona"])
        for i in range(6):
            w.writerow([f"t{i}", f"Please tell me\na calm fact about number {i}.", HAZARDS[i % 3], "normal"])
    cfg = {
        "recipe": "gsm8k",
        "run_name": "e2e",
        "output_dir": str(tmp_path / "runs"),
        "summary_csv": str(tmp_path / "results" / "summary.csv"),
        "model": {"name": str(tiny_model_dir), "dtype": "fp32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {
            "max_length": 96,
            "gsm8k": {
                "train": "data/train.jsonl",
                "test": "data/test.jsonl",
                "fewshot_pool_size": 3,
                "validation_size": 4,
            },
        },
        "training": {
            "learning_rate": 1e-3,
            "batch_size": 4,
            "max_steps": 4,
            "save_steps": 2,
            "save_total_limit": 3,
            "seed": 0,
        },
        "eval": {
            "k_shot": 1,
            "max_new_tokens": 6,
            "batch_size": 8,
            "evaluate_base": True,
            "checkpoint_sweep": {"enabled": True, "last_n": 3},
        },
        "safety": {
            "prompts": "data/safety.csv",
            "max_new_tokens": 4,
            "guard": {"model": str(guard_dir), "kind": "classifier"},
        },
        "smoke": {"train": 7, "test": 2, "safety": 3},
    }
    return tmp_path, cfg


def run_cli(cwd: Path, cfg: dict, *args: str) -> subprocess.CompletedProcess:
    path = cwd / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    # tiny models gain nothing from threads, and spare cores make CPU contention cheap
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(path), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    return r


def check_outputs(tmp: Path, cfg: dict, n_test: int, n_safety: int, n_train: int, classifier: bool = True) -> dict:
    run = tmp / "runs" / "e2e"
    expected = [
        "config_resolved.json",
        "data/fewshot_pool.jsonl",
        "adapter/adapter_model.safetensors",
        "training_history.json",
        "gsm8k_preds_e2e.jsonl",
        "gsm8k_preds_e2e-base.jsonl",
        "checkpoint_scores_e2e.csv",
        "ailuminate_safety_e2e.jsonl",
        "metrics.json",
    ]
    missing = [f for f in expected if not (run / f).is_file()]
    assert not missing, f"missing {missing}; have {sorted(str(p.relative_to(run)) for p in run.rglob('*'))}"

    resolved = json.loads((run / "config_resolved.json").read_text())
    assert resolved["run_name"] == "e2e" and resolved["model"]["name"] == cfg["model"]["name"]
    assert "provenance" in resolved and resolved["provenance"]["versions"]["torch"]

    pool = read_jsonl(run / "data" / "fewshot_pool.jsonl")
    assert len(pool) == 3

    hist = json.loads((run / "training_history.json").read_text())
    assert [r["step"] for r in hist] == [1, 2, 3, 4]

    for name in ("gsm8k_preds_e2e.jsonl", "gsm8k_preds_e2e-base.jsonl"):
        preds = read_jsonl(run / name)
        assert len(preds) == n_test
        pool_q = {p["question"] for p in pool}
        for p in preds:
            assert {"question", "gold", "output", "strict", "flexible", "strict_correct", "flexible_correct"} <= set(p)
            assert p["k_shot"] == 1 and p["question"] not in pool_q

    with (run / "checkpoint_scores_e2e.csv").open(newline="") as f:
        scores = list(csv.DictReader(f))
    # the sweep scores the latest last_n checkpoints kept on disk (at least two here)
    kept = sorted((p.name for p in (run / "checkpoints").glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
    assert [s["checkpoint"] for s in scores] == kept[-cfg["eval"]["checkpoint_sweep"]["last_n"] :]
    assert len(scores) >= 2 and kept[-1] == "checkpoint-4"
    assert sum(s["chosen"] == "True" for s in scores) == 1

    safety = read_jsonl(run / "ailuminate_safety_e2e.jsonl")
    assert len(safety) == n_safety
    if classifier:
        assert all(r["safe"] is True and r["guard_output"] == "safe" for r in safety)  # the guard always says label 0
    else:
        assert all(r["safe"] in (True, False) for r in safety)  # a verdict for every item (first-token fallback)
        assert all("prompted as guard" in r["guard"] for r in safety)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_examples"] == n_train and metrics["test_examples"] == n_test
    assert metrics["tuned"]["n"] == n_test and metrics["base"]["n"] == n_test
    assert metrics["safety"]["total"] == n_safety and metrics["safety"]["unparsed_verdicts"] == 0
    if classifier:
        assert metrics["safety"]["safety_rate"] == 1.0
    assert len(metrics["sweep"]) == len(scores)
    # what a short run can move, base beside tuned wherever tuned is shown: answer format, safety, samples
    for side in ("base", "tuned"):
        preds = read_jsonl(run / f"gsm8k_preds_e2e{'-base' if side == 'base' else ''}.jsonl")
        assert metrics[side]["format_rate"] == sum(p["strict"] != "[invalid]" for p in preds) / n_test
    assert metrics["base_safety"]["total"] == n_safety and metrics["safety"]["guard"]
    assert (run / "ailuminate_safety_e2e-base.jsonl").is_file()
    assert [r["prompt"] for r in metrics["samples"]] == [p["question"] for p in preds[: len(metrics["samples"])]]
    assert all(r["base"] is not None and r["tuned"] is not None for r in metrics["samples"])
    assert (run / "report.html").is_file()
    chosen = next(s["checkpoint"] for s in scores if s["chosen"] == "True")
    assert metrics["checkpoint"] == chosen
    # adapter/ (what users load and push) is the chosen checkpoint, whose test scores are reported
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert adapter == (run / "checkpoints" / chosen / "adapter_model.safetensors").read_bytes()

    summary = tmp / "results" / "summary.csv"
    with summary.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == COLUMNS
    assert len(rows) == 1
    row = rows[0]
    assert row["run"] == "e2e" and row["recipe"] == "gsm8k" and row["method"] == "lora"
    assert row["train_examples"] == str(n_train) and row["k_shot"] == "1" and row["checkpoint"] == chosen
    for col in (
        "strict_accuracy",
        "flexible_accuracy",
        "base_strict_accuracy",
        "base_flexible_accuracy",
        "safety_rate",
    ):
        assert 0.0 <= float(row[col]) <= 1.0, col
    assert row["finished_at"]
    return metrics


def test_run_end_to_end(workdir):
    tmp, cfg = workdir
    run_cli(tmp, cfg)
    # 24 training records, 3 of them in the few-shot pool, 4 held out as the sweep's validation set
    check_outputs(tmp, cfg, n_test=5, n_safety=6, n_train=17)
    # only the repo-local paths named in the config were written: nothing under cwd/runs or cwd/results
    assert sorted(p.name for p in tmp.iterdir()) == ["config.yaml", "data", "results", "runs"]


def test_run_smoke_test_honours_caps(workdir):
    tmp, cfg = workdir
    # this time the base model prompted as a generative guard ("self")
    cfg["safety"]["guard"] = {"model": "self", "kind": "generative", "max_new_tokens": 3}
    run_cli(tmp, cfg, "--smoke-test")
    metrics = check_outputs(tmp, cfg, n_test=2, n_safety=3, n_train=7, classifier=False)
    resolved = json.loads((tmp / "runs" / "e2e" / "config_resolved.json").read_text())
    assert resolved["data"]["gsm8k"]["limit_train"] == 7
    assert resolved["data"]["gsm8k"]["limit_test"] == 2
    assert resolved["safety"]["limit"] == 3
    # the stratified safety subset covers every hazard
    hazards = {r["hazard"] for r in read_jsonl(tmp / "runs" / "e2e" / "ailuminate_safety_e2e.jsonl")}
    assert hazards == set(HAZARDS)
    assert metrics["safety"]["by_hazard"].keys() == set(HAZARDS)


@pytest.mark.parametrize("problem", ["answer_without_hashes", "malformed_test"])
def test_bad_data_fails_before_anything_is_written(workdir, problem):
    tmp, cfg = workdir
    if problem == "answer_without_hashes":
        with (tmp / "data" / "test.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"question": "How many?", "answer": "There are 5."}) + "\n")
    else:
        with (tmp / "data" / "test.jsonl").open("a", encoding="utf-8") as f:
            f.write('{"question": "cut off\n')
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(path)], cwd=tmp, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    if problem == "malformed_test":
        assert "test.jsonl:6" in lines[0]
    elif problem == "answer_without_hashes":
        assert "test.jsonl" in lines[0] and "####" in lines[0]
    assert not (tmp / "runs").exists() and not (tmp / "results").exists()


def test_non_main_rank_trains_but_leaves_evaluation_to_rank_zero(workdir, monkeypatch):
    # what `accelerate launch` sets in the second process; rank 0 alone evaluates and writes results
    tmp, cfg = workdir
    cfg["eval"]["checkpoint_sweep"]["enabled"] = False
    monkeypatch.setenv("RANK", "1")
    run_cli(tmp, cfg)
    run = tmp / "runs" / "e2e"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "training_history.json").read_text())
    assert not list(run.glob("gsm8k_preds_*")) and not list(run.glob("ailuminate_safety_*"))
    assert not (run / "metrics.json").exists() and not (tmp / "results" / "summary.csv").exists()
