"""The multi-task forward pass pieces: the decoder's hidden states and the heads on top of them."""

from __future__ import annotations

import torch

from tunesmith.data.batching import collate, sorted_batches
from tunesmith.data.chat import Encoded
from tunesmith.modeling.heads import Heads


def causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_hidden(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Last hidden states from the decoder alone (LoRA layers live inside it); the LM head is
    left to the caller so it only runs where logits are needed.

    With `position_ids` (packed rows) the attention mask is left out: transformers then reads the
    position restarts as sequence boundaries and masks attention across them.
    """
    decoder = causal_lm(model).get_decoder()
    if position_ids is not None:
        return decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


@torch.inference_mode()
def head_logits(
    model, heads: Heads, features: list[Encoded], pad_id: int, batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """Emotion/strategy logits for encoded examples (right-padded batches, pooled per row)."""
    was = model.training, heads.training
    model.eval()
    heads.eval()
    device = next(model.parameters()).device
    result: dict[str, torch.Tensor] = {}
    try:
        for idx in sorted_batches(features, batch_size):
            batch = collate([features[i] for i in idx], pad_id)
            hidden = decoder_hidden(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            logits = heads(heads.pool(hidden, batch["pool_index"].to(device), batch["user_span"].to(device)))
            for k, v in logits.items():
                if k not in result:
                    result[k] = torch.empty((len(features), v.shape[-1]))
                result[k][torch.as_tensor(idx)] = v.float().cpu()
    finally:
        model.train(was[0])
        heads.train(was[1])
    return result
