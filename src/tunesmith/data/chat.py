"""Chat encoding with assistant-only labels, for any chat template.

The conversation is rendered once with the model's chat template and tokenized once. The labels of each trained
assistant turn are its reply (with its reasoning where the template renders it) plus the template's end-of-turn
text (`<|im_end|>\\n`, `<|eot_id|>`, `<end_of_turn>\\n`, `</s>`, `<|end|>\\n` ...); system, user and header text,
and scaffolding the template adds on its own (Qwen3's empty think block), stay -100.

The end-of-turn text is learned once per template from a rendering with sentinel contents: what the template
writes after an assistant reply both before the next user turn and at the end of the conversation. Each turn is
then found in the final rendering itself (its reply followed by that end-of-turn text, searched after the previous
turn), not by rendering prefixes: templates that rewrite earlier turns (Qwen3 drops old think blocks and adds an
empty one after the last user message) or move the system text (Mistral puts it into the last user turn) do not
render prefixes consistently.

Templates without a system role (Gemma 2) get the system prompt folded into the first user turn, as Gemma 3's
template does itself (`data.system_prompt_fallback: fold`, the default), or raise (`error`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from tunesmith.data.reasoning import THINK_OPEN, message_reasoning
from tunesmith.data.schema import Example
from tunesmith.errors import ConfigError, DataError

IGNORE = -100
SYSTEM_FALLBACKS = ("fold", "error")
_SENT = "tunesmithSentinel{}x"  # no whitespace: survives `| trim`; plain ASCII: no template escapes it


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or "this model"


# ---- template setup (load_tokenizer calls this) ---------------------------------------------
def _jinja_literal(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_jinja_literal(str(k))}: {_jinja_literal(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"model.chat_template_kwargs: cannot pass a {type(value).__name__} to a chat template")


def bind_template_kwargs(template: str, kwargs: dict) -> str:
    """The template with `kwargs` set at its top: every render of it (ours, TRL's, vLLM's, a saved tokenizer's)
    sees them, as if each apply_chat_template call passed them."""
    head = []
    for k, v in kwargs.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)):
            raise ConfigError(f"model.chat_template_kwargs: '{k}' is not a template variable name")
        head.append("{%- set " + k + " = " + _jinja_literal(v) + " %}")
    return "".join(head) + template


def read_template(path: str | os.PathLike) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.chat_template: file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError(f"data.chat_template: {p} is empty")
    return text


def configure_chat(
    tokenizer,
    template: str | os.PathLike | None = None,
    template_kwargs: dict | None = None,
    system_fallback: str = "fold",
):
    """Set the tokenizer's chat template (a `.jinja` path replaces the model's own), bind the template kwargs
    (e.g. `{enable_thinking: false}`) and the system-prompt fallback; records what was used in
    `tokenizer.tunesmith_chat` (source, sha256 of the template text, kwargs)."""
    if system_fallback not in SYSTEM_FALLBACKS:
        raise ConfigError(
            f"data.system_prompt_fallback: '{system_fallback}' is not one of {', '.join(SYSTEM_FALLBACKS)}"
        )
    source = "model"
    if template is not None:
        tokenizer.chat_template = read_template(template)
        source = str(template)
    base = getattr(tokenizer, "chat_template", None)
    if isinstance(base, str) and template_kwargs:
        tokenizer.chat_template = bind_template_kwargs(base, dict(template_kwargs))
    elif isinstance(base, dict) and template_kwargs:  # named templates (default, tool_use, ...)
        tokenizer.chat_template = {k: bind_template_kwargs(v, dict(template_kwargs)) for k, v in base.items()}
    tokenizer.tunesmith_system_fallback = system_fallback
    tokenizer.tunesmith_chat = {
        "source": source if base else None,
        "sha256": hashlib.sha256(str(base).encode()).hexdigest() if base else None,
        "kwargs": dict(template_kwargs or {}),
        "system_prompt_fallback": system_fallback,
    }
    return tokenizer


# ---- rendering ------------------------------------------------------------------------------
def _apply(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


_SYSTEM_SUPPORT: dict[tuple, str | None] = {}  # template key -> None (system role works) or the template's error


def _key(tokenizer) -> tuple:
    return (str(tokenizer.chat_template), tokenizer.bos_token, tokenizer.eos_token)


def _system_error(tokenizer) -> str | None:
    key = _key(tokenizer)
    if key not in _SYSTEM_SUPPORT:
        try:
            _apply(
                tokenizer,
                [{"role": "system", "content": _SENT.format("s")}, {"role": "user", "content": _SENT.format("u")}],
                True,
            )
            _SYSTEM_SUPPORT[key] = None
        except TemplateError as e:
            _SYSTEM_SUPPORT[key] = str(e)
    return _SYSTEM_SUPPORT[key]


def fit_system(tokenizer, messages: list[dict]) -> list[dict]:
    """Messages the template accepts: a system turn for a template without a system role is folded into the
    first user turn ("system\\n\\nuser", Gemma 3's own convention) or, with the fallback `error`, raises."""
    if not messages or messages[0]["role"] != "system":
        return messages
    err = _system_error(tokenizer)
    if err is None:
        return messages
    if getattr(tokenizer, "tunesmith_system_fallback", "fold") == "error":
        raise DataError(
            f"the chat template of {_name(tokenizer)} has no system role ({err}); drop data.system_prompt or set "
            "data.system_prompt_fallback: fold to put it into the first user turn"
        )
    system, rest = messages[0]["content"], list(messages[1:])
    for i, m in enumerate(rest):
        if m["role"] == "user":
            rest[i] = {**m, "content": f"{system}\n\n{m['content']}" if m["content"] else system}
            return rest
    return [{"role": "user", "content": system}, *rest]


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer of {_name(tokenizer)} has no chat template; use an instruct/chat model or set "
            "data.chat_template to a .jinja file"
        )
    messages = fit_system(tokenizer, messages)
    try:
        return _apply(tokenizer, messages, add_generation_prompt)
    except TemplateError as e:
        roles = sorted({m["role"] for m in messages})
        raise DataError(
            f"the chat template of {_name(tokenizer)} rejects these roles "
            f"({', '.join(roles)}): {e}; drop data.system_prompt or use a template that supports them"
        ) from None


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


