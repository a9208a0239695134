"""The LM loss at labelled positions: the chunked path (frozen LM head, the LoRA case) gives the
same loss and the same gradients as the plain cross-entropy over full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.training import losses
from tunesmith.training.losses import lm_nll_sum


def reference(hidden, labels, lm_head):
    targets = labels[:, 1:]
    sel = targets != -100
    return F.cross_entropy(lm_head(hidden[:, :-1][sel]).float(), targets[sel], reduction="sum")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_lm_loss_matches_full_logits(dtype, monkeypatch):
    torch.manual_seed(0)
    vocab, dim = 300, 24
    head = torch.nn.Linear(dim, vocab, bias=False).to(dtype).requires_grad_(False)
    labels = torch.randint(0, vocab, (3, 17))
    labels[0, :5] = -100
    labels[2, 9:] = -100
    base = torch.randn(3, 17, dim, dtype=dtype)
    monkeypatch.setattr(losses._ChunkedLinearCE, "CHUNK_ELEMENTS", vocab * 7)  # several chunks, a short last one

    h1 = base.clone().requires_grad_(True)
    assert losses._fusable(head, h1)
    got = lm_nll_sum(h1, labels, head)
    (got * 0.5).backward()
    h2 = base.clone().requires_grad_(True)
    want = reference(h2, labels, head)
    (want * 0.5).backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, want, rtol=tol)
    assert torch.allclose(h1.grad.float(), h2.grad.float(), atol=tol, rtol=tol)
    assert h1.grad.abs().sum() > 0 and h1.grad[2, 9:].abs().sum() == 0  # unlabelled positions get nothing


def test_trainable_or_biased_heads_take_the_plain_path():
    h = torch.randn(4, 8, requires_grad=True)
    assert not losses._fusable(torch.nn.Linear(8, 10, bias=False), h)  # trainable weight
    assert not losses._fusable(torch.nn.Linear(8, 10).requires_grad_(False), h)  # bias
    with torch.no_grad():
        assert not losses._fusable(torch.nn.Linear(8, 10, bias=False).requires_grad_(False), h)
