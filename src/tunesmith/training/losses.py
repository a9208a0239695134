"""Loss terms, each returned as (sum, count) so the trainer can normalise over a whole
accumulation window (and across processes) instead of averaging per micro-batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_nll_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    """Summed next-token NLL over labelled positions.

    Only the positions that carry a label go through the LM head, so the (tokens × vocabulary)
    logits tensor is never built for prompt tokens.
    """
    targets = labels[:, 1:]
    sel = targets != -100
    if not sel.any():
        return hidden.sum() * 0.0
    h = hidden[:, :-1][sel]
    if _fusable(lm_head, h):
        return _ChunkedLinearCE.apply(h, lm_head.weight, targets[sel])
    logits = lm_head(h).float()
    return F.cross_entropy(logits, targets[sel], reduction="sum")


def _fusable(lm_head: torch.nn.Module, h: torch.Tensor) -> bool:
    """A plain, frozen, bias-free, unsharded LM head (the LoRA case). A trained head (full fine-tune,
    modules_to_save) or one sharded by FSDP/ZeRO-3 (DTensor, flattened or empty local shape) takes
    the ordinary path, whose autograd handles those."""
    w = getattr(lm_head, "weight", None)
    return (
        isinstance(lm_head, torch.nn.Linear)
        and lm_head.bias is None
        and w is not None
        and not w.requires_grad
        and w.dim() == 2
        and w.shape[1] == h.shape[-1]
        and type(w.data).__name__ != "DTensor"
        and torch.is_grad_enabled()
        and h.requires_grad
    )


class _ChunkedLinearCE(torch.autograd.Function):
    """Σ CE(h·Wᵀ, targets) without keeping (rows × vocabulary) logits for backward.

    The gradient with respect to h, (softmax − onehot)·W, is computed chunk by chunk in the forward
    pass, so only one chunk's fp32 logits exist at a time and backward is a scale of a (rows × H)
    tensor. Same arithmetic as the unfused path: bf16 logits upcast to fp32 for the loss, the logit
    gradient cast back to h's dtype for the matmul with W.
    """

    CHUNK_ELEMENTS = 8 * 1024 * 1024  # fp32 logits per chunk: 32 MiB

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = max(1, _ChunkedLinearCE.CHUNK_ELEMENTS // weight.shape[0])
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        for s in range(0, h.shape[0], rows):
            t = targets[s : s + rows]
            logits = (h[s : s + rows] @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            probs = logits.sub_(lse[:, None]).exp_()
            probs[torch.arange(len(t), device=h.device), t] -= 1.0
            grad_h[s : s + rows] = probs.to(h.dtype) @ weight
        ctx.save_for_backward(grad_h)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), None, None


def kl_policy_base_sum(policy_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Σ_positions KL(policy ‖ base) = Σ p_policy · (log p_policy − log p_base).

    Policy-first (the "reverse" KL used as the RLHF penalty): it is large wherever the tuned model
    puts mass the base model would not, which is the drift we want to stop on safety prompts.
    """
    logp = F.log_softmax(policy_logits.float(), dim=-1)
    logq = F.log_softmax(base_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum()


def head_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over rows whose label is set (label < 0 means none)."""
    sel = labels >= 0
    if not sel.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[sel].float(), labels[sel], reduction="sum")
