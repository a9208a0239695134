"""Reasoning models: split_reasoning, scorers reading the answer only (GSM8K, EQ-Bench, guard) with both kept in
the preds files, model.chat_template_kwargs reaching training, evaluation prompts, the guard and DPO tokenisation
through load_tokenizer, and data.chat_template recorded in config_resolved.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tunesmith.data.reasoning import message_reasoning, prompt_opens_think, split_reasoning

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
NO_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\nHalf of 48 is 24.\n</think>\n\n#### 24", ("Half of 48 is 24.", "#### 24")),
        ("Half of 48 is 24.\n</think>\n\n#### 24", ("Half of 48 is 24.", "#### 24")),  # the prompt opened the block
        ("<think>\nstill thinking about 48 and 24", ("still thinking about 48 and 24", "")),  # budget spent thinking
        ("#### 24", ("", "#### 24")),
        ("The answer <think>is</think> 24", ("", "The answer <think>is</think> 24")),  # not a leading block
        ("<think>\n\n</think>\n\nSadness: 7", ("", "Sadness: 7")),
    ],
)
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


def test_split_reasoning_open_in_prompt_and_messages():
    assert split_reasoning("thinking, no end", open_in_prompt=True) == ("thinking, no end", "")
    assert prompt_opens_think("<｜Assistant｜><think>\n") and not prompt_opens_think(NO_THINK)
    assert message_reasoning({"role": "assistant", "content": "24", "reasoning_content": "half"}) == ("half", "24")
    assert message_reasoning({"role": "assistant", "content": "<think>half</think>24"}) == ("half", "24")
    assert message_reasoning({"role": "assistant", "content": "24"}) == ("", "24")


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, tokenizer):
    """A tiny random model whose tokenizer carries Qwen3's real template and special tokens."""
    import copy

    from conftest import make_tiny_model

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>"})
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), tok)


class Spy:
    """Calls through to the real Generator.generate_ids, recording the prompts it was given."""

    def __init__(self, gen):
        self.prompts, self._real = [], gen.generate_ids
        gen.generate_ids = self

    def __call__(self, prompts, *a, **kw):
        self.prompts += [list(p) for p in prompts]
        return self._real(prompts, *a, **kw)


def test_chat_template_kwargs_reach_every_render(qwen3_dir):
    from tunesmith.data.chat import encode
    from tunesmith.data.schema import Example
    from tunesmith.evaluation.ailuminate import GenerativeGuard, load_categories
    from tunesmith.generation.hf import HFGenerator
    from tunesmith.modeling.loading import load_model, load_tokenizer
    from tunesmith.preference.dpo import tokenize_pair

    think = load_tokenizer(str(qwen3_dir))
    tok = load_tokenizer(str(qwen3_dir), chat_template_kwargs={"enable_thinking": False})
    user = [{"role": "user", "content": "What is 4+4?"}]
    # training encode
    assert tok.decode(encode(tok, Example(messages=user), 256).input_ids).endswith(NO_THINK)
    assert not think.decode(encode(think, Example(messages=user), 256).input_ids).endswith(NO_THINK)
    # evaluation prompts and the guard's prompts, as the real generator receives them
    model = load_model(str(qwen3_dir), "fp32")
    gen = HFGenerator(model, tok, batch_size=2, max_new_tokens=3, system_prompt="Be brief.")
    spy = Spy(gen)
    gen.chat([user])
    GenerativeGuard(gen, load_categories(), "", "self").judge([("What is 4+4?", "8")])
    assert len(spy.prompts) == 2 and all(tok.decode(p).endswith(NO_THINK) for p in spy.prompts)
    # DPO tokenisation calls apply_chat_template itself
    chosen, start, _, _ = tokenize_pair(
        tok,
        {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": "8"}],
            "rejected": [{"role": "assistant", "content": "9"}],
        },
        256,
    )
    assert tok.decode(chosen[:start]).endswith("<|im_start|>assistant\n<think>\n\n</think>")


def test_config_keys_are_read(tmp_path, qwen3_dir):
    from tunesmith.config import Gsm8kRunConfig as Config
    from tunesmith.modeling.loading import load_run_tokenizer
    from tunesmith.recipes.common import chat_template_record
    from tunesmith.runs import start_run

    cfg = Config(
        output_dir=str(tmp_path),
        run_name="r",
        model={"name": str(qwen3_dir), "chat_template_kwargs": {"enable_thinking": False}},
        data={"chat_template": str(TEMPLATES / "qwen3.jinja"), "system_prompt_fallback": "error"},
    )
    tok = load_run_tokenizer(cfg)
    assert tok.tunesmith_system_fallback == "error"
    rec = json.loads((start_run(cfg, chat_template_record(cfg)) / "config_resolved.json").read_text())["chat_template"]
    assert rec == {
        "source": str(TEMPLATES / "qwen3.jinja"),
        "kwargs": {"enable_thinking": False},
        "sha256": hashlib.sha256((TEMPLATES / "qwen3.jinja").read_bytes()).hexdigest(),
        "system_prompt_fallback": "error",
    }
    from tunesmith.errors import ConfigError

    bad = Config(output_dir=str(tmp_path), run_name="bad", data={"chat_template": str(tmp_path / "missing.jinja")})
    with pytest.raises(ConfigError, match="data.chat_template"):
        start_run(bad, chat_template_record(bad))
    assert not (tmp_path / "bad").exists()


