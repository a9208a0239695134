"""`tunesmith export`: the merged model reloads with plain transformers and gives the same greedy
output as base + adapter; heads travel as a side file; GGUF goes through llama.cpp's converter
when one is found and prints how to get one otherwise."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import torch

from tunesmith.errors import ModelError

PROMPTS = ["My exam went badly and I feel awful.", "Name a colour.", "We just got a puppy!"]


def make_adapter(directory: Path, tiny_model_dir: Path) -> Path:
    from tunesmith.modeling.heads import Heads
    from tunesmith.modeling.loading import add_lora, load_model

    torch.manual_seed(3)
    model = add_lora(load_model(str(tiny_model_dir), "fp32"), 4, 8, 0.0, "auto")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # large enough to change greedy tokens of the random model
    model.save_pretrained(directory)
    Heads(model.config.hidden_size).save(directory)
    return directory


def greedy(model, tokenizer) -> list[list[int]]:
    from tunesmith.generation.hf import HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=3, max_new_tokens=12)
    from tunesmith.data.chat import prompt_ids

    return gen.generate_ids([prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS])


def test_merged_export_matches_base_plus_adapter(tmp_path, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.modeling.heads import HEADS_FILE, Heads
    from tunesmith.modeling.loading import load_for_inference, load_model

    adapter = make_adapter(tmp_path / "adapter", tiny_model_dir)
    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["export", str(adapter), str(out), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists() and not list(out.glob("*.bin"))
    assert (out / HEADS_FILE).is_file() and Heads.load(out) is not None
    info = json.loads((out / "tunesmith_export.json").read_text())
    assert info["dtype"] == "float32" and info["heads"] is True  # auto = the base checkpoint's dtype

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template
    peft_model, _, _ = load_for_inference(adapter, str(tiny_model_dir), "fp32")
    base = load_model(str(tiny_model_dir), "fp32").eval()
    ids = torch.tensor([[1, 200, 3000, 45, 9]])
    with torch.no_grad():
        a, b, c = merged(ids).logits, peft_model(ids).logits, base(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert (b - c).abs().max() > 1e-2  # the adapter matters
    tuned = greedy(peft_model, tokenizer)
    assert greedy(merged, tokenizer) == tuned
    assert greedy(base, tokenizer) != tuned

    res = CliRunner().invoke(app, ["export", str(adapter), str(out), "--model", str(tiny_model_dir)])
    assert res.exit_code != 0 and "not empty" in str(res.exception)


def test_gguf_converter_found_or_explained(tmp_path, monkeypatch):
    from tunesmith.modeling import export as E

    hf = tmp_path / "hf"
    hf.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("TUNESMITH_GGUF_CONVERTER", raising=False)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    assert E.find_gguf_converter() is None
    with pytest.raises(ModelError, match="convert_hf_to_gguf.py"):
        E.export_gguf(hf)
    assert "git clone" in E.gguf_instructions(hf)

    # a stand-in converter on PATH: called as `python convert_hf_to_gguf.py DIR --outfile F --outtype T`
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "convert_hf_to_gguf.py"
    fake.write_text("import sys, json\na = sys.argv\nopen(a[a.index('--outfile') + 1], 'w').write(json.dumps(a[1:]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    conv = E.find_gguf_converter()
    assert conv == [sys.executable, str(fake)]
    target = E.export_gguf(hf, "q8_0")
    assert target == hf / "model-q8_0.gguf"
    assert json.loads(target.read_text()) == [str(hf), "--outfile", str(target), "--outtype", "q8_0"]
    with pytest.raises(ModelError, match="outtype"):
        E.export_gguf(hf, "q3_k")
