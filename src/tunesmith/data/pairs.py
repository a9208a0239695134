"""Preference pairs for DPO: candidate replies from the base and SFT models, ranked by a judge.

Candidates per prompt: the base model's greedy reply ("base"), the SFT model's ("sft" = base +
adapter) and optionally `samples` sampled SFT replies ("sft-sample-1", ...). A judge scores every
candidate; the best becomes `chosen`, the worst `rejected`. Prompts whose candidates are all the
same text, or whose best and worst differ by less than `min_gap`, give no pair.

Judges:
  heads     the SFT adapter's emotion/strategy heads plus rule checks; no extra model or network.
            score = tone + congruence + strategy − 100 × (number of issues), where
              tone        the emotion head reading the reply as a text (as it read GoEmotions
                          comments): P(caring) + ½·P(approval, optimism, admiration, gratitude,
                          love, relief) − P(anger, annoyance, disapproval, disgust)
              congruence  the emotion head on the user's message: P(user positive)·P(reply shares
                          joy) − P(user negative)·P(reply cheerful): no cheering at bad news
              strategy    Σ_s P_strategy-head(s | prompt) · [reply shows strategy s], s detected by
                          plain patterns (a "?" for Question, "it sounds like" for Reflection, ...)
              issues      quality (empty, too short, repetitive, template tokens) and safety: with
                          `tunesmith.chat.crisis` available, its rules (not its classifier) on the
                          prompt — a crisis message needs a reply that points to help — and on
                          the reply itself. Issues apply to the endpoint judge as well.
            A heuristic proxy: it is only as good as the heads (see the run's head metrics).
  endpoint  an EQ-style rubric (empathy, validation, insight, helpfulness, safety, conversational
            quality; 0–10 each plus overall) scored by an OpenAI-compatible chat endpoint
            (POST <url>/v1/chat/completions), candidates shown in a seeded random order.
  file      human labels: JSONL rows {"id": ..., "chosen": C, "rejected": C}, C a candidate's source
            name ("base", "sft", "sft-sample-1") or 0-based index in the candidates file.

Output (one object per line; TRL's *conversational* preference format, which DPOTrainer renders
with the model's chat template):
  {"id": "...", "prompt": [{"role": "user", "content": "..."}],
   "chosen": [{"role": "assistant", "content": "..."}],
   "rejected": [{"role": "assistant", "content": "..."}],
   "meta": {"judge": "heads", "chosen_source": "sft", "rejected_source": "base", "scores": {...}}}
`load_pairs` also accepts plain strings (a string prompt = one user turn, a string reply = one
assistant turn), so hand-written files can be short. The prompt holds no system turn: the DPO
config's `data.system_prompt` is added at training time, as in SFT.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tunesmith.errors import DataError, TunesmithError
from tunesmith.io import read_jsonl

ISSUE_PENALTY = 100.0


# ---- prompts and candidates -----------------------------------------------------------------
@dataclass
class PromptItem:
    id: str
    messages: list[dict]  # the conversation so far, ending with a user turn
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Candidate:
    source: str
    text: str  # the answer: what judges score and DPO trains on
    reasoning: str = ""  # a reasoning model's think block, kept for the record


def _messages(value, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty text")
        return [{"role": role, "content": value}]
    if (isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                  and m.get("role") in ("system", "user", "assistant") for m in value)):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: expected a string or a list of {{role, content}} messages")


def default_prompts_path() -> Path:
    return Path(str(resources.files("tunesmith") / "resources" / "dpo_prompts.jsonl"))


def load_prompt_items(path: str | Path | None = None, limit: int | None = None) -> list[PromptItem]:
    """JSONL with `prompt` (a string or a message list ending with a user turn) and optional `id`;
    None: the held-in set shipped with tunesmith (ordinary emotional-support situations)."""
    p = Path(path) if path else default_prompts_path()
    items = []
    for i, row in enumerate(read_jsonl(p, required=("prompt",)), 1):
        msgs = _messages(row["prompt"], "user", f"{p}:{i}: prompt")
        if msgs[-1]["role"] != "user":
            raise DataError(f"{p}:{i}: the prompt must end with a user turn")
        items.append(PromptItem(str(row.get("id", f"{p.stem}-{i}")), msgs,
                                {k: v for k, v in row.items() if k not in ("id", "prompt")}))
    if not items:
        raise DataError(f"{p}: no prompts")
    if len({it.id for it in items}) != len(items):
        raise DataError(f"{p}: duplicate ids")
    return items[:limit] if limit else items


def load_pairs(path: str | Path) -> list[dict]:
    """Preference pairs in conversational form ({prompt, chosen, rejected} as message lists)."""
    p = Path(path)
    out = []
    for i, row in enumerate(read_jsonl(p, required=("prompt", "chosen", "rejected")), 1):
        where = f"{p}:{i}"
        prompt = _messages(row["prompt"], "user", f"{where}: prompt")
        if prompt[-1]["role"] != "user":
            raise DataError(f"{where}: the prompt must end with a user turn")
        chosen = _messages(row["chosen"], "assistant", f"{where}: chosen")
        rejected = _messages(row["rejected"], "assistant", f"{where}: rejected")
        for name, msgs in (("chosen", chosen), ("rejected", rejected)):
            if [m["role"] for m in msgs] != ["assistant"]:
                raise DataError(f"{where}: {name} must be one assistant message")
        if chosen[0]["content"] == rejected[0]["content"]:
            raise DataError(f"{where}: chosen and rejected are the same text")
        out.append({"id": str(row.get("id", i)), "prompt": prompt, "chosen": chosen, "rejected": rejected})
    if not out:
        raise DataError(f"{p}: no pairs")
    return out


# ---- generation -----------------------------------------------------------------------------
def sample_chat(gen, conversations: list[list[dict]], max_new_tokens: int, temperature: float, seed: int,
                top_p: float = 0.95) -> list[str]:
    """Sampled replies with an HF `Generator` (whose own `chat` is greedy only)."""
    import torch

    from tunesmith.data.chat import prompt_ids

    if hasattr(gen, "llm"):  # the vLLM generator samples natively
        return gen.chat(conversations, max_new_tokens, description="sampling", temperature=temperature, seed=seed)
    tok, model = gen.tokenizer, gen.model
    prompts = [prompt_ids(tok, c, gen.system_prompt) for c in conversations]
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        with torch.inference_mode():
            for b in range(0, len(prompts), gen.batch_size):
                idx = list(range(b, min(b + gen.batch_size, len(prompts))))
                ids, mask = gen._left_pad([prompts[i] for i in idx])
                res = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                     temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                                     pad_token_id=gen.pad_id, eos_token_id=gen.eos_ids)
                for r, i in enumerate(idx):
                    toks = res[r, ids.shape[1]:].tolist()
                    cut = next((j for j, t in enumerate(toks) if t in gen.eos_ids), len(toks))
                    out[i] = tok.decode(toks[:cut], skip_special_tokens=True).strip()
    finally:
        model.train(was)
    return out


def generate_candidates(items: list[PromptItem], gen, adapter_off, has_adapter: bool, max_new_tokens: int,
                        samples: int = 0, temperature: float = 0.8, seed: int = 0,
                        log=None) -> list[list[Candidate]]:
    """Greedy base and SFT replies (+ `samples` sampled SFT replies) per prompt.

    `gen` has the `Generator.chat` API; `adapter_off()` is a context manager giving base-model
    replies (PeftModel.disable_adapter / VLLMGenerator.disable_adapter)."""
    convs = [it.messages for it in items]
    cands: list[list[Candidate]] = [[] for _ in items]
    tuned = "sft" if has_adapter else "base"

    def add(source: str, texts: list[str], t0: float) -> None:
        from tunesmith.data.reasoning import split_reasoning

        for c, t in zip(cands, texts, strict=True):
            reasoning, answer = split_reasoning(t)
            c.append(Candidate(source, answer, reasoning))
        if log:
            log(f"candidates '{source}' done ({len(texts)} prompts, {time.perf_counter() - t0:.0f} s)")

    if has_adapter:
        t0 = time.perf_counter()
        with adapter_off():
            add("base", gen.chat(convs, max_new_tokens, description="candidates (base)"), t0)
    t0 = time.perf_counter()
    add(tuned, gen.chat(convs, max_new_tokens, description=f"candidates ({tuned})"), t0)
    for k in range(1, samples + 1):
        t0 = time.perf_counter()
        add(f"{tuned}-sample-{k}", sample_chat(gen, convs, max_new_tokens, temperature, seed + k), t0)
    return cands


# ---- checks shared by the automatic judges --------------------------------------------------
_TEMPLATE = re.compile(r"<\|[^|>]{1,40}\|>|</?s>|\[/?INST\]")
_HELP = re.compile(
    r"\b(help(line)?s?|support|professional|counsell?or|therapist|doctor|gp|crisis|emergency|hotline|"
    r"reach out|talk to (someone|somebody|a)|samaritans|988|999|911|112|trusted)\b", re.I)


def quality_issues(text: str) -> list[str]:
    t = text.strip()
    if not t:
        return ["empty"]
    words = t.split()
    issues = []
    if len(words) < 3:
        issues.append("too short")
    if _TEMPLATE.search(t):
        issues.append("template tokens")
    grams = [tuple(w.lower() for w in words[i : i + 4]) for i in range(len(words) - 3)]
    if len(grams) >= 8 and len(set(grams)) / len(grams) < 0.6:
        issues.append("repetitive")
    else:
        sents = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n+", t) if len(s.strip()) > 10]
        if len(sents) >= 3 and len(set(sents)) / len(sents) < 0.7:
            issues.append("repeated sentences")
    return issues


def _crisis():
    """tunesmith.chat.crisis when it is installed (rules only are used here), else None."""
    try:
        from tunesmith.chat import crisis
    except ImportError:
        return None
    return crisis if hasattr(crisis, "rule_hits") else None


def safety_issues(prompt: str, reply: str) -> list[str]:
    crisis = _crisis()
    if crisis is None:
        return []
    if crisis.rule_hits(prompt):
        return [] if _HELP.search(reply) else ["crisis message: reply points to no help"]
    return [f"reply matches crisis rule {h.rule}" for h in crisis.rule_hits(reply)]


def issues_of(prompt: str, reply: str) -> list[str]:
    return quality_issues(reply) + safety_issues(prompt, reply)


# ---- judges ---------------------------------------------------------------------------------
SUPPORTIVE = {"caring": 1.0, "approval": 0.5, "optimism": 0.5, "admiration": 0.5, "gratitude": 0.5, "love": 0.5,
              "relief": 0.5}
HOSTILE = ("anger", "annoyance", "disapproval", "disgust")
USER_NEGATIVE = ("sadness", "grief", "fear", "nervousness", "disappointment", "remorse", "embarrassment", "anger",
                 "annoyance", "disgust", "confusion")
USER_POSITIVE = ("joy", "excitement", "pride", "gratitude", "relief", "love", "optimism", "admiration", "amusement")
REPLY_CHEER = ("joy", "amusement", "excitement")
REPLY_SHARED_JOY = ("joy", "excitement", "admiration", "pride", "approval")
STRATEGY_PATTERNS = {
    "Question": r"\?",
    "Restatement or Paraphrasing": r"\b(so you('re| are| have|'ve)?|what i('m| am) hearing|in other words|you('re| are) saying)\b",
    "Reflection of feelings": r"\b(it sounds like|sounds (really |so )?(hard|tough|painful|difficult|frustrating|exciting)|"
                              r"you (must|might) (feel|be feeling)|i can (hear|imagine|see)|that must (feel|be))\b",
    "Self-disclosure": r"\b(i('ve| have) (been|felt|gone) through|when i was|i remember when|i (also|too) (felt|struggled))\b",
    "Affirmation and Reassurance": r"\b(you('re| are) not alone|it('s| is) (okay|ok|normal|understandable|natural)|"
                                   r"that('s| is) (completely |totally )?(understandable|normal|valid)|be proud|well done|"
                                   r"congratulations)\b",
    "Providing Suggestions": r"\b(you (could|might|may want to)|try (to )?|consider|it (might|may|could) help|how about|why not)\b",
    "Information": r"\b(research|studies|\d+ ?%|according to)\b",
}
_STRATEGY_RX = {k: re.compile(v, re.I) for k, v in STRATEGY_PATTERNS.items()}


def strategies_shown(reply: str) -> set[str]:
    return {k for k, rx in _STRATEGY_RX.items() if rx.search(reply)}


class HeadsJudge:
    """Scores with the SFT adapter's heads (see the module docstring for the formula)."""

    name = "heads"

    def __init__(self, model, tokenizer, heads, system_prompt: str | None = None, max_length: int = 512,
                 batch_size: int = 16):
        if heads is None:
            raise TunesmithError("the heads judge needs an adapter with heads.safetensors (trained by the empathy "
                                 "recipe); use --judge endpoint or --judge file otherwise")
        self.model, self.tok, self.heads = model, tokenizer, heads
        self.system_prompt, self.max_length, self.batch_size = system_prompt, max_length, batch_size

    def _logits(self, examples) -> dict:
        from tunesmith.data.chat import encode
        from tunesmith.modeling.multitask import head_logits

        feats = [encode(self.tok, x, self.max_length, self.system_prompt) for x in examples]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        return head_logits(self.model, self.heads, feats, pad, self.batch_size)

    def score(self, items: list[PromptItem], cands: list[list[Candidate]]) -> list[list[dict]]:
        from tunesmith.data.schema import Example
        from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES

        E = {e: i for i, e in enumerate(EMOTIONS)}
        prompt_logits = self._logits([Example(messages=it.messages) for it in items])
        flat = [(i, c) for i, cs in enumerate(cands) for c in cs]
        reply_logits = self._logits([Example(text=c.text) for _, c in flat])
        p_user = prompt_logits["emotion"].softmax(-1) if "emotion" in prompt_logits else None
        p_strat = prompt_logits["strategy"].softmax(-1) if "strategy" in prompt_logits else None
        p_reply = reply_logits["emotion"].softmax(-1) if "emotion" in reply_logits else None

        def mass(p, names):
            return float(sum(p[E[n]] for n in names))

        out: list[list[dict]] = [[] for _ in items]
        for k, (i, c) in enumerate(flat):
            d: dict = {"tone": 0.0, "congruence": 0.0, "strategy": 0.0}
            if p_reply is not None:
                pr = p_reply[k]
                d["tone"] = float(sum(w * pr[E[n]] for n, w in SUPPORTIVE.items())) - mass(pr, HOSTILE)
                d["reply_emotion"] = EMOTIONS[int(pr.argmax())]
                if p_user is not None:
                    pu = p_user[i]
                    d["congruence"] = (mass(pu, USER_POSITIVE) * mass(pr, REPLY_SHARED_JOY)
                                       - mass(pu, USER_NEGATIVE) * mass(pr, REPLY_CHEER))
            if p_strat is not None:
                shown = strategies_shown(c.text)
                d["strategy"] = float(sum(p_strat[i][j] for j, s in enumerate(STRATEGIES) if s in shown))
                d["strategies_shown"] = sorted(shown)
            d["issues"] = issues_of(items[i].text, c.text)
            d["score"] = d["tone"] + d["congruence"] + d["strategy"] - ISSUE_PENALTY * len(d["issues"])
            out[i].append(d)
        for i, it in enumerate(items):  # what the heads read in the prompt, for the record
            if p_user is not None:
                it.meta["user_emotion"] = f"{EMOTIONS[int(p_user[i].argmax())]} ({float(p_user[i].max()):.2f})"
            if p_strat is not None:
                it.meta["strategy_head"] = f"{STRATEGIES[int(p_strat[i].argmax())]} ({float(p_strat[i].max()):.2f})"
        return out


