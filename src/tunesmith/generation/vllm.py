"""vLLM generation backend (`eval.backend: vllm`, `tunesmith pairs --backend vllm`).

`VLLMGenerator.chat` has the same contract as `generation.Generator.chat`: greedy replies to chat
conversations, returned in the caller's order, with `on_batch(indices, texts)` called as each
chunk finishes (the resumable per-item outputs rely on it). Prompts are rendered and tokenized by
the same `prompt_ids` as the HF backend and passed to vLLM as token ids, so both backends see
byte-identical prompts.

The LoRA adapter is served by vLLM directly (`LoRARequest`), not merged: base and tuned replies
come from one engine, and `with gen.disable_adapter():` gives base-model replies the way
`with model.disable_adapter():` does for the HF backend. vLLM ignores the emotion/strategy heads;
head metrics stay on the HF model.

vLLM needs a CUDA GPU and is an optional dependency (`pip install "tunesmith[vllm]"`); without
it, constructing a `VLLMGenerator` raises `VLLMUnavailable` with that advice.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from tunesmith.data.chat import prompt_text, rendered_ids
from tunesmith.errors import TunesmithError
from tunesmith.generation.protocol import eos_token_ids, think_prefixes
from tunesmith.ui import progress_bar

# vLLM accepts these LoRA ranks only (`max_lora_rank`); an adapter's rank is rounded up
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class VLLMUnavailable(TunesmithError):
    pass


def require_vllm():
    """The vllm module, or a one-line error saying how to get it (or to use the HF backend)."""
    try:
        import vllm
    except Exception as e:  # ImportError, or a CUDA/driver error raised while importing
        raise VLLMUnavailable(
            "the vLLM backend needs the 'vllm' package and a CUDA GPU: pip install \"tunesmith[vllm]\" "
            f"(importing vllm failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "or use the default backend (eval.backend: hf / --backend hf)"
        ) from None
    return vllm


def adapter_rank(adapter_dir: str | Path) -> int:
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    ranks = [int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def vllm_lora_rank(rank: int) -> int:
    for r in VLLM_LORA_RANKS:
        if rank <= r:
            return r
    raise VLLMUnavailable(
        f"LoRA rank {rank} is above vLLM's maximum ({VLLM_LORA_RANKS[-1]}); "
        "merge the adapter (tunesmith export) and serve the merged model instead"
    )


def generation_config_eos(model_path: str | Path | None) -> int | list[int] | None:
    """The eos_token_id of a model folder's generation_config.json (HF reads the same file)."""
    gc = Path(model_path) / "generation_config.json" if model_path else None
    return json.loads(gc.read_text()).get("eos_token_id") if gc is not None and gc.is_file() else None


def engine_kwargs(
    model_path: str,
    adapter_dir: Path | None,
    dtype: str = "auto",
    seed: int = 0,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.85,
    trust_remote_code: bool = False,
) -> dict:
    """Arguments for `vllm.LLM`: LoRA enabled (and sized for the adapter) only when there is one."""
    kw: dict = {
        "model": model_path,
        "tokenizer": model_path,
        "dtype": DTYPES.get(dtype, dtype),
        "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization,
        "trust_remote_code": trust_remote_code,
    }
    if max_model_len:
        kw["max_model_len"] = max_model_len
    if adapter_dir is not None:
        kw |= {"enable_lora": True, "max_loras": 1, "max_lora_rank": vllm_lora_rank(adapter_rank(adapter_dir))}
    return kw


