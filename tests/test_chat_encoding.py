"""Assistant-only labels, checked by decoding the labelled tokens, on two chat templates: SmolLM2's
ChatML and a Llama-3-style template built here; plus truncation, pool_index and template errors."""

from __future__ import annotations

import copy

import pytest

from tunesmith.data.chat import IGNORE, configure_chat, encode, prompt_ids, render, with_system
from tunesmith.data.schema import Example
from tunesmith.errors import DataError

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Gemma-style: no system role
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llama3_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.fixture(params=["chatml", "llama3"])
def tmpl(request, tokenizer, llama3_tokenizer):
    """(tokenizer, end-of-turn marker that closes an assistant reply)."""
    if request.param == "chatml":
        return tokenizer, "<|im_end|>"
    return llama3_tokenizer, "<|eot_id|>"


def labelled_runs(enc) -> list[list[int]]:
    """Contiguous runs of labelled token ids."""
    runs, cur = [], []
    for tid, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == tid  # a label is the token itself (the model shifts)
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


REPLY1 = "Natalia sold 48/2 = 24 clips in May.\n#### 72"
REPLY2 = "Eight, because 4+4=8.\n#### 8"


def conv(two_turns: bool = False) -> list[dict]:
    m = [
        {"role": "user", "content": "How many clips did Natalia sell altogether?"},
        {"role": "assistant", "content": REPLY1},
    ]
    if two_turns:
        m += [{"role": "user", "content": "And what is 4+4?"}, {"role": "assistant", "content": REPLY2}]
    return m


def test_templates_differ(tokenizer, llama3_tokenizer):
    a = render(tokenizer, conv())
    b = render(llama3_tokenizer, conv())
    assert "<|im_start|>" in a and "<|start_header_id|>" in b and "<|im_start|>assistant" not in b


