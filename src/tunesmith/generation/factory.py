"""The one place a generation backend is chosen (`eval.backend`, `--backend`)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.generation.protocol import Generator

BACKENDS = ("hf", "vllm")


def make_generator(
    backend: str,
    model=None,
    tokenizer=None,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    system_prompt: str | None = None,
    *,
    model_ref: str | None = None,
    adapter_dir: str | Path | None = None,
    dtype: str = "auto",
    seed: int = 0,
    trust_remote_code: bool = False,
) -> Generator:
    """The generator of `backend`. "hf": `HFGenerator` on the model in memory (a PeftModel's adapter is its tuned state);
    "vllm": `VLLMGenerator` on `model_ref` with `adapter_dir` served as a LoRA. A missing vLLM is a
    one-line error (`VLLMUnavailable`)."""
    if backend == "vllm":
        from tunesmith.generation.vllm import VLLMGenerator

        if model_ref is None:
            raise ConfigError("the vLLM backend needs the model reference (model.name), not a loaded model")
        return VLLMGenerator(
            model_ref,
            adapter_dir,
            tokenizer=tokenizer,
            max_new_tokens=max_new_tokens,
            system_prompt=system_prompt,
            dtype=dtype,
            seed=seed,
            batch_size=max(batch_size, 256),
            trust_remote_code=trust_remote_code,
        )
    if backend != "hf":
        raise ConfigError(f"unknown generation backend '{backend}' ({' or '.join(BACKENDS)})")
    from tunesmith.generation.hf import HFGenerator

    return HFGenerator(model, tokenizer, batch_size, max_new_tokens, system_prompt)
