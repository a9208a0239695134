"""Batched greedy generation for chat prompts.

Prompts are sorted by length (less padding per batch), left-padded so every row's next token sits
in the last column, and decoded with the KV cache; results come back in the caller's order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from tunesmith.data.chat import pad_token_id, prompt_text
from tunesmith.generation.protocol import eos_token_ids, think_prefixes
from tunesmith.ui import progress_bar


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


class HFGenerator:
    """Generation with transformers on the model in memory (PeftModel or plain)."""

    def __init__(
        self, model, tokenizer, batch_size: int = 16, max_new_tokens: int = 256, system_prompt: str | None = None
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.pad_id = pad_token_id(tokenizer)
        self.eos_ids = eos_token_ids(
            tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        )
        # below this many shared tokens, a separate prefix forward costs more than it saves
        self.min_shared_prefix = 32

    def disable_adapter(self):
        """Base-model replies inside the block (PeftModel.disable_adapter); a plain model has no
        adapter to switch off."""
        if hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def use_adapter(self, adapter_dir) -> None:
        """Load a saved adapter's LoRA weights (a checkpoint of the same shape) into the model."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(Path(adapter_dir) / "adapter_model.safetensors"))

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: Sequence[list[int]],
        max_new_tokens: int | None = None,
        on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
        description: str = "generating",
        sampling: dict | None = None,
    ) -> list[list[int]]:
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
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        max_new_tokens=max_new,
                        num_beams=1,
                        use_cache=True,
                        pad_token_id=self.pad_id,
                        eos_token_id=self.eos_ids,
                        **(sampling or {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}),
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
            ids[r, shared + width - len(t) :] = torch.tensor(t)
            mask[r, shared + width - len(t) :] = 1
        return ids, mask, cache

    def _left_pad(self, prompts: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        return ids, mask

    def chat(
        self,
        conversations: Sequence[list[dict]],
        max_new_tokens: int | None = None,
        description: str = "generating",
        on_batch=None,
        temperature: float = 0.0,
        seed: int | None = None,
        top_p: float = 0.95,
    ) -> list[str]:
        """Replies to chat conversations (each a message list ending with a user turn): greedy, or
        sampled with `temperature` > 0 (nucleus `top_p`, seeded)."""
        texts = [prompt_text(self.tokenizer, c, self.system_prompt) for c in conversations]
        prompts = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        opened = think_prefixes(texts)

        def text_of(i, t) -> str:
            return opened[i] + self.tokenizer.decode(t, skip_special_tokens=True).strip()

        def decoded(idx, toks):
            if on_batch:
                on_batch(idx, [text_of(i, t) for i, t in zip(idx, toks, strict=True)])

        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else None
        )
        if sampling:
            torch.manual_seed(0 if seed is None else seed)
        ids = self.generate_ids(
            prompts, max_new_tokens, on_batch=decoded if on_batch else None, description=description, sampling=sampling
        )
        return [text_of(i, t) for i, t in enumerate(ids)]

    def stream(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> HFStream:
        return HFStream(self, prompt_ids, max_new_tokens, temperature, top_p, repetition_penalty)


class HFStream:
    """One reply generated on a worker thread and read through transformers' TextIteratorStreamer;
    closing the iterator early (a client that left) stops the model at its next token."""

    def __init__(
        self,
        gen: HFGenerator,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
    ):
        self.gen, self.prompt_ids, self.max_new_tokens = gen, prompt_ids, max_new_tokens
        self.temperature, self.top_p, self.repetition_penalty = temperature, top_p, repetition_penalty
        self._cancel = threading.Event()
        self.completion_tokens = 0
        self.finish_reason = "stop"

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        g, cancel = self.gen, self._cancel

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(g.tokenizer, skip_prompt=True, skip_special_tokens=True)
        device = next(g.model.parameters()).device
        ids = torch.tensor([self.prompt_ids], device=device)
        sample = self.temperature > 0
        kwargs = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=self.max_new_tokens,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            pad_token_id=g.pad_id,
            eos_token_id=g.eos_ids,
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_p=self.top_p if sample else None,
            top_k=None,
            repetition_penalty=self.repetition_penalty,
            num_beams=1,
            use_cache=True,
        )
        result: dict = {}

        def work() -> None:
            try:
                with torch.inference_mode():
                    out = g.model.generate(**kwargs)
                result["new"] = out[0, ids.shape[1] :].tolist()
            except BaseException as e:  # handed to the consumer below
                result["error"] = e
                streamer.end()  # unblock the consumer

        worker = threading.Thread(target=work, name="tunesmith-generate", daemon=True)
        worker.start()
        finished = False
        try:
            yield from streamer
            finished = True
        finally:
            if not finished:  # consumer stopped early (closed generator): stop the model too
                cancel.set()
            worker.join()
        if "error" in result:
            raise result["error"]
        new = result.get("new", [])
        cut = next((j for j, t in enumerate(new) if t in g.eos_ids), None)
        self.completion_tokens = len(new) if cut is None else cut
        if cancel.is_set():
            self.finish_reason = "cancelled"
        elif cut is None and len(new) >= self.max_new_tokens:
            self.finish_reason = "length"
        else:
            self.finish_reason = "stop"
