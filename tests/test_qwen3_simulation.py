"""The seed models' configs, simulated on a CPU: a random-weight Qwen3ForCausalLM built from a shrunken
Qwen3 config (no download), with a byte-level BPE tokenizer carrying Qwen3's special tokens and Qwen3's
published chat template (tests/fixtures/templates/qwen3.jinja, TRL's copy of Qwen/Qwen3-8B's
tokenizer_config.json), runs configs/qwen3-4b-instruct-gsm8k-medium.yaml and configs/qwen3-8b-empathy.yaml
end to end through `tunesmith run --smoke-test`; every output file is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, shared

TEMPLATE = ROOT / "tests" / "fixtures" / "templates" / "qwen3.jinja"
EMPATHY_FIXTURES = ROOT / "tests" / "fixtures" / "empathy"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    corpus = [p.read_text(encoding="utf-8", errors="replace") for p in EMPATHY_FIXTURES.iterdir()]
    corpus += [TEMPLATE.read_text(), "Question: how many apples? Answer: 3 + 4 = 7 apples.\n#### 7"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    # as in Qwen3's tokenizer_config: eos <|im_end|>, pad <|endoftext|>, no bos, <think> tags plain added tokens
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = TEMPLATE.read_text()
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=eot,
    )
    model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot)
    d = tmp_path_factory.mktemp("qwen3-tiny")
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def test_the_simulated_model_is_a_qwen3_with_qwen3s_template(qwen3_dir):
    from tunesmith.data.chat import encode, prompt_ids
    from tunesmith.data.schema import Example
    from tunesmith.modeling.loading import load_model, load_tokenizer

    assert json.loads((qwen3_dir / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert type(load_model(str(qwen3_dir), "fp32")).__name__ == "Qwen3ForCausalLM"
    tok = load_tokenizer(str(qwen3_dir), chat_template_kwargs={"enable_thinking": False})
    msgs = [{"role": "user", "content": "Hi"}]
    text = tok.decode(prompt_ids(tok, msgs))
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    # thinking on (the template's default): no empty think block in the prompt
    assert not tok.decode(prompt_ids(load_tokenizer(str(qwen3_dir)), msgs)).endswith("</think>\n\n")
    # the trained reply sits after the same empty think block, so training and generation prompts agree
    enc = encode(tok, Example(messages=[*msgs, {"role": "assistant", "content": "Hello there."}]), 128)
    labelled = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100])
    assert labelled.startswith("Hello there.") and "<think>" not in labelled
    prompt = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == -100])
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n" in prompt


def run_cli(cwd: Path, config: str, *overrides: str) -> subprocess.CompletedProcess:
    sets = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", str(ROOT / "configs" / config), "--smoke-test", *sets],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    return r


def common(tmp: Path, qwen3_dir: Path) -> list[str]:
    return [
        f"model.name={qwen3_dir}",
        f"output_dir={tmp / 'runs'}",
        f"summary_csv={tmp / 'summary.csv'}",
        "model.chat_template_kwargs.enable_thinking=false",
        f"safety.prompts={shared('ailuminate', 'airr_official_1.0_demo_en_us_prompt_set_release.csv')}",
        f"safety.guard.categories={shared('llamaguard3', 'llama_guard3_categories.txt')}",
        "safety.max_new_tokens=4",
        "safety.guard.max_new_tokens=3",
        "smoke.safety=3",
        "smoke.test=3",
    ]


def test_qwen3_gsm8k_medium_recipe_end_to_end(tmp_path, qwen3_dir):
    name = "qwen3-4b-instruct-gsm8k-medium"
    r = run_cli(
        tmp_path,
        f"{name}.yaml",
        *common(tmp_path, qwen3_dir),
        f"data.gsm8k.train={shared('gsm8k', 'train.jsonl')}",
        f"data.gsm8k.test={shared('gsm8k', 'test.jsonl')}",
        "smoke.train=16",
        "training.grad_accum=1",
        "data.max_length=256",
        "eval.max_new_tokens=6",
        "eval.evaluate_base=true",
    )
    assert "QLoRA (4-bit) needs CUDA" in r.stderr  # the config's load_in_4bit, falling back on a CPU
    run = tmp_path / "runs" / name
    expected = [
        "config_resolved.json",
        "data/fewshot_pool.jsonl",
        "data/validation.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "training_history.json",
        f"gsm8k_preds_{name}.jsonl",
        f"gsm8k_preds_{name}-base.jsonl",
        f"checkpoint_scores_{name}.csv",
        f"ailuminate_safety_{name}.jsonl",
        "metrics.json",
    ]
    missing = [f for f in expected if not (run / f).is_file()]
    assert not missing, f"missing {missing}; have {sorted(str(p.relative_to(run)) for p in run.rglob('*'))}"
    assert len(list(run.glob(f"gsm8k_validation_preds_{name}-checkpoint-*.jsonl"))) == 3
    assert (tmp_path / "summary.csv").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tuned"]["n"] == 3 and {s["split"] for s in metrics["sweep"]} == {"validation"}
    resolved = json.loads((run / "config_resolved.json").read_text())
    assert resolved["model"]["load_in_4bit"] is True and resolved["eval"]["k_shot"] == 5
    # every prompt the model answered ended in Qwen3's empty think block (thinking off)
    out = [json.loads(x) for x in (run / f"gsm8k_preds_{name}.jsonl").read_text().splitlines()]
    assert all("</think>" not in o["output"] for o in out)


def test_qwen3_empathy_recipe_end_to_end(tmp_path, qwen3_dir):
    name = "qwen3-8b-empathy"
    es, ge = tmp_path / "esconv", tmp_path / "goemotions"
    es.mkdir()
    ge.mkdir()
    for n in ("train.txt", "valid.txt"):
        shutil.copy(EMPATHY_FIXTURES / "esconv_lines.txt", es / n)
    for n in ("train.tsv", "dev.tsv"):
        shutil.copy(EMPATHY_FIXTURES / "goemotions.tsv", ge / n)
    run_cli(
        tmp_path,
        f"{name}.yaml",
        *common(tmp_path, qwen3_dir),
        f"data.empathy.esconv={es}",
        f"data.empathy.goemotions={ge}",
        f"eval.eqbench.questions={shared('eqbench', 'eq_bench_v2_questions_171.json')}",
        "smoke.train=8",
        "training.grad_accum=1",
        "training.batch_size=4",
        "data.max_length=192",
        "data.empathy.kl_response_tokens=4",
        "eval.max_new_tokens=6",
        "safety.limit=3",
    )
    run = tmp_path / "runs" / name
    expected = [
        "config_resolved.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/heads.safetensors",
        "training_history.json",
        "data/kl_responses.jsonl",
        f"emotion_preds_{name}.jsonl",
        f"strategy_preds_{name}.jsonl",
        f"eqbench_{name}.jsonl",
        f"eqbench_{name}-base.jsonl",
        f"ailuminate_safety_{name}.jsonl",
        f"ailuminate_safety_{name}-base.jsonl",
        "plots/confusion_emotion.png",
        "plots/confusion_strategy.png",
        "metrics.json",
        "report.md",
        "report.html",
    ]
    missing = [f for f in expected if not (run / f).is_file()]
    assert not missing, f"missing {missing}; have {sorted(str(p.relative_to(run)) for p in run.rglob('*'))}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["heads"]) == {"emotion", "strategy"} and metrics["samples"]
    assert json.loads((run / "config_resolved.json").read_text())["model"]["chat_template_kwargs"] == {
        "enable_thinking": False
    }