class VLLMGenerator:
    """Greedy chat generation with vLLM; the adapter (if any) served as a LoRARequest."""

    def __init__(
        self,
        model_ref: str,
        adapter_dir: str | Path | None = None,
        tokenizer=None,
        batch_size: int = 256,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        trust_remote_code: bool = False,
        llm=None,
    ):
        vllm = require_vllm()
        from vllm.lora.request import LoRARequest

        from tunesmith.errors import ModelError
        from tunesmith.modeling.loading import load_tokenizer, resolve

        self.adapter = Path(adapter_dir) if adapter_dir else None
        if self.adapter is not None and not (self.adapter / "adapter_config.json").is_file():
            raise ModelError(f"{self.adapter} is not an adapter folder (no adapter_config.json)")
        path, _ = resolve(model_ref)
        self.model_path = path
        self.tokenizer = tokenizer or load_tokenizer(model_ref, trust_remote_code=trust_remote_code)
        self.batch_size = batch_size  # prompts per vLLM call: the granularity of on_batch
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.seed = seed
        self.eos_ids = eos_token_ids(self.tokenizer, generation_config_eos(path if Path(path).is_dir() else None))
        self._vllm = vllm
        self.llm = (
            llm
            if llm is not None
            else vllm.LLM(
                **engine_kwargs(
                    path, self.adapter, dtype, seed, max_model_len, gpu_memory_utilization, trust_remote_code
                )
            )
        )
        self.lora_request = (
            LoRARequest("tunesmith-adapter", 1, str(self.adapter.resolve())) if self.adapter is not None else None
        )
        self._adapter_on = True
        self._lora_id = 1

    def use_adapter(self, adapter_dir) -> None:
        """Serve another saved adapter of the same rank (a checkpoint) under a new LoRA id."""
        from vllm.lora.request import LoRARequest

        if self.adapter is None:
            raise VLLMUnavailable("this vLLM engine was started without an adapter; it cannot serve one now")
        self._lora_id += 1
        self.adapter = Path(adapter_dir)
        self.lora_request = LoRARequest(
            f"tunesmith-adapter-{self._lora_id}", self._lora_id, str(self.adapter.resolve())
        )

    def stream(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> VLLMStream:
        return VLLMStream(self, prompt_ids, max_new_tokens, temperature, top_p, repetition_penalty)

    @contextlib.contextmanager
    def disable_adapter(self):
        """Base-model replies inside the block (no LoRARequest), like PeftModel.disable_adapter."""
        was, self._adapter_on = self._adapter_on, False
        try:
            yield
        finally:
            self._adapter_on = was

    @property
    def active_lora(self):
        return self.lora_request if self._adapter_on else None

    def sampling_params(
        self,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ):
        # temperature 0 = greedy in vLLM; stop on every EOS id the HF backend stops on
        return self._vllm.SamplingParams(
            n=1,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            max_tokens=max_new_tokens,
            stop_token_ids=self.eos_ids,
            skip_special_tokens=True,
            repetition_penalty=repetition_penalty,
            seed=seed if temperature > 0 else None,
        )

    def requests(self, conversations: Sequence[list[dict]]) -> list[dict]:
        return self._requests([prompt_text(self.tokenizer, c, self.system_prompt) for c in conversations])

    def _requests(self, prompt_texts: Sequence[str]) -> list[dict]:
        # from texts rendered once: chat also reads them for think tags
        return [{"prompt_token_ids": rendered_ids(self.tokenizer, t)} for t in prompt_texts]

    def chat(
        self,
        conversations: Sequence[list[dict]],
        max_new_tokens: int | None = None,
        description: str = "generating",
        on_batch: Callable[[list[int], list[str]], None] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """Replies to chat conversations (each a message list ending with a user turn); greedy
        unless `temperature` > 0 (then seeded sampling, for extra DPO candidates)."""
        texts = [prompt_text(self.tokenizer, c, self.system_prompt) for c in conversations]
        reqs, opened = self._requests(texts), think_prefixes(texts)
        params = self.sampling_params(
            max_new_tokens or self.max_new_tokens, temperature, self.seed if seed is None else seed
        )
        out: list[str] = [""] * len(reqs)
        bar, task = progress_bar(description, len(reqs))
        with bar:
            for start in range(0, len(reqs), self.batch_size):
                chunk = reqs[start : start + self.batch_size]
                results = self.llm.generate(chunk, params, lora_request=self.active_lora, use_tqdm=False)
                idx = list(range(start, start + len(chunk)))
                texts = [opened[i] + (r.outputs[0].text.strip() if r.outputs else "") for i, r in zip(idx, results)]
                for i, t in zip(idx, texts, strict=True):
                    out[i] = t
                if on_batch:
                    on_batch(idx, texts)
                bar.advance(task, len(chunk))
        return out


class VLLMStream:
    """One reply from vLLM. The offline engine returns a request whole, so the text arrives as one
    piece; `tunesmith serve` streams token by token on the HF backend."""

    def __init__(
        self,
        gen: VLLMGenerator,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
    ):
        self.gen, self.prompt_ids, self.max_new_tokens = gen, prompt_ids, max_new_tokens
        self.params = gen.sampling_params(max_new_tokens, temperature, gen.seed, top_p, repetition_penalty)
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def __iter__(self):
        if self._cancelled:
            self.finish_reason = "cancelled"
            return
        out = self.gen.llm.generate(
            [{"prompt_token_ids": self.prompt_ids}], self.params, lora_request=self.gen.active_lora, use_tqdm=False
        )[0].outputs[0]
        self.completion_tokens = len(out.token_ids)
        self.finish_reason = "length" if out.finish_reason == "length" else "stop"
        yield out.text
