"""vLLM backend without vLLM: the import guard gives a one-line error naming the fix, and the
requests it would send (token-id prompts identical to the HF backend's, greedy parameters, the
adapter as a LoRARequest, none under disable_adapter) are checked against a stand-in module."""

from __future__ import annotations

import json
import sys
import types

import pytest

from tunesmith.data.chat import prompt_ids
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.generation import vllm as V
from tunesmith.generation.factory import make_generator
from tunesmith.generation.hf import HFGenerator


def test_missing_vllm_is_a_clear_error(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(V.VLLMUnavailable) as e:
        V.VLLMGenerator(str(tiny_model_dir))
    msg = str(e.value)
    assert "pip install" in msg and "tunesmith[vllm]" in msg and "eval.backend: hf" in msg and "\n" not in msg
    assert isinstance(e.value, TunesmithError)  # the CLI prints it as one line, exit code 2
    with pytest.raises(V.VLLMUnavailable):
        make_generator("vllm", model_ref=str(tiny_model_dir))


def test_backend_selection(tokenizer):
    assert isinstance(make_generator("hf", object(), tokenizer), HFGenerator)
    with pytest.raises(ConfigError, match="unknown generation backend"):
        make_generator("tgi", object(), tokenizer)
    with pytest.raises(ConfigError, match="model reference"):
        make_generator("vllm", object(), tokenizer)


def test_lora_rank_rounding(tmp_path):
    assert V.vllm_lora_rank(4) == 8 and V.vllm_lora_rank(16) == 16 and V.vllm_lora_rank(24) == 32
    with pytest.raises(V.VLLMUnavailable, match="maximum"):
        V.vllm_lora_rank(1024)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q_proj": 24}}))
    assert V.adapter_rank(tmp_path) == 24
    kw = V.engine_kwargs("/m", tmp_path, dtype="bf16")
    assert kw["enable_lora"] and kw["max_lora_rank"] == 32 and kw["max_loras"] == 1 and kw["dtype"] == "bfloat16"
    assert "enable_lora" not in V.engine_kwargs("/m", None)


class _Out:
    def __init__(self, text):
        self.outputs = [types.SimpleNamespace(text=f" {text} ")]


class FakeLLM:
    instances: list = []

    def __init__(self, **kw):
        self.kw, self.calls = kw, []
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, params, lora_request))
        tag = "lora" if lora_request is not None else "base"
        return [_Out(f"{tag}:{len(p['prompt_token_ids'])}") for p in prompts]


class FakeSamplingParams:
    def __init__(self, **kw):
        self.kw = kw


class FakeLoRARequest:
    def __init__(self, name, int_id, path):
        self.name, self.int_id, self.path = name, int_id, path


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = FakeLoRARequest
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", req)):
        monkeypatch.setitem(sys.modules, name, mod)
    FakeLLM.instances = []
    return vllm


def test_requests_built_like_the_hf_backend(fake_vllm, tiny_model_dir, tokenizer, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    gen = make_generator(
        "vllm",
        None,
        tokenizer,
        batch_size=2,
        max_new_tokens=33,
        system_prompt="Be kind.",
        model_ref=str(tiny_model_dir),
        adapter_dir=adapter,
    )
    assert isinstance(gen, V.VLLMGenerator)
    llm = FakeLLM.instances[-1]
    assert llm.kw["model"] == str(tiny_model_dir) and llm.kw["enable_lora"] and llm.kw["max_lora_rank"] == 8
    convs = [[{"role": "user", "content": t}] for t in ("Hi", "I lost my keys again today.", "Name a colour.")]
    gen.batch_size = 2  # two vLLM calls: on_batch granularity
    seen = []
    replies = gen.chat(convs, description="x", on_batch=lambda idx, texts: seen.append((idx, texts)))
    expect = [prompt_ids(tokenizer, c, "Be kind.") for c in convs]
    sent = [p["prompt_token_ids"] for call in llm.calls for p in call[0]]
    assert sent == expect  # byte-identical prompts to the HF Generator's
    assert replies == [f"lora:{len(e)}" for e in expect]  # caller's order, stripped
    assert [s[0] for s in seen] == [[0, 1], [2]]
    params, lora = llm.calls[0][1].kw, llm.calls[0][2]
    assert params["temperature"] == 0 and params["max_tokens"] == 33 and params["n"] == 1
    assert tokenizer.eos_token_id in params["stop_token_ids"] and params["seed"] is None
    assert lora.path == str(adapter.resolve()) and lora.int_id == 1
    with gen.disable_adapter():
        base = gen.chat(convs[:1], max_new_tokens=5)
    assert base == [f"base:{len(expect[0])}"] and llm.calls[-1][2] is None
    assert llm.calls[-1][1].kw["max_tokens"] == 5
    assert gen.active_lora is not None  # restored after the block
    gen.chat(convs[:1], temperature=0.7, seed=3)
    assert llm.calls[-1][1].kw["temperature"] == 0.7 and llm.calls[-1][1].kw["seed"] == 3


def test_no_adapter_means_no_lora(fake_vllm, tiny_model_dir, tokenizer):
    gen = V.VLLMGenerator(str(tiny_model_dir), tokenizer=tokenizer)
    assert "enable_lora" not in FakeLLM.instances[-1].kw and gen.active_lora is None
    gen.chat([[{"role": "user", "content": "Hi"}]])
    assert FakeLLM.instances[-1].calls[-1][2] is None


# The generation-prompt tail of DeepSeek-R1-Distill's published chat template: the prompt opens the
# think block, so the model's reply starts inside it.
R1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}{% elif message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


def test_both_backends_give_back_the_think_tag_a_prompt_opened(fake_vllm, tiny_model_dir, tokenizer):
    import copy

    from transformers import AutoModelForCausalLM

    from tunesmith.data.reasoning import THINK_OPEN, split_reasoning

    r1 = copy.deepcopy(tokenizer)
    r1.chat_template = R1_TEMPLATE
    convs = [[{"role": "user", "content": "What is 6 times 7?"}]]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    hf = make_generator("hf", model, r1, batch_size=1, max_new_tokens=3)
    vl = make_generator("vllm", None, r1, batch_size=1, max_new_tokens=3, model_ref=str(tiny_model_dir))
    for reply in (hf.chat(convs)[0], vl.chat(convs)[0]):
        assert reply.startswith(THINK_OPEN), reply
        assert split_reasoning(reply)[1] == "", reply  # an unfinished think block is reasoning, not the answer
    # a template that does not open the block (the embedded ChatML one) leaves replies as generated
    assert (
        not make_generator("vllm", None, tokenizer, batch_size=1, max_new_tokens=3, model_ref=str(tiny_model_dir))
        .chat(convs)[0]
        .startswith(THINK_OPEN)
    )