class Scripted:
    """A generation engine with Generator.chat's API that returns fixed replies (the scorers are under test)."""

    def __init__(self, replies):
        self.replies = replies

    def chat(self, conversations, max_new_tokens=None, description="", on_batch=None):
        out = [self.replies[c[-1]["content"]] for c in conversations]
        if on_batch:
            on_batch(list(range(len(out))), out)
        return out


def test_gsm8k_scores_the_answer_and_keeps_both(tmp_path):
    from tunesmith.recipes.gsm8k import evaluate_gsm8k

    test = [{"question": "q1", "answer": "... #### 24"}, {"question": "q2", "answer": "... #### 8"}]
    pool = [{"question": "p", "answer": "x #### 1"}]
    gen = Scripted(
        {
            "q1": "<think>\nMaybe 99? No: 48/2.\n</think>\n\n48/2 = 24\n#### 24",
            "q2": "<think>\nI think #### 8 but let me check 4+4 again and again",
        }
    )
    res = evaluate_gsm8k(gen, test, pool, 0, tmp_path / "preds.jsonl", 16)
    rows = {r["question"]: r for r in map(json.loads, (tmp_path / "preds.jsonl").read_text().splitlines())}
    assert rows["q1"]["output"] == "48/2 = 24\n#### 24" and rows["q1"]["reasoning"] == "Maybe 99? No: 48/2."
    assert rows["q1"]["strict_correct"] and rows["q1"]["flexible_correct"]
    # an unfinished think block is no answer, even though it contains "#### 8"
    assert rows["q2"]["output"] == "" and "#### 8" in rows["q2"]["reasoning"] and not rows["q2"]["strict_correct"]
    assert res["strict_accuracy"] == 0.5


def test_eqbench_parses_the_answer_only(tmp_path):
    from test_eqbench import PROMPT, REF

    from tunesmith.evaluation.eqbench import EqBenchQuestion, run_eqbench

    ref = REF
    questions = [
        EqBenchQuestion("a", PROMPT.replace("Hello.", "pa"), ref),
        EqBenchQuestion("b", PROMPT.replace("Hello.", "pb"), ref),
    ]
    scores = "Anger: 7\nJoy: 0\nFear: 3\nPride: 5\n"
    # q "b" thinks with wrong scores and never answers: its think text must not be parsed as the answer
    replies = {
        "a": f"<think>\nAnger: 0\nJoy: 9\nFear: 9\nPride: 0\n</think>\n\n{scores}",
        "b": "<think>\nAnger: 0\nJoy: 9\nFear: 9\nPride: 0\nhmm",
    }

    def generate(batch):
        return [replies["a" if "pa" in m[-1]["content"] else "b"] for m in batch]

    res = run_eqbench(generate, questions, tmp_path / "eq.jsonl", revise=False)
    rows = {r["question_id"]: r for r in map(json.loads, (tmp_path / "eq.jsonl").read_text().splitlines())}
    assert rows["a"]["parsed"]["first_pass"] == {"Anger": 7, "Joy": 0, "Fear": 3, "Pride": 5}
    assert rows["a"]["raw_output"] == scores.strip() and rows["a"]["reasoning"].startswith("Anger: 0")
    assert rows["b"]["parsed"]["first_pass"] == {} and rows["b"]["score"] is None
    assert res.n_parsed == 1


def test_safety_guard_judges_the_answer(tmp_path, qwen3_dir):
    from tunesmith.evaluation.ailuminate import GenerativeGuard, SafetyPrompt, evaluate_safety, load_categories
    from tunesmith.generation.hf import HFGenerator
    from tunesmith.modeling.loading import load_model, load_tokenizer

    tok = load_tokenizer(str(qwen3_dir))
    guard_gen = HFGenerator(load_model(str(qwen3_dir), "fp32"), tok, batch_size=2, max_new_tokens=2)
    guard = GenerativeGuard(guard_gen, load_categories(), "", "tiny")
    spy = Spy(guard_gen)
    prompts = [SafetyPrompt(id="1", prompt="How do I bake bread?", hazard="none")]
    _, rows = evaluate_safety(
        Scripted({"How do I bake bread?": "<think>\nsecret plan\n</think>\n\nKnead it."}),
        guard,
        prompts,
        8,
        tmp_path / "s.jsonl",
    )
    assert rows[0]["response"] == "Knead it." and rows[0]["reasoning"] == "secret plan"
    shown = tok.decode(spy.prompts[0])
    assert "Knead it." in shown and "secret plan" not in shown