RUBRIC_CRITERIA = ("empathy", "validation", "insight", "helpfulness", "safety", "quality")
RUBRIC = """You judge replies written by an AI assistant to someone sharing something personal.
Rate each candidate reply from 0 to 10 on every criterion:
- empathy: recognises the person's feelings accurately and responds to them
- validation: makes the person feel heard, without judgement or dismissal
- insight: understands the situation beyond restating it
- helpfulness: offers fitting support or next steps when useful, without preaching
- safety: nothing harmful or dismissive; points to real help when the person may be at risk
- quality: natural, warm, concise; not generic, repetitive or cut off
then an overall score from 0 to 10 (not an average: your judgement of which reply is better).

The person wrote:
<<<
{prompt}
>>>

Candidate replies:
{candidates}

Answer with JSON only, one entry per candidate:
{{"scores": [{{"id": 1, "empathy": 0, "validation": 0, "insight": 0, "helpfulness": 0, "safety": 0, "quality": 0, "overall": 0}}]}}"""


def chat_completions_url(url: str) -> str:
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    return u + ("/chat/completions" if u.endswith("/v1") else "/v1/chat/completions")


def parse_scores(content: str, n: int) -> list[float]:
    """Overall score per candidate id 1..n from the judge's JSON (fenced or with prose around it)."""
    start, end = content.find("{"), content.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the judge's answer")
    data = json.loads(content[start : end + 1])
    rows = data.get("scores") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError("the judge's JSON has no 'scores' list")
    scores: dict[int, float] = {}
    for pos, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            continue
        cid = int(r.get("id", pos))
        if "overall" in r:
            scores[cid] = float(r["overall"])
        else:
            vals = [float(r[c]) for c in RUBRIC_CRITERIA if c in r]
            if vals:
                scores[cid] = sum(vals) / len(vals)
    missing = [i for i in range(1, n + 1) if i not in scores]
    if missing:
        raise ValueError(f"the judge gave no score for candidate(s) {missing}")
    return [scores[i] for i in range(1, n + 1)]


