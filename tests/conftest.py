"""Shared fixtures: the real embedded model (cached once), tiny random-weight models built from
configs with its tokenizer, and paths to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the shared datasets beside the repo)")
    return p


@pytest.fixture(scope="session")
def builtin_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (dequantized on first use)."""
    from tunesmith.modeling.loading import builtin_path

    return builtin_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(builtin_dir):
    from tunesmith.modeling.loading import load_tokenizer

    return load_tokenizer(str(builtin_dir))


def make_tiny_model(directory: Path, tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A random-weight Llama with the embedded model's tokenizer and chat template (fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(autouse=True)
def _isolated_cwd_outputs(monkeypatch):
    # keep the real user cache (the embedded model is expensive to rebuild) but never write
    # run outputs into the repo from tests
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # huggingface_hub read HF_HUB_OFFLINE when it was imported; without this, code that asks it
    # (peft's AutoPeftModel, transformers' hub helpers) tries the network first and waits out its
    # timeouts on a machine without one (47 s in one test)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
