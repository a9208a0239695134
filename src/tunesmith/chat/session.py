"""The chat engine shared by the terminal (`tunesmith chat`), the web page and the OpenAI-compatible
endpoint (`tunesmith serve`) and the red-team run.

One turn (`ChatSession.respond`):

1. the crisis layer screens the user's message with the earlier user turns as context (before
   anything is generated); once a turn is flagged, the session stays flagged (`crisis_category`)
   and every later reply carries the resources in its metadata (`session_banner`);
2. the history is cut from the oldest exchanges until the prompt fits the model's context
   (max_position_embeddings minus max_new_tokens);
3. when the adapter has emotion/strategy heads, one forward pass of the decoder gives the hidden
   state at the last prompt token, the position the heads were trained on;
4. the reply streams from `model.generate` through a `TextIteratorStreamer` on a worker thread.

`respond` returns a `Reply` at once, with the crisis verdict, banner and head predictions already
known (a UI shows them before the first token); iterating it yields the text chunks, the banner
first when the message was flagged; after iteration it holds the full text, token counts and the
finish reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.chat.crisis import CrisisLayer, Screening
from tunesmith.data.chat import prompt_ids
from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES
from tunesmith.errors import TunesmithError
from tunesmith.generation.factory import make_generator

log = logging.getLogger(__name__)

# Appended to the system prompt of a flagged turn. It only steers the model's own words; the
# resources themselves are put in front of the reply by code and do not depend on it.
CRISIS_GUIDANCE = (
    "The user may be in crisis ({category}). Reply briefly and warmly: acknowledge how they feel, "
    "encourage them to contact the emergency services or the helplines shown above your reply, and ask "
    "whether they are safe right now. Never give information about methods of self-harm, suicide or violence."
)
FALLBACK_CONTEXT = 2048  # for configs without max_position_embeddings


class ChatError(TunesmithError):
    """Bad chat input (empty message, no room left in the context, ...)."""


@dataclass(frozen=True)
class Prediction:
    label: str
    prob: float

    def to_dict(self) -> dict:
        return {"label": self.label, "prob": round(self.prob, 4)}


@dataclass(frozen=True)
class Fitted:
    """The prompt for one turn after fitting the context budget."""

    messages: list[dict]  # history suffix + the (possibly cut) user message
    ids: list[int]
    dropped_messages: int
    truncated_user: bool


def context_limit(model, tokenizer) -> int:
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    m = getattr(tokenizer, "model_max_length", None)
    return m if isinstance(m, int) and 0 < m < 1_000_000 else FALLBACK_CONTEXT


class ChatSession:
    """A multi-turn conversation with one model (not thread-safe: one turn at a time)."""

    def __init__(
        self,
        model,
        tokenizer,
        heads=None,
        crisis: CrisisLayer | None = None,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        locale: str | None = None,
        history: list[dict] | None = None,
        context_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.1,
    ):
        if max_new_tokens < 1:
            raise ChatError("max_new_tokens must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.heads = heads
        # the crisis layer is always on; there is deliberately no switch to turn it off
        self.crisis = crisis or CrisisLayer()
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.locale = self.crisis.resources.resolve(locale).code
        # no locale given: the resources follow each message's language
        self.auto_locale = not locale
        self.history: list[dict] = [dict(m) for m in history or []]
        # category of the first flagged turn; sticky for the rest of the conversation
        self.crisis_category: str | None = self.crisis.earlier_crisis(self.history) if self.history else None
        self.context_tokens = context_tokens or context_limit(model, tokenizer)
        self.temperature, self.top_p = temperature, top_p
        # a mild penalty: greedy decoding of small models otherwise loops on a phrase
        self.repetition_penalty = repetition_penalty
        self.device = next(model.parameters()).device
        model.eval()
        if heads is not None:
            heads.to(self.device).eval()
        # replies stream from the generation backend's `stream` (HF here: the session reads the
        # model's context size and runs the heads on the same weights)
        self.generator = make_generator("hf", model, tokenizer, max_new_tokens=max_new_tokens)

    # ------------------------------------------------------------------ public API

    def set_locale(self, locale: str) -> str:
        self.locale = self.crisis.resources.resolve(locale).code
        self.auto_locale = False
        return self.locale

    def reset(self) -> None:
        self.history.clear()
        self.crisis_category = None

    def respond(
        self,
        user_text: str,
        locale: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> Reply:
        """Screen, fit, predict heads; the returned `Reply` streams the text when iterated."""
        if not isinstance(user_text, str) or not user_text.strip():
            raise ChatError("empty message")
        max_new = max_new_tokens or self.max_new_tokens
        chosen = locale or (None if self.auto_locale else self.locale)
        screening = self.crisis.screen(user_text, chosen, history=self.history, earlier_crisis=self.crisis_category)
        if screening.result.flagged and self.crisis_category is None:
            self.crisis_category = screening.result.category
        system = self.system_prompt
        if screening.result.flagged:
            note = CRISIS_GUIDANCE.format(category=screening.result.category.replace("_", " "))
            system = f"{system}\n\n{note}" if system else note
        fitted = self.fit(user_text, max_new, system)
        emotion, strategy = self._predict_heads(fitted.messages) if self.heads is not None else (None, None)
        sampling = temperature if temperature is not None else self.temperature
        return Reply(
            self,
            user_text,
            screening,
            emotion,
            strategy,
            fitted,
            max_new,
            sampling,
            top_p if top_p is not None else self.top_p,
        )

    # ------------------------------------------------------------------ context budget

    def budget(self, max_new_tokens: int | None = None) -> int:
        return self.context_tokens - (max_new_tokens or self.max_new_tokens)

    def _ids(self, messages: list[dict], system: str | None) -> list[int]:
        return prompt_ids(self.tokenizer, messages, system)

    def fit(self, user_text: str, max_new_tokens: int | None = None, system: str | None = None) -> Fitted:
        """Drop the oldest history until the prompt fits; as a last resort keep only the end of
        the user's message (its newest words matter most for the reply)."""
        budget = self.budget(max_new_tokens)
        system = system if system is not None else self.system_prompt
        user = {"role": "user", "content": user_text}
        hist = self.history
        start = 0
        while True:
            msgs = [*hist[start:], user]
            ids = self._ids(msgs, system)
            if len(ids) <= budget:
                return Fitted(msgs, ids, start, False)
            if start >= len(hist):
                break
            # drop a whole exchange (user + its reply) so the model never sees an orphan reply
            start += 2 if hist[start]["role"] == "user" and start + 1 < len(hist) else 1
        # even the message alone is too long: keep its last tokens that fit
        overhead = len(self._ids([{"role": "user", "content": ""}], system))
        room = budget - overhead
        if room < 8:
            raise ChatError(
                f"the model's context ({self.context_tokens} tokens) minus max_new_tokens "
                f"({max_new_tokens or self.max_new_tokens}) leaves no room for a message"
            )
        toks = self.tokenizer(user_text, add_special_tokens=False)["input_ids"]
        lo, hi = 1, min(len(toks), room)
        best: Fitted | None = None
        while lo <= hi:  # longest tail that fits (re-tokenisation can shift counts slightly)
            mid = (lo + hi) // 2
            msgs = [{"role": "user", "content": self.tokenizer.decode(toks[-mid:], skip_special_tokens=True)}]
            ids = self._ids(msgs, system)
            if len(ids) <= budget:
                best, lo = Fitted(msgs, ids, len(hist), True), mid + 1
            else:
                hi = mid - 1
        if best is None:
            raise ChatError("message does not fit the model's context")
        log.warning("message longer than the context budget: kept its last %d tokens", len(best.ids) - overhead)
        return best

    # ------------------------------------------------------------------ heads

    @torch.inference_mode()
    def _predict_heads(self, messages: list[dict]) -> tuple[Prediction | None, Prediction | None]:
        from tunesmith.data.chat import encode
        from tunesmith.data.schema import Example
        from tunesmith.modeling.forward import decoder_hidden

        # `encode` gives the same pool_index / user_span the heads were trained with
        enc = encode(
            self.tokenizer, Example(messages=messages), max_length=self.context_tokens, system_prompt=self.system_prompt
        )
        ids = torch.tensor([enc.input_ids], device=self.device)
        hidden = decoder_hidden(self.model, ids, torch.ones_like(ids))
        pooled = self.heads.pool(
            hidden,
            torch.tensor([enc.pool_index], device=self.device),
            torch.tensor([enc.user_span], device=self.device),
        )
        logits = self.heads(pooled.to(next(self.heads.parameters()).dtype))

        def top(name: str, labels: tuple[str, ...]) -> Prediction | None:
            if name not in logits:
                return None
            p = logits[name].float().softmax(-1)[0]
            i = int(p.argmax())
            return Prediction(labels[i], float(p[i]))

        return top("emotion", EMOTIONS), top("strategy", STRATEGIES)


