"""Judges that score candidate replies: the adapter's heads plus rule checks, an OpenAI-compatible
endpoint with an EQ-style rubric, or a file of human labels (see the package docstring)."""

from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from tunesmith.chat import crisis
from tunesmith.errors import DataError, TunesmithError
from tunesmith.io import read_jsonl
from tunesmith.preference.candidates import Candidate, PromptItem

ISSUE_PENALTY = 100.0


# ---- checks shared by the automatic judges --------------------------------------------------
_TEMPLATE = re.compile(r"<\|[^|>]{1,40}\|>|</?s>|\[/?INST\]")
_HELP = re.compile(
    r"\b(help(line)?s?|support|professional|counsell?or|therapist|doctor|gp|crisis|emergency|hotline|"
    r"reach out|talk to (someone|somebody|a)|samaritans|988|999|911|112|trusted)\b",
    re.I,
)


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


def safety_issues(prompt: str, reply: str) -> list[str]:
    if crisis.rule_hits(prompt):
        return [] if _HELP.search(reply) else ["crisis message: reply points to no help"]
    return [f"reply matches crisis rule {h.rule}" for h in crisis.rule_hits(reply)]


def issues_of(prompt: str, reply: str) -> list[str]:
    return quality_issues(reply) + safety_issues(prompt, reply)


# ---- judges ---------------------------------------------------------------------------------
SUPPORTIVE = {
    "caring": 1.0,
    "approval": 0.5,
    "optimism": 0.5,
    "admiration": 0.5,
    "gratitude": 0.5,
    "love": 0.5,
    "relief": 0.5,
}
HOSTILE = ("anger", "annoyance", "disapproval", "disgust")
USER_NEGATIVE = (
    "sadness",
    "grief",
    "fear",
    "nervousness",
    "disappointment",
    "remorse",
    "embarrassment",
    "anger",
    "annoyance",
    "disgust",
    "confusion",
)
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

    def __init__(
        self, model, tokenizer, heads, system_prompt: str | None = None, max_length: int = 512, batch_size: int = 16
    ):
        if heads is None:
            raise TunesmithError(
                "the heads judge needs an adapter with heads.safetensors (trained by the empathy "
                "recipe); use --judge endpoint or --judge file otherwise"
            )
        self.model, self.tok, self.heads = model, tokenizer, heads
        self.system_prompt, self.max_length, self.batch_size = system_prompt, max_length, batch_size

    def _logits(self, examples) -> dict:
        from tunesmith.data.chat import encode, pad_token_id
        from tunesmith.modeling.forward import head_logits

        feats = [encode(self.tok, x, self.max_length, self.system_prompt) for x in examples]
        pad = pad_token_id(self.tok)
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
                    d["congruence"] = mass(pu, USER_POSITIVE) * mass(pr, REPLY_SHARED_JOY) - mass(
                        pu, USER_NEGATIVE
                    ) * mass(pr, REPLY_CHEER)
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

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        seed: int = 0,
        max_tokens: int = 600,
    ):
        self.url, self.model, self.api_key = chat_completions_url(url), model, api_key
        self.timeout, self.retries, self.seed, self.max_tokens = timeout, retries, seed, max_tokens

    def request_body(self, prompt: str, replies: list[str]) -> dict:
        blocks = "\n".join(f"[{i}]\n<<<\n{r}\n>>>" for i, r in enumerate(replies, 1))
        return {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": RUBRIC.format(prompt=prompt, candidates=blocks)}],
        }

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
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                json.JSONDecodeError,
                KeyError,
                IndexError,
            ) as e:
                last = e
            time.sleep(min(2**attempt, 10) * 0.5)
        raise TunesmithError(f"judge endpoint {self.url} failed: {type(last).__name__}: {last}")

    def score(self, items: list[PromptItem], cands: list[list[Candidate]]) -> list[list[dict]]:
        from tunesmith.ui import progress_bar

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
