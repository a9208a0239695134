"""Batched greedy generation for chat prompts.

Prompts are sorted by length (less padding per batch), left-padded so every row's next token sits
in the last column, and decoded with the KV cache; results come back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


_live = 0  # rich allows one live display at a time: a bar opened inside another (the guard
           # judging inside a generation callback) stays silent


class _Bar:
    def __init__(self, progress):
        self.p = progress

    def __enter__(self):
        global _live
        _live += 1
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        global _live
        _live -= 1
        return self.p.__exit__(*exc)

    def advance(self, task, n=1):
        self.p.advance(task, n)

    def update(self, task, **k):
        self.p.update(task, **k)


def progress_bar(description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if _live:
        return _NoBar(), 0
    p = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        transient=True,
    )
    return _Bar(p), p.add_task(description, total=total)


def common_prefix_len(prompts: Sequence[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own
    (generate needs a new input token per row)."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


class Generator:
    def __init__(self, model, tokenizer, batch_size: int = 16, max_new_tokens: int = 256, system_prompt: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
        self.eos_ids = sorted(e for e in eos if e is not None)
        # below this many shared tokens, a separate prefix forward costs more than it saves
        self.min_shared_prefix = 32

    def disable_adapter(self):
        """Base-model replies inside the block (PeftModel.disable_adapter); the same call works
        on the vLLM backend's generator."""
        return self.model.disable_adapter()

    @torch.inference_mode()
    def generate_ids(self, prompts: Sequence[list[int]], max_new_tokens: int | None = None,
                     on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
                     description: str = "generating") -> list[list[int]]:
        max_new = max_new_tokens or self.max_new_tokens
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[int] | None] = [None] * len(prompts)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        bar, task = progress_bar(description, len(prompts))
        try:
            with bar:
                for b in range(0, len(order), self.batch_size):
                    idx = order[b : b + self.batch_size]
                    batch = [prompts[i] for i in idx]
                    shared = common_prefix_len(batch) if len(batch) > 1 else 0
                    cache = None
                    if shared >= self.min_shared_prefix:
                        ids, mask, cache = self._shared_prefix_inputs(batch, shared, device)
                    else:
                        ids, mask = self._left_pad(batch)
                    width = ids.shape[1]
                    gen = self.model.generate(
                        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                        do_sample=False, num_beams=1, use_cache=True, pad_token_id=self.pad_id,
                        eos_token_id=self.eos_ids, temperature=None, top_p=None, top_k=None,
                        **({"cache": cache} if cache is not None else {}),
                    )
                    new = gen[:, width:].tolist()
                    batch_out = []
                    for r, i in enumerate(idx):
                        toks = new[r]
                        cut = next((j for j, t in enumerate(toks) if t in self.eos_ids), len(toks))
                        out[i] = toks[:cut]
                        batch_out.append(toks[:cut])
                    if on_batch:
                        on_batch(idx, batch_out)
                    bar.advance(task, len(idx))
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def next_token_logits(self, prompts: Sequence[list[int]]) -> torch.Tensor:
        """Logits of the token after each prompt, shape (len(prompts), vocab)."""
        device = next(self.model.parameters()).device
        rows = []
        for b in range(0, len(prompts), self.batch_size):
            chunk = prompts[b : b + self.batch_size]
            ids, mask = self._left_pad(chunk)
            out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            rows.append(out.logits[:, -1].float().cpu())
        return torch.cat(rows)

    def _shared_prefix_inputs(self, prompts: Sequence[list[int]], shared: int, device):
        """Few-shot prompts share a long prefix (system prompt + examples): its KV cache is computed
        once and repeated over the batch. The rows become [prefix][pads][suffix] with the pads masked;
        generate derives position ids from the mask, so every token keeps the position it has
        unpadded and the replies equal the left-padded ones (tested in fp32)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        prefix = torch.tensor([prompts[0][:shared]], device=device)
        self.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(prompts))
        tails = [p[shared:] for p in prompts]
        width = max(len(t) for t in tails)
        ids = torch.full((len(prompts), shared + width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :shared] = prefix[0].cpu()
        mask[:, :shared] = 1
        for r, t in enumerate(tails):
            ids[r, shared + width - len(t):] = torch.tensor(t)
            mask[r, shared + width - len(t):] = 1
        return ids, mask, cache

    def _left_pad(self, prompts: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        return ids, mask

    def chat(self, conversations: Sequence[list[dict]], max_new_tokens: int | None = None,
             description: str = "generating", on_batch=None) -> list[str]:
        """Greedy replies to chat conversations (each a message list ending with a user turn)."""
        from tunesmith.data.chat import prompt_text
        from tunesmith.data.reasoning import THINK_OPEN, prompt_opens_think

        texts = [prompt_text(self.tokenizer, c, self.system_prompt) for c in conversations]
        prompts = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        # a template that opens the think block in the prompt (DeepSeek-R1 distills): the reply gets the tag back,
        # so split_reasoning reads an unfinished think block as reasoning, never as the answer
        opened = [THINK_OPEN if prompt_opens_think(t) else "" for t in texts]

        def text_of(i, t) -> str:
            return opened[i] + self.tokenizer.decode(t, skip_special_tokens=True).strip()

        def decoded(idx, toks):
            if on_batch:
                on_batch(idx, [text_of(i, t) for i, t in zip(idx, toks, strict=True)])

        ids = self.generate_ids(prompts, max_new_tokens, on_batch=decoded if on_batch else None, description=description)
        return [text_of(i, t) for i, t in enumerate(ids)]


def make_generator(backend: str, model=None, tokenizer=None, batch_size: int = 16, max_new_tokens: int = 256,
                   system_prompt: str | None = None, *, model_ref: str | None = None, adapter_dir=None,
                   dtype: str = "auto"):
    """The generator for `eval.backend`: "hf" = `Generator` on the model in memory; "vllm" =
    `vllm_backend.VLLMGenerator` on `model_ref` with `adapter_dir` served as a LoRA (same `.chat`
    API, and `.disable_adapter()` for base-model replies). Raises a one-line error when vllm is absent."""
    if backend == "vllm":
        from tunesmith.errors import ConfigError
        from tunesmith.evaluation.vllm_backend import VLLMGenerator

        if model_ref is None:
            raise ConfigError("the vLLM backend needs the model reference (model.name), not a loaded model")
        return VLLMGenerator(model_ref, adapter_dir, tokenizer=tokenizer, max_new_tokens=max_new_tokens,
                             system_prompt=system_prompt, dtype=dtype, batch_size=max(batch_size, 256))
    if backend != "hf":
        from tunesmith.errors import ConfigError

        raise ConfigError(f"unknown generation backend '{backend}' (hf or vllm)")
    return Generator(model, tokenizer, batch_size, max_new_tokens, system_prompt)