# ---- finding the labelled spans -------------------------------------------------------------
_TURN_END: dict[tuple, str] = {}


def turn_end(tokenizer) -> str:
    """The text the template writes after every assistant reply (its end-of-turn token(s) and the newline that
    belongs to them): the common start of what follows a reply before the next user turn and at the end."""
    key = _key(tokenizer)
    if key not in _TURN_END:
        s = {r: _SENT.format(r) for r in ("u1", "a1", "u2", "a2")}
        msgs = [
            {"role": "user", "content": s["u1"]},
            {"role": "assistant", "content": s["a1"]},
            {"role": "user", "content": s["u2"]},
            {"role": "assistant", "content": s["a2"]},
        ]
        try:
            text = _apply(tokenizer, msgs, False)
        except TemplateError as e:
            raise DataError(
                f"the chat template of {_name(tokenizer)} cannot render a user/assistant conversation: {e}"
            ) from None
        a1, u2, a2 = (text.find(s[r]) for r in ("a1", "u2", "a2"))
        if min(a1, u2, a2) < 0:
            raise DataError(f"the chat template of {_name(tokenizer)} does not render message contents verbatim")
        between = text[a1 + len(s["a1"]) : u2]
        tail = text[a2 + len(s["a2"]) :]
        end = _common_token_prefix(tokenizer, between, tail)
        if not end.strip():
            raise DataError(
                f"the chat template of {_name(tokenizer)} writes no end-of-turn marker after an assistant reply, so a "
                "tuned model would not learn to stop; set data.chat_template to a template that ends each turn"
            )
        _TURN_END[key] = end
    return _TURN_END[key]


def _common_token_prefix(tokenizer, a: str, b: str) -> str:
    """The longest common start of `a` and `b` that ends on a token boundary in both (Phi-3: "<|end|>\n<|user|>"
    and "<|end|>\n<|endoftext|>" share "<|end|>\n", not "<|end|>\n<|")."""
    ea = tokenizer(a, add_special_tokens=False, return_offsets_mapping=True)
    eb = tokenizer(b, add_special_tokens=False, return_offsets_mapping=True)
    n = 0
    for x, y in zip(ea["input_ids"], eb["input_ids"]):
        if x != y:
            break
        n += 1
    return a[: ea["offset_mapping"][n - 1][1]] if n else ""


def _variants(text: str) -> list[str]:
    """The forms a template may render a content in (verbatim, `| trim`, Qwen3's lstrip), longest first."""
    out = []
    for v in (text, text.strip(), text.lstrip(), text.rstrip()):
        if v and v not in out:
            out.append(v)
    return out


def _find(full: str, text: str, start: int, stop: int | None = None) -> tuple[int, int] | None:
    best = None
    for v in _variants(text):
        p = full.find(v, start, len(full) if stop is None else stop)
        if p >= 0 and (best is None or p < best[0]):
            best = (p, p + len(v))
    return best


