"""The trainer's LoRA dropout: same distribution as nn.Dropout, swapped into PEFT's LoRA layers."""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.modeling.loading import add_lora, load_model
from tunesmith.training.dropout import FastDropout, bernoulli_keep_mask, use_fast_lora_dropout


def test_keep_rate_scaling_and_lanes_are_unbiased():
    torch.manual_seed(0)
    n = 3_000_001  # not a multiple of 3: the last word is cut
    for p in (0.05, 0.1, 0.5):
        keep, p_used = bernoulli_keep_mask(torch.Size([n]), p, torch.device("cpu"))
        assert abs(p_used - p) <= 2**-17
        rate = keep.float().mean().item()
        assert abs(rate - (1 - p_used)) < 5 * (p * (1 - p) / n) ** 0.5
        # each of the three 16-bit lanes of a word is a fair coin on its own (the dropped 4th lane
        # would have been biased: random_ leaves the int64 sign bit at 0)
        lanes = keep[: n - n % 3].view(-1, 3).float().mean(0)
        assert torch.allclose(lanes, torch.full((3,), 1 - p_used), atol=6 * (p * (1 - p) / (n / 3)) ** 0.5)
    # neighbouring elements are independent (a shared word must not give correlated lanes)
    keep, _ = bernoulli_keep_mask(torch.Size([n]), 0.5, torch.device("cpu"))
    a, b = keep[:-1].float(), keep[1:].float()
    assert abs(((a - a.mean()) * (b - b.mean())).mean().item()) < 0.005


def test_fast_dropout_matches_nn_dropout_in_expectation_and_eval():
    torch.manual_seed(1)
    x = torch.randn(64, 128, 96)
    d = FastDropout(0.1)
    y = d(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - 0.1), atol=1e-5)
    assert abs(y.mean().item() - x.mean().item()) < 0.01
    d.eval()
    assert d(x) is x
    torch.manual_seed(7)
    a = FastDropout(0.1).train()(x)
    torch.manual_seed(7)
    assert torch.equal(a, FastDropout(0.1).train()(x))  # seeded like nn.Dropout


def test_swapped_into_every_lora_layer(tiny_model_dir):
    model = add_lora(load_model(str(tiny_model_dir), dtype="fp32"), r=4, alpha=8, dropout=0.05, targets="auto")
    before = sum(isinstance(m, nn.Dropout) for m in model.modules())
    swapped = use_fast_lora_dropout(model)
    assert swapped == before > 0
    assert not any(isinstance(m, nn.Dropout) for n, m in model.named_modules() if "lora_dropout" in n)
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == swapped
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    out = model(input_ids=ids, labels=ids).loss
    out.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    assert (
        use_fast_lora_dropout(
            add_lora(load_model(str(tiny_model_dir), dtype="fp32"), r=4, alpha=8, dropout=0.0, targets="auto")
        )
        == 0
    )


def test_non_cpu_inputs_take_torchs_dropout(monkeypatch):
    # the swap happens before accelerate moves the model, so the kernel is chosen per input
    # (no GPU here: a meta tensor stands in for a CUDA one)
    from tunesmith.training import dropout as dmod

    calls = []
    monkeypatch.setattr(dmod.F, "dropout", lambda x, p, training: calls.append((x.device.type, p)) or x)
    x = torch.ones(4, 4, device="meta")
    assert FastDropout(0.2).train()(x) is x and calls == [("meta", 0.2)]
    FastDropout(0.2).train()(torch.ones(4, 4))
    assert len(calls) == 1  # CPU inputs keep the cheap mask
