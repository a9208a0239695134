"""Batched greedy generation (left padding, length-sorted batches) gives exactly the tokens that
one-at-a-time greedy generation gives, in the caller's order."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.chat import prompt_ids
from tunesmith.generation.hf import HFGenerator

QUESTIONS = [
    "Hi",
    "What is 2+3?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many?",
    "Name a colour.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Why is the sky blue? Answer in one short sentence please.",
    "Thanks, that helps a lot!",
]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from tunesmith.modeling.loading import load_model

    model = load_model(str(tiny_model_dir), dtype="fp32")
    assert model.dtype == torch.float32
    return model


def test_batched_equals_one_at_a_time(tiny_model, tokenizer):
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    prompts = [prompt_ids(tokenizer, c) for c in convs]
    assert len({len(p) for p in prompts}) >= 5  # lengths differ: left padding is exercised
    single = HFGenerator(tiny_model, tokenizer, batch_size=1, max_new_tokens=24)
    batched = HFGenerator(tiny_model, tokenizer, batch_size=4, max_new_tokens=24)
    one = [single.generate_ids([p])[0] for p in prompts]
    seen: list[int] = []
    many = batched.generate_ids(prompts, on_batch=lambda idx, outs: seen.extend(idx))
    assert many == one
    assert sorted(seen) == list(range(len(prompts)))  # every prompt once, in batches of ≤ 4
    assert max(len(o) for o in many) == 24  # a random model rarely stops: the full length was compared
    # and the text path (chat → decode) agrees too, in input order
    assert batched.chat(convs) == [tokenizer.decode(o, skip_special_tokens=True).strip() for o in one]
    # reversed input gives reversed output
    assert batched.generate_ids(prompts[::-1]) == one[::-1]


def test_batch_results_follow_input_order(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer, batch_size=3, max_new_tokens=6)
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    # duplicates of one prompt at scattered positions get identical outputs
    mixed = [prompts[2], prompts[0], prompts[2], prompts[5], prompts[2]]
    out = gen.generate_ids(mixed)
    assert out[0] == out[2] == out[4]
    assert out[1] == gen.generate_ids([prompts[0]])[0]
    assert out[3] == gen.generate_ids([prompts[5]])[0]


def test_next_token_logits_match_unpadded_forward(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer, batch_size=4)
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:5]]
    logits = gen.next_token_logits(prompts)
    assert logits.shape == (5, tiny_model.config.vocab_size)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            ref = tiny_model(input_ids=torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(logits[i], ref, atol=1e-4, rtol=1e-4)


def test_generation_stops_at_eos_and_restores_training_mode(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer, batch_size=2, max_new_tokens=5)
    assert tokenizer.eos_token_id in gen.eos_ids
    tiny_model.train()
    try:
        out = gen.generate_ids([prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}])])
        assert tiny_model.training
    finally:
        tiny_model.eval()
    assert all(t not in gen.eos_ids for t in out[0])


@pytest.mark.slow
def test_embedded_model_batched_equals_one_at_a_time(builtin_dir, tokenizer):
    from tunesmith.modeling.loading import load_model

    model = load_model(str(builtin_dir), dtype="fp32")
    convs = [
        [{"role": "user", "content": q}]
        for q in ("What is 2+3?", "Name a colour.", "Say hello.", "What is the capital of France?")
    ]
    prompts = [prompt_ids(tokenizer, c) for c in convs]
    assert len({len(p) for p in prompts}) > 1
    one = [HFGenerator(model, tokenizer, batch_size=1, max_new_tokens=10).generate_ids([p])[0] for p in prompts]
    many = HFGenerator(model, tokenizer, batch_size=4, max_new_tokens=10).generate_ids(prompts)
    assert many == one
    assert all(len(o) > 0 for o in one)


FEWSHOT = [
    {"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"},
    {"role": "assistant", "content": "He has 3 + 5 = 8 apples.\n#### 8"},
    {"role": "user", "content": "A box holds 6 eggs. How many eggs are in 7 boxes?"},
    {"role": "assistant", "content": "6 * 7 = 42 eggs.\n#### 42"},
]


def test_common_prefix_len_leaves_every_row_a_token():
    from tunesmith.generation.hf import common_prefix_len

    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2, 7]]) == 2
    assert common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token
    assert common_prefix_len([[5, 1], [6, 1]]) == 0


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_shared_fewshot_prefix_is_cached_once_and_changes_nothing(which, tiny_model, builtin_dir, tokenizer):
    from tunesmith.generation.hf import common_prefix_len
    from tunesmith.modeling.loading import load_model

    model = tiny_model if which == "tiny" else load_model(str(builtin_dir), dtype="fp32")
    new = 24 if which == "tiny" else 12
    convs = [FEWSHOT + [{"role": "user", "content": q}] for q in QUESTIONS[:5]]
    prompts = [prompt_ids(tokenizer, c) for c in convs]
    batched = HFGenerator(model, tokenizer, batch_size=5, max_new_tokens=new)
    assert common_prefix_len(prompts) >= batched.min_shared_prefix  # the shared-prefix path runs
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        many = batched.generate_ids(prompts)
    finally:
        hook.remove()
    assert calls[0][0] == 1 and calls[0][1] == common_prefix_len(prompts)  # prefix once, batch size 1
    one = [HFGenerator(model, tokenizer, batch_size=1, max_new_tokens=new).generate_ids([p])[0] for p in prompts]
    assert many == one
    plain = HFGenerator(model, tokenizer, batch_size=5, max_new_tokens=new)
    plain.min_shared_prefix = 10**9  # left padding only
    assert plain.generate_ids(prompts) == one