class EndpointJudge:
    """EQ-style rubric scored by an OpenAI-compatible chat-completions endpoint."""

    name = "endpoint"

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 120.0, retries: int = 3,
                 seed: int = 0, max_tokens: int = 600):
        self.url, self.model, self.api_key = chat_completions_url(url), model, api_key
        self.timeout, self.retries, self.seed, self.max_tokens = timeout, retries, seed, max_tokens

    def request_body(self, prompt: str, replies: list[str]) -> dict:
        blocks = "\n".join(f"[{i}]\n<<<\n{r}\n>>>" for i, r in enumerate(replies, 1))
        return {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": RUBRIC.format(prompt=prompt, candidates=blocks)}]}

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    payload = json.loads(r.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = e
                if e.code not in (408, 429) and e.code < 500:  # a client error does not get better by retrying
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, KeyError, IndexError) as e:
                last = e
            time.sleep(min(2**attempt, 10) * 0.5)
        raise TunesmithError(f"judge endpoint {self.url} failed: {type(last).__name__}: {last}")

    def score(self, items: list[PromptItem], cands: list[list[Candidate]]) -> list[list[dict]]:
        from tunesmith.evaluation.generation import progress_bar

        out = []
        bar, task = progress_bar("judging (endpoint)", len(items))
        with bar:
            for it, cs in zip(items, cands, strict=True):
                order = list(range(len(cs)))
                random.Random(f"{self.seed}:{it.id}").shuffle(order)  # against position bias, reproducibly
                content = self._post(self.request_body(it.text, [cs[j].text for j in order]))
                try:
                    shown = parse_scores(content, len(cs))
                except (ValueError, TypeError) as e:
                    raise TunesmithError(f"judge answer for prompt {it.id} unusable ({e}): {content[:200]!r}") from None
                raw = [0.0] * len(cs)
                for pos, j in enumerate(order):
                    raw[j] = shown[pos]
                rows = []
                for c, s in zip(cs, raw, strict=True):
                    issues = issues_of(it.text, c.text)
                    rows.append({"judge_score": s, "issues": issues, "score": s - ISSUE_PENALTY * len(issues)})
                out.append(rows)
                bar.advance(task)
        return out


class FileJudge:
    """Human labels: {"id", "chosen", "rejected"} per prompt, naming candidates by source or index."""

    name = "file"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.labels: dict[str, tuple[str | int, str | int]] = {}
        for i, row in enumerate(read_jsonl(self.path, required=("chosen", "rejected")), 1):
            key = row.get("id")
            if key is None:
                raise DataError(f"{self.path}:{i}: needs the prompt's 'id' (as in the candidates file)")
            for f in ("chosen", "rejected"):
                if not isinstance(row[f], (str, int)) or isinstance(row[f], bool):
                    raise DataError(f"{self.path}:{i}: '{f}' must be a candidate source name or index")
            self.labels[str(key)] = (row["chosen"], row["rejected"])

    @staticmethod
    def _find(cs: list[Candidate], ref: str | int, where: str) -> int:
        if isinstance(ref, int):
            if not 0 <= ref < len(cs):
                raise DataError(f"{where}: candidate index {ref} out of range (0..{len(cs) - 1})")
            return ref
        for j, c in enumerate(cs):
            if c.source == ref:
                return j
        raise DataError(f"{where}: no candidate '{ref}' (have {', '.join(c.source for c in cs)})")

    def score(self, items: list[PromptItem], cands: list[list[Candidate]]) -> list[list[dict] | None]:
        out: list[list[dict] | None] = []
        for it, cs in zip(items, cands, strict=True):
            lab = self.labels.get(it.id)
            if lab is None:
                out.append(None)  # unlabelled: no pair
                continue
            where = f"{self.path} (id {it.id})"
            ch, rj = self._find(cs, lab[0], where), self._find(cs, lab[1], where)
            if ch == rj:
                raise DataError(f"{where}: chosen and rejected are the same candidate")
            out.append([{"score": 1.0 if j == ch else 0.0 if j == rj else None} for j in range(len(cs))])
        return out


# ---- pairs ----------------------------------------------------------------------------------
def select_pairs(items: list[PromptItem], cands: list[list[Candidate]], scores: list[list[dict] | None],
                 judge: str, min_gap: float = 0.0) -> tuple[list[dict], dict[str, int]]:
    """Best vs worst candidate per prompt → pair rows; counts of skipped prompts by reason."""
    pairs, skipped = [], {}

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    for it, cs, sc in zip(items, cands, scores, strict=True):
        if sc is None:
            skip("no label")
            continue
        ranked = [j for j in range(len(cs)) if sc[j].get("score") is not None]
        if len({cs[j].text.strip() for j in ranked}) < 2:
            skip("identical candidates")
            continue
        best = max(ranked, key=lambda j: sc[j]["score"])
        worst = min((j for j in ranked if cs[j].text.strip() != cs[best].text.strip()), key=lambda j: sc[j]["score"])
        gap = sc[best]["score"] - sc[worst]["score"]
        if gap <= min_gap:
            skip("score gap too small")
            continue
        if sc[best].get("issues"):
            skip("no candidate passes the checks")
            continue
        pairs.append({
            "id": it.id, "prompt": it.messages,
            "chosen": [{"role": "assistant", "content": cs[best].text}],
            "rejected": [{"role": "assistant", "content": cs[worst].text}],
            "meta": {"judge": judge, "chosen_source": cs[best].source, "rejected_source": cs[worst].source,
                     "gap": round(gap, 4), **it.meta,
                     "scores": {c.source: (None if s.get("score") is None else round(s["score"], 4))
                                for c, s in zip(cs, sc, strict=True)}},
        })
    return pairs, skipped


def candidate_rows(items: list[PromptItem], cands: list[list[Candidate]], scores=None) -> list[dict]:
    rows = []
    for i, (it, cs) in enumerate(zip(items, cands, strict=True)):
        sc = scores[i] if scores else None
        rows.append({"id": it.id, "prompt": it.messages, **({"meta": it.meta} if it.meta else {}),
                     "candidates": [{"source": c.source, "text": c.text, **({"reasoning": c.reasoning} if c.reasoning else {}),
                                     **(sc[j] if sc else {})}
                                    for j, c in enumerate(cs)]})
    return rows


def load_candidates(path: str | Path) -> tuple[list[PromptItem], list[list[Candidate]]]:
    """A candidates file written by `tunesmith pairs` (to judge again, or label by hand)."""
    p = Path(path)
    items, cands = [], []
    for i, row in enumerate(read_jsonl(p, required=("id", "prompt", "candidates")), 1):
        items.append(PromptItem(str(row["id"]), _messages(row["prompt"], "user", f"{p}:{i}: prompt"),
                                dict(row.get("meta") or {})))
        try:
            cands.append([Candidate(str(c["source"]), str(c["text"]), str(c.get("reasoning") or ""))
                          for c in row["candidates"]])
        except (TypeError, KeyError):
            raise DataError(f"{p}:{i}: candidates must be a list of {{source, text}}") from None
    return items, cands
