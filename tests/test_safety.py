"""Safety evaluation: verdict parsing, prompt loading (CSV with multi-line fields, JSONL), stratified
limits, classifier and generative guards on tiny local models, per-hazard summaries.

The AILuminate prompts are hazardous text: tests on the real file assert counts and ids only and
never print a prompt."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import shared

from tunesmith.errors import DataError
from tunesmith.evaluation.ailuminate import (
    ClassifierGuard,
    GenerativeGuard,
    SafetyPrompt,
    evaluate_safety,
    guard_prompt,
    load_categories,
    load_guidelines,
    load_prompts,
    parse_verdict,
    summarize,
)
from tunesmith.generation.hf import HFGenerator
from tunesmith.io import read_jsonl

# ---- verdict parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("safe", (True, [])),
        ("Safe", (True, [])),
        ("  SAFE.", (True, [])),
        ("safe\n", (True, [])),
        ("unsafe", (False, [])),
        ("unsafe\nS1,S10", (False, ["S1", "S10"])),
        ("Unsafe\nS3, S14", (False, ["S3", "S14"])),
        ("unsafe S2", (False, ["S2"])),
        ("unsafe\nS1,S100", (False, ["S1"])),  # S100 is no category code
        ("safety first", (None, [])),  # 'safe' must be a whole word
        ("unsafely", (None, [])),
        ("I think it is safe", (None, [])),  # the verdict must come first
        ("", (None, [])),
        ("S1", (None, [])),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


# ---- prompt loading ------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict], fields=("release_prompt_id", "prompt_text", "hazard", "persona")) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    return path


def benign_rows(n_per_hazard: int = 4, hazards=("vcr", "hte", "ssh", "prv")) -> list[dict]:
    rows = []
    for h in hazards:
        for i in range(n_per_hazard):
            rows.append(
                {
                    "release_prompt_id": f"{h}-{i}",
                    "prompt_text": f"Test prompt {i} about topic {h}.",
                    "hazard": h,
                    "persona": "normal",
                }
            )
    return rows


def test_load_csv_with_multiline_field(tmp_path):
    rows = [
        {
            "release_prompt_id": "p1",
            "prompt_text": 'First line\nsecond line, with a comma\n"quoted" third',
            "hazard": "hte",
        },
        {"release_prompt_id": "p2", "prompt_text": "Plain", "hazard": "vcr"},
        {"release_prompt_id": "", "prompt_text": "No id", "hazard": ""},
    ]
    p = write_csv(tmp_path / "prompts.csv", rows)
    got = load_prompts(str(p))
    assert [g.id for g in got[:2]] == ["p1", "p2"]
    assert got[0].prompt == rows[0]["prompt_text"]
    assert got[0].hazard == "hte" and got[1].hazard == "vcr"
    # the multi-line record spans several physical lines; the next records are still read right
    assert got[1].prompt == "Plain"
    assert got[2].hazard == "unknown" and got[2].id.startswith("prompts:")


def test_csv_missing_column_and_empty_prompt(tmp_path):
    p = write_csv(tmp_path / "bad.csv", [{"release_prompt_id": "a"}], fields=("release_prompt_id", "text"))
    with pytest.raises(DataError, match="prompt_text"):
        load_prompts(str(p))
    p = write_csv(
        tmp_path / "empty.csv",
        [{"release_prompt_id": "a", "prompt_text": "ok"}, {"release_prompt_id": "b", "prompt_text": "  "}],
    )
    with pytest.raises(DataError) as e:
        load_prompts(str(p))
    assert f"{p}:3" in str(e.value)


def test_load_jsonl_prompt_and_input_keys(tmp_path):
    p = tmp_path / "prompts.jsonl"
    lines = [
        {"id": "a", "prompt": "hello there", "hazard": "hte"},
        {"input": "second one", "category": "S1"},
        {"prompt_text": "third"},
    ]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    got = load_prompts(str(p))
    assert [(g.id, g.prompt, g.hazard) for g in got] == [
        ("a", "hello there", "hte"),
        ("2", "second one", "S1"),
        ("3", "third", "unknown"),
    ]


def test_jsonl_without_prompt_field_is_an_error(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "where"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_prompts(str(p))
    assert f"{p}:2" in str(e.value)


def test_missing_or_empty_prompt_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(str(tmp_path / "nope.csv"))
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(str(tmp_path / "empty.jsonl"))


@pytest.mark.parametrize("limit", [4, 5, 9])
def test_stratified_limit_covers_every_hazard(tmp_path, limit):
    p = write_csv(tmp_path / "p.csv", benign_rows(5))
    got = load_prompts(str(p), limit=limit, seed=1)
    assert len(got) == limit
    counts = Counter(g.hazard for g in got)
    assert set(counts) == {"vcr", "hte", "ssh", "prv"}
    assert max(counts.values()) - min(counts.values()) <= 1  # round-robin over hazards
    assert len({g.id for g in got}) == limit
    assert [g.id for g in load_prompts(str(p), limit=limit, seed=1)] == [g.id for g in got]


def test_limit_at_or_above_size_keeps_everything(tmp_path):
    p = write_csv(tmp_path / "p.csv", benign_rows(2))
    assert len(load_prompts(str(p), limit=8)) == 8
    assert len(load_prompts(str(p), limit=100)) == 8


@pytest.mark.shared_data
def test_real_ailuminate_file_counts_only():
    # assert counts and ids only: these prompts are hazardous and must never be printed
    path = shared("ailuminate", "airr_official_1.0_demo_en_us_prompt_set_release.csv")
    allp = load_prompts(str(path))
    assert len(allp) > 1000
    assert len({p.id for p in allp}) == len(allp)
    hazards = {p.hazard for p in allp}
    assert len(hazards) >= 12
    picked = load_prompts(str(path), limit=len(hazards))
    assert {p.hazard for p in picked} == hazards


def test_shipped_categories_and_guidelines():
    cats = load_categories()
    assert len(cats) == 14 and cats[0].startswith("S1")
    assert load_guidelines()
    text = guard_prompt("U", "A", cats, "GUIDE")
    assert text.startswith("GUIDE") and "User: U" in text and "Agent: A" in text and cats[-1] in text


def test_summarize_counts_unparsed_as_not_safe():
    recs = [{"hazard": "a", "safe": True}, {"hazard": "a", "safe": None}, {"hazard": "b", "safe": False}]
    s = summarize(recs)
    assert s["total"] == 3 and s["safe"] == 1 and s["unparsed_verdicts"] == 1
    assert s["safety_rate"] == pytest.approx(1 / 3)
    assert s["by_hazard"] == {
        "a": {"total": 2, "safe": 1, "safety_rate": 0.5},
        "b": {"total": 1, "safe": 0, "safety_rate": 0.0},
    }


# ---- guards on tiny local models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tiny_model_dir, tokenizer):
    from tunesmith.modeling.loading import load_model

    return HFGenerator(load_model(str(tiny_model_dir), dtype="fp32"), tokenizer, batch_size=4, max_new_tokens=6)


def classifier(tokenizer, id2label: dict[int, str]):
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
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.zero_()  # all logits 0: argmax is label 0
    return model


def prompts_fixture() -> list[SafetyPrompt]:
    return [
        SafetyPrompt(f"id{i}", f"Tell me something nice about day {i}.", h)
        for i, h in enumerate(["vcr", "hte", "ssh", "vcr", "hte"])
    ]


@pytest.mark.parametrize("label0, expected_rate", [("unsafe", 0.0), ("safe", 1.0)])
def test_classifier_guard_through_evaluate_safety(tmp_path, generator, tokenizer, label0, expected_rate):
    other = "safe" if label0 == "unsafe" else "unsafe"
    guard = ClassifierGuard(classifier(tokenizer, {0: label0, 1: other}), tokenizer, "GUIDE", "tiny-cls", batch_size=2)
    prompts = prompts_fixture()
    out = tmp_path / "ailuminate_safety_x.jsonl"
    summary, records = evaluate_safety(generator, guard, prompts, max_new_tokens=4, out_path=out)
    assert summary["total"] == 5 and summary["unparsed_verdicts"] == 0
    assert summary["safety_rate"] == expected_rate
    assert set(summary["by_hazard"]) == {"vcr", "hte", "ssh"}
    assert summary["by_hazard"]["vcr"]["total"] == 2
    assert all(h["safety_rate"] == expected_rate for h in summary["by_hazard"].values())
    saved = read_jsonl(out)
    assert [r["id"] for r in saved] == [p.id for p in prompts]
    assert all(r["safe"] is (expected_rate == 1.0) for r in saved)
    assert all(r["guard_output"] == label0 and r["guard"] == "tiny-cls" for r in saved)
    assert saved[0]["llama_guard_code"] == "S1" and saved[1]["llama_guard_code"] == "S10"
    assert all(isinstance(r["response"], str) for r in saved)
    assert records == saved


def test_classifier_guard_needs_an_unsafe_label(tokenizer):
    with pytest.raises(DataError, match="unsafe"):
        ClassifierGuard(classifier(tokenizer, {0: "LABEL_0", 1: "LABEL_1"}), tokenizer, "", "x")


def test_evaluate_safety_resume_reuses_finished_records(tmp_path, generator, tokenizer):
    guard = ClassifierGuard(classifier(tokenizer, {0: "safe", 1: "unsafe"}), tokenizer, "G", "g")
    prompts = prompts_fixture()
    out = tmp_path / "s.jsonl"
    evaluate_safety(generator, guard, prompts[:2], 4, out)
    # pretend the earlier verdicts were unsafe: a resumed run keeps them, a fresh run recomputes
    old = [{**r, "safe": False} for r in read_jsonl(out)]
    out.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    summary, records = evaluate_safety(generator, guard, prompts, 4, out, resume=True)
    assert [r["safe"] for r in records] == [False, False, True, True, True]
    assert summary["safety_rate"] == pytest.approx(3 / 5)
    assert read_jsonl(out) == records
    summary, records = evaluate_safety(generator, guard, prompts, 4, out)
    assert summary["safety_rate"] == 1.0


def test_generative_guard_falls_back_to_first_token(generator, tokenizer):
    guard = GenerativeGuard(generator, load_categories(), "GUIDE", "tiny-gen")
    assert not guard.native
    pairs = [("Question one?", "Answer one."), ("Question two, longer than the first?", "Answer two."), ("Q3", "A3")]
    out = guard.judge(pairs)
    assert len(out) == 3
    for verdict, cats, text in out:
        # a random model answers no verdict; the first-token choice between safe/unsafe gives one
        assert verdict in (True, False)
        assert cats == []
        assert text.startswith("[verdict from first-token logits]")
    # the fallback is the real comparison of the two first tokens' logits
    from tunesmith.data.chat import prompt_ids

    safe_id, unsafe_id = guard._verdict_tokens()
    prompts = [
        prompt_ids(tokenizer, [{"role": "user", "content": guard_prompt(u, a, guard.categories, "GUIDE")}])
        for u, a in pairs
    ]
    logits = generator.next_token_logits(prompts)
    assert [v for v, _, _ in out] == [bool(logits[i, safe_id] >= logits[i, unsafe_id]) for i in range(3)]


def says_safe_model(tokenizer):
    """A real Llama whose weights make it answer 'safe' and then end its turn, for any prompt.

    Attention and MLP outputs are zeroed, so the last hidden state is the (normalised) embedding of
    the current token: every token embeds to e0 except 'safe' (e1); the LM head maps e0 → 'safe'
    and e1 → end of turn.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    safe_id = tokenizer.encode("safe", add_special_tokens=False)[0]
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        emb[safe_id, 0] = 0.0
        emb[safe_id, 1] = 1.0
        head = model.lm_head.weight
        head.zero_()
        head[safe_id, 0] = 1.0
        head[tokenizer.eos_token_id, 1] = 1.0
    return model.eval()


def test_generative_guard_parses_an_answer_in_format(tokenizer):
    gen = HFGenerator(says_safe_model(tokenizer), tokenizer, batch_size=2, max_new_tokens=8)
    guard = GenerativeGuard(gen, load_categories(), "GUIDE", "says-safe")
    out = guard.judge([("Hi?", "Hello."), ("How are you?", "Fine, thanks.")])
    assert out == [(True, [], "safe"), (True, [], "safe")]  # parsed, not the first-token fallback


def test_evaluate_safety_with_generative_guard_writes_every_verdict(tmp_path, generator, tokenizer):
    guard = GenerativeGuard(generator, load_categories(), "GUIDE", "tiny-gen")
    summary, records = evaluate_safety(generator, guard, prompts_fixture(), 4, tmp_path / "s.jsonl")
    assert summary["total"] == 5 and summary["unparsed_verdicts"] == 0
    assert all(r["safe"] in (True, False) for r in read_jsonl(tmp_path / "s.jsonl"))
    assert 0.0 <= summary["safety_rate"] <= 1.0


def test_builtin_categories_match_the_shared_file():
    path = shared("llamaguard3", "llama_guard3_categories.txt")
    assert load_categories(str(path)) == load_categories()
