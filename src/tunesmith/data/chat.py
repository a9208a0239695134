"""Chat encoding with assistant-only labels.

The conversation is rendered once with the model's own chat template and tokenized once. Each
assistant turn's character span is found by rendering the conversation up to that turn with and
without it (the template's generation prompt stays unlabelled); tokens inside those spans get
labels, every system/user/template token gets -100. This works for any template that renders
prefixes consistently (ChatML, Llama 3, Mistral, Qwen ...) without per-template code.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError

from tunesmith.data.schema import Example
from tunesmith.errors import DataError

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    # index of the last prompt token before the final assistant turn (or of the last token for
    # prompt-only examples): the hidden state that has read the whole prompt
    pool_index: int
    # token span [start, end) of the last user message, for mean pooling
    user_span: tuple[int, int]
    emotion: int | None = None
    strategy: int | None = None
    is_kl_prompt: bool = False
    source: str = ""

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat template; "
            "use an instruct/chat model or set one"
        )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        roles = sorted({m["role"] for m in messages})
        raise DataError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', 'this model')} rejects these roles "
            f"({', '.join(roles)}): {e}; drop data.system_prompt or use a template that supports them"
        ) from None


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _assistant_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if full.startswith(upto) and upto.startswith(before):
            spans.append((len(before), len(upto)))
            continue
        # Templates that rewrite earlier turns (e.g. Qwen3 dropping old <think> blocks) break
        # prefix consistency; fall back to the turn's content, located after the previous span.
        start = full.find(m["content"], spans[-1][1] if spans else 0)
        if start < 0:
            raise DataError("cannot locate an assistant turn in the rendered chat template output")
        spans.append((start, start + len(m["content"])))
    return spans


def encode(tokenizer, example: Example, max_length: int, system_prompt: str | None = None,
           train_on: str = "all") -> Encoded:
    """Tokenize an example; labels cover the assistant turns only.

    train_on="last" labels only the final assistant turn: for datasets that emit one example per
    reply with its history (ESConv, EmpatheticDialogues), earlier replies are already targets of
    their own examples and would otherwise be trained several times over.
    """
    if example.messages:
        messages = with_system(example.messages, system_prompt)
    else:  # emotion-only example: the text as a user turn
        messages = with_system([{"role": "user", "content": example.text or ""}], system_prompt)
    ends_with_assistant = messages[-1]["role"] == "assistant"
    full = render(tokenizer, messages, add_generation_prompt=not ends_with_assistant)
    spans = _assistant_spans(tokenizer, messages, full)
    if train_on == "last":
        spans = spans[-1:]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for j, (a, b) in enumerate(offsets):
        if b > a and any(s <= a and b <= e for s, e in spans):
            labels[j] = ids[j]

    # pooling: the prompt ends where the final assistant turn starts
    prompt_chars = spans[-1][0] if ends_with_assistant and spans else len(full)
    prompt_end = next((j for j, (a, _) in enumerate(offsets) if a >= prompt_chars), len(ids))
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user") if any(
        m["role"] == "user" for m in messages
    ) else None
    user_span = (0, prompt_end)
    if last_user is not None:
        content = messages[last_user]["content"]
        cstart = full.rfind(content, 0, prompt_chars) if content else -1
        if cstart >= 0:
            cend = cstart + len(content)
            toks = [j for j, (a, b) in enumerate(offsets) if a >= cstart and b <= cend and b > a]
            if toks:
                user_span = (toks[0], toks[-1] + 1)

    if len(ids) > max_length:
        # Keep the start: the prompt matters for every head; a cut reply still teaches its prefix.
        ids, labels = ids[:max_length], labels[:max_length]
    pool_index = min(max(prompt_end - 1, 0), len(ids) - 1)
    user_span = (min(user_span[0], len(ids) - 1), min(user_span[1], len(ids)))
    return Encoded(
        input_ids=ids,
        labels=labels,
        pool_index=pool_index,
        user_span=user_span,
        emotion=example.emotion,
        strategy=example.strategy,
        is_kl_prompt=example.is_kl_prompt,
        source=example.source,
    )


def prompt_ids(tokenizer, messages: list[dict], system_prompt: str | None = None) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn."""
    text = render(tokenizer, with_system(messages, system_prompt), add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (many chat models
    ship none; padded positions are masked, so the choice does not change any result)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
