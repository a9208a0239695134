"""Mixed precision in the trainer: LoRA matmuls in bf16 on a bf16 base, fp32 master weights."""

from __future__ import annotations

import torch

from tunesmith.config import TrainingConfig
from tunesmith.data.batching import collate
from tunesmith.data.chat import encode
from tunesmith.data.sources import gsm8k
from tunesmith.modeling.loading import add_lora, load_model
from tunesmith.training.precision import LoraAutocast, autocast_dtype
from tunesmith.training.trainer import Trainer, TrainModule

RECORDS = [
    {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
    {"question": "A box holds 6 eggs. How many eggs are in 7 boxes?", "answer": "6 * 7 = 42\n#### 42"},
    {"question": "Half of 30?", "answer": "Half of 30 is 30 / 2 = 15.\n#### 15"},
]


def lora(tiny_model_dir, dtype: str):
    torch.manual_seed(0)
    model = add_lora(load_model(str(tiny_model_dir), dtype=dtype), r=8, alpha=16, dropout=0.0, targets="auto")
    for n, p in model.named_parameters():  # B = 0 at init would make every A gradient zero
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return model


def grads_and_saved_bytes(model, batch, amp):
    """LoRA gradients of one LM-loss backward, and the bytes autograd kept for it."""
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    module = TrainModule(model)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp():
        out = module(**batch)
    out["lm"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads, saved[0]


def test_autocast_only_for_a_bf16_base_with_wider_trainable_weights(tiny_model_dir):
    assert autocast_dtype(lora(tiny_model_dir, "fp32")) is None
    model = lora(tiny_model_dir, "bf16")
    assert autocast_dtype(model) == torch.bfloat16
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    model.to(torch.bfloat16)  # everything bf16: nothing to gain
    assert autocast_dtype(model) is None
    assert not LoraAutocast(model).enabled


def test_autocast_follows_the_model_to_its_device(tiny_model_dir):
    # the trainer builds it before accelerate moves the model (to CUDA on a GPU machine)
    model = lora(tiny_model_dir, "bf16")
    amp = LoraAutocast(model)
    assert amp.device_type == "cpu"
    model.to("meta")
    assert amp.device_type == "meta"


def test_bf16_lora_step_matches_the_upcast_path_and_keeps_less_for_backward(tiny_model_dir, tokenizer):
    model = lora(tiny_model_dir, "bf16")
    batch = collate([encode(tokenizer, gsm8k.to_example(r), max_length=64) for r in RECORDS], tokenizer.pad_token_id)
    amp = LoraAutocast(model)
    assert amp.enabled and amp.layers

    class Off:
        def __call__(self):
            import contextlib

            return contextlib.nullcontext()

    want, bytes_upcast = grads_and_saved_bytes(model, batch, Off())
    got, bytes_amp = grads_and_saved_bytes(model, batch, amp)
    assert all(m.cast_input_dtype_enabled for m in amp.layers)  # restored after the forward
    assert set(got) == set(want)
    flat_w = torch.cat([want[n].flatten().float() for n in sorted(want)])
    flat_g = torch.cat([got[n].flatten().float() for n in sorted(got)])
    assert all(got[n].dtype == torch.float32 for n in got)  # fp32 master weights get fp32 gradients
    cos = torch.nn.functional.cosine_similarity(flat_g, flat_w, dim=0)
    assert cos > 0.99, float(cos)
    assert (flat_g - flat_w).norm() < 0.1 * flat_w.norm()
    # the fp32 copies of every LoRA input are no longer kept for backward
    assert bytes_amp < 0.95 * bytes_upcast, (bytes_amp, bytes_upcast)


def test_trainer_trains_a_bf16_base_with_fp32_lora(tmp_path, tiny_model_dir, tokenizer):
    model = lora(tiny_model_dir, "bf16")
    feats = [encode(tokenizer, gsm8k.to_example(r), max_length=64) for r in RECORDS]
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=3, max_steps=8, seed=0)
    trainer = Trainer(model, tokenizer, cfg, lambda e: feats, tmp_path / "run", log=lambda m: None)
    assert trainer.amp.enabled
    seen = []
    layer = trainer.amp.layers[0]
    hook = layer.register_forward_pre_hook(
        lambda m, args: seen.append((m.cast_input_dtype_enabled, torch.is_autocast_enabled("cpu")))
    )
    state = trainer.train()
    hook.remove()
    assert seen and all(s == (False, True) for s in seen)  # every training forward ran under the autocast
    losses = [r["loss"] for r in state.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
