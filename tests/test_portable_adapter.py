"""Adapters of the builtin model name its hub id, load with plain PEFT on the local copy and with
AutoPeftModelForCausalLM from a hub cache, and the hub id maps back to the local copy offline."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tunesmith.config import TrainingConfig
from tunesmith.data.chat import encode
from tunesmith.data.schema import Example
from tunesmith.modeling.loading import BUILTINS, add_lora, load_model, load_tokenizer, resolve

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUILTIN = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-step adapter of the builtin model written by tunesmith's trainer, and the logits it gives."""
    from tunesmith.training.trainer import Trainer

    tok = load_tokenizer(BUILTIN)
    model = add_lora(load_model(BUILTIN, "fp32"), 4, 8, 0.0, "attention")
    with torch.no_grad():  # a visible adapter: B starts at zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ex = Example(messages=[{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."}])
    feats = [encode(tok, ex, 64)] * 2
    run = tmp_path_factory.mktemp("portable") / "run"
    Trainer(
        model,
        tok,
        TrainingConfig(max_steps=1, batch_size=2, learning_rate=1e-3),
        lambda e: feats,
        run,
        log=lambda m: None,
    ).train()
    ids = torch.tensor([tok("Two plus two is")["input_ids"]])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return run / "adapter", ids, logits


pytestmark = pytest.mark.slow


def test_adapter_config_names_the_hub_id(trained):
    adapter, _, _ = trained
    assert BUILTINS["smollm2-135m-instruct"].hub_equivalent == HUB_ID
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID


def test_plain_peft_loads_it_on_the_local_copy(trained, builtin_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, ids, logits = trained
    base = AutoModelForCausalLM.from_pretrained(builtin_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, logits)
    with model.disable_adapter(), torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, logits)  # the adapter is what makes them equal


def test_auto_peft_loads_it_from_a_hub_cache(trained, builtin_dir, tmp_path, monkeypatch):
    """The hub cache layout (models--org--name/refs/main → snapshots/<sha>/), as huggingface_hub writes it,
    holding the builtin's files: what a machine that downloaded the hub id has."""
    from peft import AutoPeftModelForCausalLM

    adapter, ids, logits = trained
    sha = "0" * 40
    repo = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for f in builtin_dir.iterdir():
        os.symlink(f, snap / f.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoPeftModelForCausalLM.from_pretrained(adapter, cache_dir=str(tmp_path / "hub"), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, logits)


def test_hub_id_maps_to_the_local_copy(builtin_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve(HUB_ID) == (str(builtin_dir), {})
    # online, with the local copy already made: still the copy the adapter was trained on
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve(HUB_ID) == (str(builtin_dir), {})
    # online, nothing local: the hub id itself (downloaded by from_pretrained)
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "empty-tunesmith-cache"))
    assert resolve(HUB_ID) == (HUB_ID, {})
    # another hub id is never mapped
    assert resolve("HuggingFaceTB/SmolLM2-360M-Instruct") == ("HuggingFaceTB/SmolLM2-360M-Instruct", {})


def test_hub_cache_wins_over_the_local_copy(builtin_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    sha = "1" * 40
    repo = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve(HUB_ID) == (HUB_ID, {})


def test_load_for_inference_reads_the_hub_id_offline(trained, monkeypatch):
    from tunesmith.modeling.loading import load_for_inference

    adapter, ids, logits = trained
    assert not (adapter.parent / "config_resolved.json").exists()  # only the adapter names its base
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _, heads = load_for_inference(adapter, dtype="fp32")
    assert heads is None and model.peft_config["default"].base_model_name_or_path == HUB_ID
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, logits)