def _find_reply(full: str, answer: str, end: str, start: int) -> tuple[int, int] | None:
    """First place at or after `start` where the reply is followed by the end-of-turn text: (reply start, end of
    the end-of-turn text)."""
    best = None
    for v in _variants(answer):
        p = full.find(v, start)
        while p >= 0:
            q = p + len(v)
            while q < len(full) and full[q].isspace() and not full.startswith(end, q):
                q += 1
            if full.startswith(end, q):
                if best is None or p < best[0]:
                    best = (p, q + len(end))
                break
            p = full.find(v, p + 1)
    if not answer.strip():  # an empty reply: its end-of-turn text alone
        q = full.find(end, start)
        if q >= 0 and (best is None or q < best[0]):
            best = (q, q + len(end))
    return best


def assistant_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Character span of each assistant turn's labels in the final rendering `full`."""
    end = turn_end(tokenizer)
    spans, cursor = [], 0
    for m in messages:
        if m["role"] == "system":  # templates move it (Mistral: into the last user turn); never a cursor
            continue
        if m["role"] != "assistant":
            found = _find(full, m.get("content") or "", cursor) if m.get("content") else None
            if found:
                cursor = found[1]
            continue
        reasoning, answer = message_reasoning(m)
        span = _find_reply(full, answer, end, cursor)
        if span is None:
            raise DataError(
                f"cannot locate an assistant reply followed by the end-of-turn text {end!r} in the rendering of "
                f"the chat template of {_name(tokenizer)}: {answer[:60]!r}"
            )
        start = span[0]
        if reasoning.strip():  # rendered only where the template keeps it (Qwen3: after the last user turn)
            r = _find(full, reasoning, cursor, start)
            if r is not None:
                tag = full.rfind(THINK_OPEN, cursor, r[0])
                start = tag if tag >= 0 else r[0]
        spans.append((start, span[1]))
        cursor = span[1]
    return spans


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


def _in_span(full: str, a: int, b: int, spans: list[tuple[int, int]]) -> bool:
    """A token is a label when it overlaps a span and what it holds outside the span is whitespace only (a
    sentencepiece/byte-level token carries the space before a word: Mistral's " " + reply)."""
    for s, e in spans:
        if a < e and b > s and (a >= s or full[a:s].isspace()) and (b <= e or full[e:b].isspace()):
            return True
    return False


def encode(
    tokenizer, example: Example, max_length: int, system_prompt: str | None = None, train_on: str = "all"
) -> Encoded:
    """Tokenize an example; labels cover the assistant turns only (reply + end-of-turn text).

    train_on="last" labels only the final assistant turn: for datasets that emit one example per
    reply with its history (ESConv, EmpatheticDialogues), earlier replies are already targets of
    their own examples and would otherwise be trained several times over.
    """
    if example.messages:
        messages = with_system(example.messages, system_prompt)
    else:  # emotion-only example: the text as a user turn
        messages = with_system([{"role": "user", "content": example.text or ""}], system_prompt)
    messages = fit_system(tokenizer, messages)
    ends_with_assistant = messages[-1]["role"] == "assistant"
    full = render(tokenizer, messages, add_generation_prompt=not ends_with_assistant)
    spans = assistant_spans(tokenizer, messages, full)
    if train_on == "last":
        spans = spans[-1:]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for j, (a, b) in enumerate(offsets):
        if b > a and _in_span(full, a, b, spans):
            labels[j] = ids[j]

    # pooling: the prompt ends where the final assistant turn starts
    prompt_chars = spans[-1][0] if ends_with_assistant and spans else len(full)
    # (a reply's first token may start at the space before it: Mistral's " " + reply)
    prompt_end = next(
        (
            j
            for j, (a, b) in enumerate(offsets)
            if a >= prompt_chars or (b > prompt_chars and full[a:prompt_chars].isspace())
        ),
        len(ids),
    )
    last_user = (
        max(i for i, m in enumerate(messages) if m["role"] == "user")
        if any(m["role"] == "user" for m in messages)
        else None
    )
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


def prompt_text(tokenizer, messages: list[dict], system_prompt: str | None = None) -> str:
    """A conversation rendered ready for the assistant's next turn."""
    return render(tokenizer, with_system(messages, system_prompt), add_generation_prompt=True)


def prompt_ids(tokenizer, messages: list[dict], system_prompt: str | None = None) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn."""
    return rendered_ids(tokenizer, prompt_text(tokenizer, messages, system_prompt))


def rendered_ids(tokenizer, text: str) -> list[int]:
    """Token ids of an already rendered prompt (the template put in the special tokens)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (many chat models
    ship none; padded positions are masked, so the choice does not change any result)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
