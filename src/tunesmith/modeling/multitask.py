"""The multi-task model at inference: LM + LoRA adapter + emotion/strategy heads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.data.chat import Encoded
from tunesmith.modeling.heads import Heads


def causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
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
def head_logits(model, heads: Heads, features: list[Encoded], pad_id: int, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Emotion/strategy logits for encoded examples (right-padded batches, pooled per row)."""
    from tunesmith.training.trainer import collate, sorted_batches

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


def load_for_inference(adapter_dir: str | Path | None, model_ref: str | None = None, dtype: str = "auto",
                       trust_remote_code: bool = False):
    """(model, tokenizer, heads or None) for a base model plus an optional adapter folder.

    Without `model_ref`, the base model is the one the adapter was trained from (read from the run's
    config_resolved.json, else the adapter's own base_model_name_or_path).
    """
    from peft import PeftModel

    from tunesmith.errors import ModelError
    from tunesmith.modeling.loading import load_model, load_tokenizer

    adapter = Path(adapter_dir) if adapter_dir else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not an adapter folder (no adapter_config.json)")
    if model_ref is None:
        if adapter is None:
            raise ModelError("give a model reference or an adapter folder")
        run_cfg = adapter.parent / "config_resolved.json"
        if run_cfg.is_file():
            model_ref = json.loads(run_cfg.read_text())["model"]["name"]
        else:
            model_ref = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = load_tokenizer(model_ref, trust_remote_code=trust_remote_code)
    model = load_model(model_ref, dtype, trust_remote_code=trust_remote_code)
    heads = None
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
        heads = Heads.load(adapter)
    model.eval()
    return model, tok, heads