def test_only_the_assistant_reply_is_labelled(tmpl):
    tok, eot = tmpl
    enc = encode(tok, Example(messages=conv()), max_length=512, system_prompt="You are a careful math tutor.")
    assert len(enc.labels) == len(enc.input_ids)
    runs = labelled_runs(enc)
    assert len(runs) == 1
    text = decode(tok, runs[0])
    assert text.startswith(REPLY1)
    assert text[len(REPLY1) :].strip() == eot  # the reply plus its end-of-turn marker, nothing else
    # the system + user prompt, up to and including the assistant header, is all -100 ...
    first = next(j for j, x in enumerate(enc.labels) if x != IGNORE)
    prompt_text = render(tok, with_system(conv()[:1], "You are a careful math tutor."), add_generation_prompt=True)
    assert decode(tok, enc.input_ids[:first]) == prompt_text
    # ... and everything after it (the reply and its end marker) is labelled
    assert all(x != IGNORE for x in enc.labels[first:])
    # nothing of the system or user text is labelled
    labelled = decode(tok, [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert "careful math tutor" not in labelled and "Natalia sell" not in labelled
    assert enc.n_labels == len(runs[0])


def test_two_assistant_turns_are_both_labelled(tmpl):
    tok, eot = tmpl
    enc = encode(tok, Example(messages=conv(two_turns=True)), max_length=512)
    runs = labelled_runs(enc)
    assert len(runs) == 2
    for run, reply in zip(runs, (REPLY1, REPLY2)):
        text = decode(tok, run)
        assert text.startswith(reply) and text[len(reply) :].strip() == eot
    labelled = decode(tok, [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert "And what is" not in labelled and "Natalia sell" not in labelled


def test_train_on_last_labels_only_the_final_reply(tmpl):
    tok, eot = tmpl
    enc = encode(tok, Example(messages=conv(two_turns=True)), max_length=512, train_on="last")
    runs = labelled_runs(enc)
    assert len(runs) == 1
    text = decode(tok, runs[0])
    assert text.startswith(REPLY2) and text[len(REPLY2) :].strip() == eot
    full = encode(tok, Example(messages=conv(two_turns=True)), max_length=512)
    assert full.input_ids == enc.input_ids  # same tokens, fewer labels
    assert enc.n_labels < full.n_labels


def test_pool_index_is_the_last_prompt_token(tmpl):
    tok, _ = tmpl
    for messages in (conv(), conv(two_turns=True)):
        enc = encode(tok, Example(messages=messages), max_length=512, system_prompt="Be brief.")
        # everything up to pool_index is the prompt for the final reply, generation header included
        prompt_text = render(tok, with_system(messages[:-1], "Be brief."), add_generation_prompt=True)
        assert decode(tok, enc.input_ids[: enc.pool_index + 1]) == prompt_text
        # the next token is the first labelled token of the final reply
        assert enc.labels[enc.pool_index] == IGNORE
        assert enc.labels[enc.pool_index + 1] != IGNORE
        assert decode(tok, enc.input_ids[enc.pool_index + 1 :]).startswith(messages[-1]["content"][:10])


def test_prompt_only_example_pools_at_the_last_token(tmpl):
    tok, _ = tmpl
    msgs = [{"role": "user", "content": "I feel so alone lately."}]
    enc = encode(tok, Example(messages=msgs), max_length=512)
    assert enc.n_labels == 0
    assert enc.pool_index == len(enc.input_ids) - 1
    assert enc.input_ids == prompt_ids(tok, msgs)
    # the user span covers the user's words
    a, b = enc.user_span
    assert decode(tok, enc.input_ids[a:b]).strip() == "I feel so alone lately."


def test_truncation_keeps_the_start(tmpl):
    tok, _ = tmpl
    ex = Example(messages=conv(two_turns=True))
    full = encode(tok, ex, max_length=4096)
    cut = max(len(prompt_ids(tok, conv()[:1])) + 5, 20)
    assert cut < len(full.input_ids)
    enc = encode(tok, ex, max_length=cut)
    assert len(enc.input_ids) == len(enc.labels) == cut
    assert enc.input_ids == full.input_ids[:cut]
    assert enc.labels == full.labels[:cut]
    assert 0 <= enc.pool_index < cut
    assert 0 <= enc.user_span[0] < enc.user_span[1] <= cut
    # a cut so short that no reply token survives: nothing labelled, indices still in range
    tiny = encode(tok, ex, max_length=17)
    assert len(tiny.input_ids) == 17 and tiny.n_labels == 0
    assert 0 <= tiny.pool_index < 17


def test_emotion_only_example_is_a_user_turn(tokenizer):
    enc = encode(tokenizer, Example(text="so happy today", emotion=3), max_length=128)
    assert enc.n_labels == 0 and enc.emotion == 3
    assert "so happy today" in decode(tokenizer, enc.input_ids)


def test_template_rejecting_system_role_is_a_data_error(tokenizer):
    # with data.system_prompt_fallback: error (the default, fold, is tested in test_chat_templates.py)
    tok = configure_chat(copy.deepcopy(tokenizer), system_fallback="error")
    tok.chat_template = NO_SYSTEM_TEMPLATE
    # without a system prompt the template works
    enc = encode(tok, Example(messages=conv()), max_length=512)
    assert decode(tok, labelled_runs(enc)[0]).startswith(REPLY1)
    with pytest.raises(DataError) as e:
        encode(tok, Example(messages=conv()), max_length=512, system_prompt="Be brief.")
    assert "System role not supported" in str(e.value)
    assert "system" in str(e.value)


def test_tokenizer_without_chat_template_is_a_data_error(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        encode(tok, Example(messages=conv()), max_length=512)
    with pytest.raises(DataError, match="no chat template"):
        prompt_ids(tok, conv()[:1])


def test_chatml_training_prompt_tokens_equal_inference_prompt_tokens(tokenizer):
    # with ChatML the prompt tokenizes the same alone (generation) and inside the full example (training)
    for messages in (conv(), conv(two_turns=True)):
        enc = encode(tokenizer, Example(messages=messages), max_length=512, system_prompt="Be brief.")
        prompt = prompt_ids(tokenizer, messages[:-1], "Be brief.")
        assert enc.pool_index == len(prompt) - 1
        assert enc.input_ids[: len(prompt)] == prompt