class Reply:
    """One assistant turn. Metadata is available at once; iterate for the text chunks."""

    def __init__(
        self,
        session: ChatSession,
        user_text: str,
        screening: Screening,
        emotion: Prediction | None,
        strategy: Prediction | None,
        fitted: Fitted,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
    ):
        self.session = session
        self.user_text = user_text
        self.screening = screening
        self.crisis = screening.result
        self.banner = screening.banner
        self.emotion = emotion
        self.strategy = strategy
        self.fitted = fitted
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.chunks: list[str] = []
        self.model_text = ""
        self.reasoning, self.answer = "", ""  # model_text split at its think block (data.reasoning)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.done = False
        self._started = False
        self._cancel = threading.Event()
        self._stream = None

    # ------------------------------------------------------------------ properties

    @property
    def text(self) -> str:
        """Everything shown so far: banner (when flagged) + the model's words."""
        return "".join(self.chunks)

    @property
    def prompt_tokens(self) -> int:
        return len(self.fitted.ids)

    @property
    def dropped_messages(self) -> int:
        return self.fitted.dropped_messages

    def cancel(self) -> None:
        """Stop generating (client gone, Ctrl-C); the text so far is kept."""
        self._cancel.set()
        if self._stream is not None:
            self._stream.cancel()

    def metadata(self) -> dict[str, Any]:
        return {
            "crisis": self.screening.to_dict(),
            "emotion": self.emotion.to_dict() if self.emotion else None,
            "strategy": self.strategy.to_dict() if self.strategy else None,
            "dropped_messages": self.dropped_messages,
            "truncated_user_message": self.fitted.truncated_user,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }

    # ------------------------------------------------------------------ streaming

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise ChatError("a reply can be iterated only once")
        self._started = True
        parts: list[str] = []
        gen = self._generate()
        try:
            if self.banner:
                # resources first, by code, before a single token is generated
                chunk = self.banner + "\n\n"
                self.chunks.append(chunk)
                yield chunk
            leading = True
            for piece in gen:
                if not piece:  # the streamer's final flush can be empty
                    continue
                if leading:  # drop the template's leading whitespace/newline
                    piece = piece.lstrip()
                    if not piece:
                        continue
                    leading = False
                parts.append(piece)
                self.chunks.append(piece)
                yield piece
        finally:
            gen.close()  # stops and joins the generation thread if the consumer left early
            from tunesmith.data.reasoning import split_reasoning

            self.model_text = "".join(parts).strip()
            self.reasoning, self.answer = split_reasoning(self.model_text)
            if not self.done:
                self.done = True
                # the banner stays out of the history: the model need not re-read it every turn
                self.session.history += [
                    {"role": "user", "content": self.user_text},
                    {"role": "assistant", "content": self.answer},
                ]

    def consume(self) -> Reply:
        for _ in self:
            pass
        return self

    def _generate(self) -> Iterator[str]:
        s = self.session
        self._stream = s.generator.stream(
            self.fitted.ids, self.max_new_tokens, self.temperature, self.top_p, s.repetition_penalty
        )
        if self._cancel.is_set():
            self._stream.cancel()
        try:
            yield from self._stream
        finally:
            self.completion_tokens = self._stream.completion_tokens
            self.finish_reason = self._stream.finish_reason
