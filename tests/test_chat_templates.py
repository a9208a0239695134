"""Assistant-only labels on the real chat templates of seven families (tests/fixtures/templates, see its README):
for every trained turn the labelled tokens decode to exactly the reply plus the template's end-of-turn text, with
the family's special tokens registered as real special tokens (one token each) in the test tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tunesmith.data.chat import IGNORE, configure_chat, encode, prompt_ids, prompt_text, render, turn_end
from tunesmith.data.schema import Example
from tunesmith.errors import DataError

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

SYSTEM = "You are a patient maths tutor who answers in one line."
U1, A1 = "How many clips did Natalia sell in May?", "She sold 48/2 = 24 clips in May.\n#### 24"
U2, A2 = "And what is 4+4?", "Eight, because 4+4=8.\n#### 8"
U3, A3 = "Thanks! Is 9 prime?", "No: 9 = 3 x 3."

# family -> (template file or None for the embedded SmolLM2 ChatML, special tokens, bos, eos,
#            end-of-turn text after each reply, text the template puts before the reply inside its first token)
FAMILIES = {
    "chatml-smollm2": (None, [], None, None, "<|im_end|>\n", ""),
    "qwen3": ("qwen3.jinja", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], None, "<|im_end|>", "<|im_end|>\n", ""),
    "qwen3-instruct-2507": (
        "qwen3_instruct_2507.jinja",
        ["<|im_start|>", "<|im_end|>"],
        None,
        "<|im_end|>",
        "<|im_end|>\n",
        "",
    ),
    "llama3.2": (
        "llama3_2.jinja",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|eot_id|>",
        "",
    ),
    "gemma2": ("gemma2.jinja", ["<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<end_of_turn>\n", ""),
    "gemma3": ("gemma3.jinja", ["<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<end_of_turn>\n", ""),
    "mistral-v0.3": ("mistral_v0_3.jinja", ["[INST]", "[/INST]"], "<s>", "</s>", "</s>", " "),
    "phi3": (
        "phi3.jinja",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        None,
        "<|endoftext|>",
        "<|end|>\n",
        "",
    ),
}
HEADERS = [
    "<|im_start|>",
    "<|start_header_id|>",
    "<start_of_turn>",
    "[INST]",
    "<|assistant|>",
    "<|user|>",
    "<|system|>",
    "assistant",
    "Cutting Knowledge",
    "<think>",
]


def family_tokenizer(base, family: str, **chat):
    file, specials, bos, eos, _, _ = FAMILIES[family]
    tok = copy.deepcopy(base)
    new = {"additional_special_tokens": specials} if specials else {}
    if bos:
        new["bos_token"] = bos
    if eos:
        new["eos_token"] = eos
    if new:
        tok.add_special_tokens(new)
    if family == "qwen3":  # Qwen3 registers its think tags as added (not special) tokens: decode keeps them
        tok.add_tokens(["<think>", "</think>"])
    return configure_chat(tok, TEMPLATES / file if file else None, **chat)


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, tokenizer):
    return request.param, family_tokenizer(tokenizer, request.param)


def conversation(turns: int = 3) -> list[dict]:
    msgs = []
    for u, a in [(U1, A1), (U2, A2), (U3, A3)][:turns]:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs


def runs(enc) -> list[list[int]]:
    out, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == t
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def test_special_tokens_are_single_tokens(fam):
    family, tok = fam
    end = FAMILIES[family][4].strip()
    assert len(tok.encode(end, add_special_tokens=False)) == 1
    assert turn_end(tok) == FAMILIES[family][4]


@pytest.mark.parametrize("train_on", ["all", "last"])
@pytest.mark.parametrize("system", [SYSTEM, None])
def test_labels_are_exactly_reply_plus_end_of_turn(fam, train_on, system):
    family, tok = fam
    _, _, _, _, end, lead = FAMILIES[family]
    enc = encode(tok, Example(messages=conversation()), max_length=2048, system_prompt=system, train_on=train_on)
    texts = [decode(tok, r) for r in runs(enc)]
    replies = [A1, A2, A3] if train_on == "all" else [A3]
    assert texts == [lead + a + end for a in replies]
    labelled = decode(tok, [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    for text in (SYSTEM, U1, U2, U3, "patient maths", "Natalia sell", "Is 9 prime", *HEADERS):
        assert text not in labelled
    # the tokens are those of the template's own rendering, and the system prompt is in it where the family puts it
    full = decode(tok, enc.input_ids)
    assert (
        full == render(tok, [{"role": "system", "content": system}] * bool(system) + conversation())
        or family == "gemma2"
    )  # gemma2 has no system role: the prompt is folded (test below)
    if system and family != "mistral-v0.3":  # Mistral writes the system text only into a final user turn
        assert "patient maths" in full


def test_pool_index_is_the_last_prompt_token(fam):
    family, tok = fam
    enc = encode(tok, Example(messages=conversation(2)), max_length=2048, system_prompt=SYSTEM)
    assert enc.labels[enc.pool_index] == IGNORE and enc.labels[enc.pool_index + 1] != IGNORE
    assert decode(tok, enc.input_ids[enc.pool_index + 1 :]).startswith(FAMILIES[family][5] + A2[:10])


def test_mistral_puts_the_system_prompt_into_the_last_user_turn(tokenizer):
    tok = family_tokenizer(tokenizer, "mistral-v0.3")
    prompt = prompt_text(tok, conversation(1) + [{"role": "user", "content": U2}], SYSTEM)
    assert prompt.endswith(f"[INST] {SYSTEM}\n\n{U2}[/INST]") and prompt.count(SYSTEM) == 1


def test_gemma2_folds_the_system_prompt_into_the_first_user_turn(tokenizer):
    tok = family_tokenizer(tokenizer, "gemma2")
    enc = encode(tok, Example(messages=conversation(2)), max_length=2048, system_prompt=SYSTEM)
    full = decode(tok, enc.input_ids)
    assert f"<start_of_turn>user\n{SYSTEM}\n\n{U1}<end_of_turn>\n" in full and full.count(SYSTEM) == 1
    assert [decode(tok, r) for r in runs(enc)] == [A1 + "<end_of_turn>\n", A2 + "<end_of_turn>\n"]
    # the same fold at inference, so the prompt a tuned model sees is the one it was trained on
    assert (
        prompt_text(tok, conversation(1)[:1], SYSTEM) == f"<bos><start_of_turn>user\n{SYSTEM}\n\n{U1}<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    # Gemma 3's own template folds it the same way
    g3 = family_tokenizer(tokenizer, "gemma3")
    assert prompt_text(g3, conversation(1)[:1], SYSTEM) == prompt_text(tok, conversation(1)[:1], SYSTEM)


def test_gemma2_system_prompt_is_an_error_when_asked(tokenizer):
    tok = family_tokenizer(tokenizer, "gemma2", system_fallback="error")
    with pytest.raises(DataError, match="no system role.*System role not supported"):
        encode(tok, Example(messages=conversation(1)), max_length=512, system_prompt=SYSTEM)
    with pytest.raises(DataError, match="system_prompt_fallback"):
        prompt_ids(tok, conversation(1)[:1], SYSTEM)
    assert encode(tok, Example(messages=conversation(1)), max_length=512).n_labels > 0  # no system prompt: fine


# ---- reasoning ----------------------------------------------------------------------------------
R1, R3 = "Half of 48 is 24.", "9 has the divisor 3."


def test_qwen3_reasoning_is_labelled_where_the_template_renders_it(tokenizer):
    tok = family_tokenizer(tokenizer, "qwen3")
    msgs = conversation()
    msgs[1] = {**msgs[1], "reasoning_content": R1}  # history turn: the template drops its reasoning
    msgs[5] = {**msgs[5], "content": f"<think>\n{R3}\n</think>\n\n{A3}"}  # inline block, final turn: kept
    enc = encode(tok, Example(messages=msgs), max_length=2048, system_prompt=SYSTEM)
    texts = [decode(tok, r) for r in runs(enc)]
    assert texts == [A1 + "<|im_end|>\n", A2 + "<|im_end|>\n", f"<think>\n{R3}\n</think>\n\n{A3}<|im_end|>\n"]
    assert R1 not in decode(tok, enc.input_ids)
    # without reasoning the final turn gets the template's empty think block, which is prompt, not a label
    plain = encode(tok, Example(messages=conversation()), max_length=2048)
    assert "<think>\n\n</think>\n\n" + A3 in decode(tok, plain.input_ids)
    assert decode(tok, runs(plain)[-1]) == A3 + "<|im_end|>\n"


def test_inline_reasoning_on_a_template_without_think_handling_is_labelled_whole(tokenizer):
    msgs = conversation(1)
    msgs[1] = {**msgs[1], "content": f"<think>{R1}</think>\n{A1}"}
    enc = encode(tokenizer, Example(messages=msgs), max_length=2048)
    assert [decode(tokenizer, r) for r in runs(enc)] == [f"<think>{R1}</think>\n{A1}<|im_end|>\n"]


# ---- template kwargs and override -----------------------------------------------------------------
def test_enable_thinking_false_reaches_training_and_prompts(tokenizer):
    think = family_tokenizer(tokenizer, "qwen3")
    nothink = family_tokenizer(tokenizer, "qwen3", template_kwargs={"enable_thinking": False})
    user = conversation(1)[:1]
    assert prompt_text(think, user).endswith("<|im_start|>assistant\n")
    assert prompt_text(nothink, user).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # training: a prompt-only example ends with the same generation prompt
    enc = encode(nothink, Example(messages=user), max_length=512)
    assert decode(nothink, enc.input_ids).endswith("<think>\n\n</think>\n\n")
    # any other caller of apply_chat_template (TRL, the DPO tokenisation) gets it too
    ids = nothink.apply_chat_template(user, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert decode(nothink, ids).endswith("<think>\n\n</think>\n\n")
    # and a copy of the tokenizer keeps it
    assert prompt_text(copy.deepcopy(nothink), user) == prompt_text(nothink, user)
    assert nothink.tunesmith_chat["kwargs"] == {"enable_thinking": False}
    assert nothink.tunesmith_chat["sha256"] == think.tunesmith_chat["sha256"]  # hash of the template, not the binding


def test_chat_template_override_and_record(tokenizer, tmp_path):
    tok = configure_chat(copy.deepcopy(tokenizer), TEMPLATES / "phi3.jinja")
    assert prompt_text(tok, conversation(1)[:1]).endswith("<|assistant|>\n")
    import hashlib

    assert tok.tunesmith_chat["sha256"] == hashlib.sha256((TEMPLATES / "phi3.jinja").read_bytes()).hexdigest()
    assert tok.tunesmith_chat["source"].endswith("phi3.jinja")
    own = configure_chat(copy.deepcopy(tokenizer))
    assert own.tunesmith_chat["source"] == "model" and own.tunesmith_chat["sha256"] != tok.tunesmith_chat["sha256"]
    # a base model without a template gets one from the file
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(DataError, match="data.chat_template"):
        prompt_ids(bare, conversation(1)[:1])
    configure_chat(bare, TEMPLATES / "phi3.jinja")
    assert render(bare, conversation(1)).startswith("<|user|>\n" + U1)


def test_template_without_end_of_turn_is_an_error(tokenizer, tmp_path):
    plain = tmp_path / "plain.jinja"
    plain.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok = configure_chat(copy.deepcopy(tokenizer), plain)
    with pytest.raises(DataError, match="no end-of-turn marker"):
        encode(tok, Example(messages=conversation(1)), max_length=512)
