"""The checkpoint sweep chooses on a validation split carved from the training file, and only the chosen
checkpoint ever sees a test question (a real run on a tiny random Llama; the generator is the real one,
observed, not replaced)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import parse_config
from tunesmith.data.sources import gsm8k as data
from tunesmith.errors import DataError
from tunesmith.io import read_jsonl


def records(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "question": f"Ann has {i} pens and buys {i + 3} more. How many pens does Ann have?",
            "answer": f"{i} + {i + 3} = <<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3}\n#### {2 * i + 3}",
        }
        for i in range(offset, offset + n)
    ]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def lora_b_fingerprint(named) -> float:
    return float(sum(t.detach().double().abs().sum() for n, t in named if "lora_B" in n))


def test_holdout_is_seeded_disjoint_and_removes_every_copy():
    train = records(40)
    train.append(dict(train[3]))
    test = records(5, offset=10)  # questions 10..14 also in the training file
    val, rest = data.holdout(train, 8, seed=1, exclude=test)
    assert (val, rest) == data.holdout(train, 8, seed=1, exclude=test)
    assert val != data.holdout(train, 8, seed=2, exclude=test)[0]
    vq = {r["question"] for r in val}
    assert len(val) == 8 and not vq & {r["question"] for r in rest}
    assert not vq & {r["question"] for r in test}
    assert len(rest) == len(train) - sum(r["question"] in vq for r in train)
    with pytest.raises(DataError, match="validation_size"):
        data.holdout(records(5), 5, seed=0)


def test_load_data_carves_validation_only_for_the_sweep(tmp_path):
    from tunesmith.recipes.gsm8k import load_data

    train_p, test_p = write(tmp_path / "train.jsonl", records(40)), write(tmp_path / "test.jsonl", records(6, 100))
    g = {"train": train_p, "test": test_p, "fewshot_pool_size": 4, "validation_size": 10}
    cfg = parse_config({"data": {"gsm8k": g}, "eval": {"k_shot": 2, "checkpoint_sweep": {"enabled": True}}})
    _, train, test, pool, val = load_data(cfg, tmp_path / "run")
    assert len(val) == 10 and len(train) == 40 - 4 - 10
    groups = [{r["question"] for r in x} for x in (train, test, pool, val)]
    assert all(not a & b for i, a in enumerate(groups) for b in groups[i + 1 :])
    assert read_jsonl(tmp_path / "run" / "data" / "validation.jsonl") == val
    cfg = parse_config({"data": {"gsm8k": g}, "eval": {"k_shot": 2}})
    assert load_data(cfg, None)[4] == [] and len(load_data(cfg, None)[1]) == 36


def test_choose_by_validation_strict_then_flexible_then_safety():
    from tunesmith.recipes.gsm8k import choose

    rows = [
        {"checkpoint": "a", "strict_accuracy": 0.5, "flexible_accuracy": 0.5, "safety_rate": 0.9},
        {"checkpoint": "b", "strict_accuracy": 0.5, "flexible_accuracy": 0.6, "safety_rate": 0.1},
        {"checkpoint": "c", "strict_accuracy": 0.5, "flexible_accuracy": 0.6, "safety_rate": 0.8},
        {"checkpoint": "d", "strict_accuracy": 0.4, "flexible_accuracy": 0.9, "safety_rate": 1.0},
    ]
    assert choose(rows)["checkpoint"] == "c"
    assert choose(rows[:1] + [dict(rows[0], checkpoint="e")])["checkpoint"] == "a"  # a tie keeps the earlier one


def test_no_test_question_is_scored_before_the_checkpoint_is_chosen(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.generation.hf import HFGenerator
    from tunesmith.recipes import gsm8k

    train, test = records(24), records(5, 100)
    cfg = parse_config(
        {
            "recipe": "gsm8k",
            "run_name": "sw",
            "output_dir": str(tmp_path / "runs"),
            "summary_csv": str(tmp_path / "summary.csv"),
            "model": {"name": str(tiny_model_dir), "dtype": "fp32"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {
                "max_length": 96,
                "gsm8k": {
                    "train": write(tmp_path / "train.jsonl", train),
                    "test": write(tmp_path / "test.jsonl", test),
                    "fewshot_pool_size": 3,
                    "validation_size": 4,
                },
            },
            "training": {"learning_rate": 5e-3, "batch_size": 4, "max_steps": 4, "save_steps": 1, "seed": 0},
            "eval": {
                "k_shot": 1,
                "max_new_tokens": 4,
                "batch_size": 8,
                "evaluate_base": True,
                "checkpoint_sweep": {"enabled": True, "last_n": 3},
            },
            "safety": {"enabled": False},
        }
    )
    events: list[tuple] = []
    real_chat, real_choose = HFGenerator.chat, gsm8k.choose

    def observed_chat(self, conversations, *a, **kw):
        events.append(
            ("chat", [c[-1]["content"] for c in conversations], lora_b_fingerprint(self.model.named_parameters()))
        )
        return real_chat(self, conversations, *a, **kw)

    def observed_choose(scores):
        best = real_choose(scores)
        events.append(("choose", best["checkpoint"]))
        return best

    monkeypatch.setattr(HFGenerator, "chat", observed_chat)
    monkeypatch.setattr(gsm8k, "choose", observed_choose)
    metrics = gsm8k.run(cfg)

    run = tmp_path / "runs" / "sw"
    val_q = {r["question"] for r in read_jsonl(run / "data" / "validation.jsonl")}
    test_q = {r["question"] for r in test}
    assert len(val_q) == 4 and not val_q & test_q
    kinds = []
    for e in events:
        if e[0] == "choose":
            kinds.append("choose")
            continue
        asked = set(e[1])
        assert asked <= val_q or asked <= test_q, "a call mixed validation and test questions"
        kinds.append("val" if asked <= val_q else "test")
    # every validation call, then the choice, then the test calls (tuned, then base)
    assert kinds.count("choose") == 1
    c = kinds.index("choose")
    assert set(kinds[:c]) == {"val"} and set(kinds[c + 1 :]) == {"test"}

    with (run / "checkpoint_scores_sw.csv").open(newline="") as f:
        scores = list(csv.DictReader(f))
    assert [s["split"] for s in scores] == ["validation"] * 3 and {s["n"] for s in scores} == {"4"}
    chosen = next(s["checkpoint"] for s in scores if s["chosen"] == "True")
    assert events[c][1] == chosen == metrics["checkpoint"]
    # each scored checkpoint answered the validation set with its own weights; the test set saw the chosen one only
    prints = {
        s["checkpoint"]: lora_b_fingerprint(
            load_file(run / "checkpoints" / s["checkpoint"] / "adapter_model.safetensors").items()
        )
        for s in scores
    }
    assert len(set(prints.values())) == 3
    val_prints = [e[2] for e, k in zip(events, kinds) if k == "val"]
    assert sorted(val_prints) == pytest.approx(sorted(prints.values()))
    test_prints = [e[2] for e, k in zip(events, kinds) if k == "test"]
    assert len(test_prints) == 2 and test_prints == pytest.approx([prints[chosen]] * 2)
    assert not any(n.startswith("gsm8k_preds_sw-checkpoint") for n in (p.name for p in run.iterdir()))
    assert len(read_jsonl(run / "gsm8k_preds_sw.jsonl")) == 5 and metrics["tuned"]["n"] == 5
    assert torch.isfinite(torch.tensor(metrics["tuned"]["lenient_accuracy"]))
