"""The embedded SmolLM2-135M-Instruct loads through tunesmith's own model references, from a
safetensors cache, and answers a trivial question.

Loading from the cache in under 2 s is a speed target, not asserted here (machines differ)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.errors import ModelError
from tunesmith.generation.hf import HFGenerator
from tunesmith.modeling.loading import BUILTINS, builtin_path, load_model, load_tokenizer, resolve

REF = "builtin:smollm2-135m-instruct"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return load_model(REF, dtype="fp32")


def test_cache_folder_is_safetensors_only(builtin_dir):
    assert builtin_path("smollm2-135m-instruct") == builtin_dir
    assert (builtin_dir / "config.json").is_file()
    assert (builtin_dir / "model.safetensors").is_file()
    assert not list(builtin_dir.rglob("*.bin"))
    assert not list(builtin_dir.rglob("*.gguf"))  # the GGUF is dequantized once, not copied
    assert resolve(REF) == (str(builtin_dir), {})


def test_loads_with_expected_shape_and_chatml(model):
    assert model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32
    tok = load_tokenizer(REF)
    assert "<|im_start|>" in tok.chat_template and "<|im_end|>" in tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.pad_token is not None
    assert tok.eos_token == "<|im_end|>"


def test_greedy_answer_to_simple_sum(model):
    tok = load_tokenizer(REF)
    gen = HFGenerator(model, tok, batch_size=1, max_new_tokens=20)
    [answer] = gen.chat([[{"role": "user", "content": "What is 2+3?"}]])
    assert "5" in answer


def test_unknown_builtin_is_a_model_error():
    assert "smollm2-135m-instruct" in BUILTINS
    with pytest.raises(ModelError, match="unknown builtin"):
        resolve("builtin:nope")
